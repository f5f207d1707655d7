"""Tensor and expert parallelism of the Megatron training engine (``train.megatron_tp`` / ``megatron_ep``):
which slice of each full weight a rank holds, the gather back to full weights, and the gradient reductions
and global norm that make W ranks take the one-process step.

Read in this order: :class:`Layout` (this rank's place in Megatron's parallel state), :func:`local_slice`
(full GPTModel state dict -> this rank's), :func:`gathered` (the inverse; a collective), then
:func:`reduce_grads` and :func:`clip_grad_norm`.

The slices are the ones Megatron's layers are built with (megatron-core 0.16.1, local spec, no sequence
parallelism), TP rank r of t, EP rank e of p, E experts:

* ``embedding.word_embeddings`` and ``output_layer`` (V, d): vocabulary rows, chunk r (VocabParallelEmbedding,
  ColumnParallelLinear);
* ``linear_qkv`` (G * (H/G + 2) * D, d): rows chunk r, which is query groups r*G/t .. (r+1)*G/t - 1 whole,
  because the fused layout is per group (convert._qkv_fuse); ``linear_proj`` (d, H*D): columns
  chunk r (RowParallelLinear, the same heads);
* expert j lives on EP rank j // (E/p) as ``local_experts.{j mod E/p}``; its ``linear_fc1`` [gate; up]
  (2F, d) is split per half: rank r holds [gate chunk r; up chunk r] (the gated unit chunks its local
  output in two); ``linear_fc2`` (d, F): columns chunk r. Experts are split over the expert-tensor-parallel
  ranks, which Megatron makes the TP size;
* norms, q/k norms and the router: whole on every rank.

Gradients (what Megatron's DDP and finalize_model_grads do, written out for plain torch AdamW):

* q/k norms act on a rank's own heads only: their gradient is SUMMED over the TP ranks (Megatron's rule
  for ``qk_layernorm``).
* Without sequence parallelism (its norm spec refuses it without Apex or Transformer Engine) the
  allgather dispatcher gathers every TP rank's copy of the same tokens, so each local expert sees each
  token t times: expert gradients are divided by t.
* Then dense gradients are SUMMED over the data-parallel ranks and expert gradients over the
  expert-data-parallel ranks (sums: every rank's loss already carries the global normaliser, as under FSDP2
  in rl_core.training.distributed).
* The global norm counts every distinct shard once: each rank adds its squares divided by the number of
  ranks holding the same shard, and the sum is all-reduced over the world.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

_EXPERT = re.compile(r"^(.*\.local_experts\.)(\d+)(\..*)$")


@dataclass(frozen=True)
class Layout:
    """This rank's place: TP rank/size/group, EP and expert-TP likewise, the data-parallel groups."""

    tp: int = 1
    tp_rank: int = 0
    tp_group: object = None
    ep: int = 1
    ep_rank: int = 0
    ep_group: object = None
    etp: int = 1
    etp_rank: int = 0
    etp_group: object = None
    dp_group: object = None
    edp_group: object = None
    n_experts: int = 1

    @classmethod
    def current(cls, n_experts: int) -> Layout:
        """From Megatron's parallel state (initialized)."""
        from megatron.core import parallel_state as ps

        return cls(ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank(),
                   ps.get_tensor_model_parallel_group(), ps.get_expert_model_parallel_world_size(),
                   ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_group(),
                   ps.get_expert_tensor_parallel_world_size(), ps.get_expert_tensor_parallel_rank(),
                   ps.get_expert_tensor_parallel_group(), ps.get_data_parallel_group(),
                   ps.get_expert_data_parallel_group(), n_experts)

    @property
    def parallel(self) -> bool:
        return self.tp * self.ep * self.etp > 1


def _split(key: str) -> tuple[str, int | str] | None:
    """How a weight is split: ("tp" | "etp", dim or "glu"), None when every rank holds it whole."""
    expert = ".local_experts." in key
    group = "etp" if expert else "tp"
    if key.endswith(("word_embeddings.weight", "output_layer.weight", "linear_qkv.weight")):
        return group, 0
    if key.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return group, 1
    if key.endswith("linear_fc1.weight"):
        return group, "glu" if expert else 0
    return None


def _chunk(t: torch.Tensor, how: int | str, n: int, r: int) -> torch.Tensor:
    if how == "glu":
        return torch.cat([half.chunk(n)[r] for half in t.chunk(2)])
    return t.chunk(n, dim=how)[r]


def _join(parts: list[torch.Tensor], how: int | str) -> torch.Tensor:
    if how == "glu":
        halves = [p.chunk(2) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(parts, dim=how)


def local_slice(full: dict[str, torch.Tensor], L: Layout) -> dict[str, torch.Tensor]:
    """Full GPTModel state dict (global expert numbers) -> this rank's keys and slices (local numbers)."""
    per_rank = L.n_experts // L.ep
    out = {}
    for key, t in full.items():
        if m := _EXPERT.match(key):
            j = int(m.group(2))
            if j // per_rank != L.ep_rank:
                continue
            key = f"{m.group(1)}{j % per_rank}{m.group(3)}"
        split = _split(key)
        if split is not None:
            n, r = (L.tp, L.tp_rank) if split[0] == "tp" else (L.etp, L.etp_rank)
            t = _chunk(t, split[1], n, r)
        out[key] = t.contiguous()
    return out


def _all_gather(t: torch.Tensor, n: int, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def gathered(local: dict[str, torch.Tensor], L: Layout) -> dict[str, torch.Tensor]:
    """This rank's GPTModel state dict -> the full one (global expert numbers), on every rank. A
    collective: every rank calls it with the same keys in the same order."""
    per_rank = L.n_experts // L.ep
    out = {}
    for key, t in local.items():
        split = _split(key)
        if split is not None:
            n, group = (L.tp, L.tp_group) if split[0] == "tp" else (L.etp, L.etp_group)
            if n > 1:
                t = _join(_all_gather(t, n, group), split[1])
        m = _EXPERT.match(key)
        if m is None or L.ep == 1:
            out[key] = t
            continue
        for e, part in enumerate(_all_gather(t, L.ep, L.ep_group)):
            out[f"{m.group(1)}{e * per_rank + int(m.group(2))}{m.group(3)}"] = part
    return out


def _is_expert(name: str) -> bool:
    return ".local_experts." in name  # Megatron's own mark, ``allreduce=False``, is set only when EP > 1


def reduce_grads(named: list[tuple[str, torch.Tensor]], L: Layout) -> None:
    """Make every rank's gradients those of the one-process step (module docstring). A collective.
    ``named``: (GPTModel name, the tensor whose ``.grad`` the optimizer reads): the GPTModel's parameters,
    or under bf16 the fp32 masters (which carry the parameters' ``tensor_model_parallel`` flag)."""
    for name, p in named:
        if p.grad is None:
            continue
        if L.tp > 1 and ("q_layernorm" in name or "k_layernorm" in name):
            dist.all_reduce(p.grad, group=L.tp_group)
        if _is_expert(name):
            if L.tp > 1:
                p.grad.div_(L.tp)
            group = L.edp_group
        else:
            group = L.dp_group
        if dist.get_world_size(group) > 1:
            dist.all_reduce(p.grad, group=group)


def clip_grad_norm(named: list[tuple[str, torch.Tensor]], max_norm: float, L: Layout) -> torch.Tensor:
    """The global gradient norm over all ranks' distinct shards, clipped to ``max_norm`` as
    torch.nn.utils.clip_grad_norm_ clips (coefficient max_norm / (norm + 1e-6), at most 1). A collective.
    ``named`` as :func:`reduce_grads` takes it."""
    world = dist.get_world_size()
    device = named[0][1].device  # nccl reduces tensors on the GPU
    total = torch.zeros((), dtype=torch.float64, device=device)
    grads = []
    for name, p in named:
        if p.grad is None:
            continue
        grads.append(p.grad)
        sharded = getattr(p, "tensor_model_parallel", False)
        holders = world // (L.ep * (L.etp if sharded else 1)) if _is_expert(name) else \
            world // (L.tp if sharded else 1)
        total += p.grad.double().pow(2).sum() / holders
    dist.all_reduce(total)
    norm = total.sqrt().float()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return norm


__all__ = ["Layout", "local_slice", "gathered", "reduce_grads", "clip_grad_norm"]
