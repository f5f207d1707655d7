"""Where the training engine runs: one device (``train.device``), or data-parallel ranks under torchrun with
torch FSDP2 (``torch.distributed.fsdp.fully_shard``).

    python -m rl_core.train --out RUN ...                              one process, train.device
    torchrun --nproc-per-node W -m rl_core.train --out RUN ...         W ranks (WORLD_SIZE from torchrun)

Device: ``auto`` is cuda when torch sees a GPU, else cpu; ``cuda`` without one is a ConfigError before any
work. Under torchrun rank r takes ``cuda:LOCAL_RANK``. The policy, the batch and the embedded rollout engine
live on that device (the embedded engine is the GPU fallback when vLLM is not installed); bf16 is the same
autocast path on either device (rl_core.training.scoring).

Data parallel (W > 1), how one mini-batch of B prompts x G responses is trained:

* Rank 0 samples the rollout batch (the rollout engine lives there) and broadcasts it: every rank holds
  the whole batch, so every rank makes the same control decisions.
* Each mini-batch is cut into W contiguous shares of B/W prompts with all their G samples (B must be a
  multiple of W): each rank scores (pi_old) and updates (pi_theta) its share only.
* The loss of a share is normalised by the GLOBAL mini-batch counts (LossParams.n_responses, n_tokens),
  and FSDP2's gradient reduce-scatter SUMS across ranks (divide factor 1, sum-only collectives, which gloo
  needs): the gradient is the single-process one. tests/test_distributed.py checks 2 ranks x half against
  1 process x the whole for MiniRL with none, R2 and R3 and for CISPO's token-mean normaliser.
* The per-token tensors of the shares (logp_old, logp_new, entropy, routings) are all-gathered, so pi_old
  of mini-batch 1 is filled in everywhere and every metric is that of the whole mini-batch, identical on
  every rank; rank 0 writes the run files.
* Weights leave the shards as full tensors (``DTensor.full_tensor``, a collective every rank joins) for the
  rollout engine, the evals, checkpoints (the single-process format: a run resumes at another W) and the
  final policy.

Departure from verl / slime: the rollout is not split across ranks (rank 0 samples alone, as one vLLM
server would); with W GPUs, give the rollout engine its own (vLLM) or accept rank 0's embedded sampler.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rl_core.config import ConfigError, RunConfig
from rl_core.training.base import OWN_GRAD_REDUCTION


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> the device this process trains on; ConfigError for cuda without a GPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: {requested!r} is not one of ['auto', 'cpu', 'cuda']")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device='cuda' needs a CUDA GPU, and torch {torch.__version__} sees none "
                          f"(torch.cuda.is_available() is False); use train.device=cpu or auto")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"train.device='cuda': rank with LOCAL_RANK={local_rank} has no GPU of its own "
                          f"({torch.cuda.device_count()} visible); start fewer processes per node")
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class Ranks:
    """This process's place: its rank among ``world`` and its device. ``Ranks()`` is one CPU process.

    ``data`` / ``data_group``: its place among the data-parallel ranks, which split the mini-batch, when
    those are not the whole world (the Megatron engine: tensor-parallel ranks share their data); None: the
    world. Rollouts, checks and barriers always span the world."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data: tuple[int, int] | None = None  # (data-parallel rank, data-parallel size)
    data_group: object = None

    @property
    def dp_rank(self) -> int:
        return self.rank if self.data is None else self.data[0]

    @property
    def dp_size(self) -> int:
        return self.world if self.data is None else self.data[1]

    @property
    def main(self) -> bool:
        """Rank 0: samples the rollouts and writes the run files."""
        return self.rank == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of the mini-batch ``rows`` (n,) (n a multiple of dp_size)."""
        if self.dp_size == 1:
            return rows
        if len(rows) % self.dp_size:
            raise ValueError(f"{len(rows)} rows do not split evenly over {self.dp_size} ranks")
        k = len(rows) // self.dp_size
        return rows[self.dp_rank * k:(self.dp_rank + 1) * k]

    def gather(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Every data-parallel rank's share (n/W, ...) -> the whole (n, ...), in rank order (the inverse
        of share)."""
        if self.dp_size == 1 or t is None:
            return t
        parts = [torch.empty_like(t) for _ in range(self.dp_size)]
        dist.all_gather(parts, t.contiguous(), group=self.data_group)
        return torch.cat(parts)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled: give it CPU tensors)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, produce):
        """Rank 0's ``produce()`` on every rank (broadcast: let it return CPU tensors); a
        FloatingPointError on rank 0 (a diverged rollout engine) is raised on every rank."""
        if self.world == 1:
            return produce()
        out, error = None, ""
        if self.main:
            try:
                out = produce()
            except FloatingPointError as e:
                error = str(e)
        out, error = self.broadcast((out, error))
        if error:
            raise FloatingPointError(error)
        return out

    def all_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Ranks()


def check_world(cfg: RunConfig, world: int) -> None:
    """The Megatron engine's tensor x expert-parallel size must divide the world; a mini-batch must split
    into whole prompts (all G samples of a prompt on one rank) over the data-parallel ranks (world / TP)."""
    t = cfg.train
    if world % (t.megatron_tp * t.megatron_ep):
        sizes = range(1, world + 1)
        allowed = [(tp, ep) for tp in sizes for ep in sizes if world % (tp * ep) == 0]
        raise ConfigError(f"train.megatron_tp x train.megatron_ep: {t.megatron_tp} x {t.megatron_ep} does "
                          f"not divide the {world} ranks torchrun started (WORLD_SIZE={world}); allowed "
                          f"(tp, ep): {allowed}")
    dp = world // t.megatron_tp
    if t.batch_prompts % dp:
        raise ConfigError(f"train.batch_prompts: {t.batch_prompts} does not split over the {dp} "
                          f"data-parallel ranks (WORLD_SIZE={world} / train.megatron_tp={t.megatron_tp}); "
                          f"use a multiple of {dp}")


def from_env(cfg: RunConfig) -> Ranks:
    """This process's Ranks from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK; none: one process).
    Checks the device and the split first, then joins the process group (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world != cfg.train.world_size:
        how = (f"start it with `python -m torch.distributed.run --nproc-per-node {cfg.train.world_size} "
               f"--standalone -m rl_core.train ...` (the workflow does)" if cfg.train.world_size > 1 else
               "start it as one process, or set train.world_size to the number of ranks")
        raise ConfigError(f"train.world_size: {cfg.train.world_size}, but this process is one of {world} "
                          f"ranks (WORLD_SIZE={world}); {how}")
    device = resolve_device(cfg.train.device, local)
    check_world(cfg, world)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, device)


# ----------------------------------------------------------------------------------------- FSDP2


def shard(policy: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """FSDP2 over the ranks: each decoder layer, then the root (embeddings, final norm, lm_head). One
    process: the policy as it is. Build the optimizer AFTER this (the parameters become DTensors).

    Gradients are SUMMED over ranks, not averaged: each rank's loss already carries the global
    normaliser. ``force_sum_reduction_for_comms`` keeps the collectives plain sums (gloo has no
    PREMUL_SUM). An engine that reduces its own gradients (OWN_GRAD_REDUCTION: Megatron's) is left be."""
    if ranks.world == 1 or OWN_GRAD_REDUCTION in policy.capabilities:
        return policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    units = [*policy.model.layers, policy]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    # The root returns PolicyOutput whose tensors FSDP flags as views; nothing writes into them in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return policy


def _dtensor(t) -> bool:
    """Whether ``t`` is a DTensor, without importing torch.distributed.tensor (0.6 s) where nothing made one:
    a process that never imported that module holds no DTensor."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _full(t):
    return t.full_tensor() if _dtensor(t) else t


def full_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's state dict as full tensors (a collective under FSDP2: every rank calls it)."""
    return {k: _full(v) for k, v in policy.state_dict().items()}


def unsharded(policy: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The policy as one plain CPU module (for save_pretrained); a collective under FSDP2."""
    if ranks.world == 1:
        return policy
    from rl_core.policy.model import MoEPolicy

    plain = MoEPolicy(policy.config)
    plain.load_state_dict({k: v.cpu() for k, v in full_state_dict(policy).items()})
    return plain


def full_optimizer_state(opt) -> dict:
    """``opt.state_dict()`` with full tensors: the single-process format (keys are parameter indices, and
    FSDP2 keeps the parameter order), so a checkpoint resumes at any world size. A collective."""
    sd = opt.state_dict()
    return {**sd, "state": {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()}}


def load_optimizer_state(opt, state: dict) -> None:
    """Load a full (single-process format) optimizer state into an optimizer over FSDP2 shards."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in opt.param_groups for p in g["params"]]
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {k: distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
                  if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                  for k, v in s.items()}
    opt.load_state_dict({**state, "state": out})


def clip_grad_norm(policy: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (over every rank's shards), clipped to ``max_norm``; a plain tensor. An
    engine whose gradients need their own reductions first (OWN_GRAD_REDUCTION: Megatron's) brings its own."""
    if OWN_GRAD_REDUCTION in policy.capabilities:
        return policy.clip_grad_norm(max_norm)
    return _full(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm))


def params_finite(policy: torch.nn.Module, ranks: Ranks) -> bool:
    """Every weight finite, on every rank's shard."""
    local = (p.to_local() if _dtensor(p) else p for p in policy.parameters())
    return ranks.all_true(all(bool(torch.isfinite(p).all()) for p in local))


# ------------------------------------------------------------------------------------ rollout device


class OnDevice:
    """A rollout engine run with ``device`` as the default of torch's tensor factories (``torch.device`` as a
    context manager), so the embedded engine, whose ops follow their inputs but whose index tensors, masks
    and KV cache come from factories, runs wholly on a GPU. Its generator must be on the device too."""

    def __init__(self, make, device: torch.device):
        self.device = device
        with torch.device(device):
            self.engine = make()
        self.capabilities = self.engine.capabilities

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        with torch.device(self.device):
            self.engine.sync_weights(state_dict)

    def generate(self, *args, **kwargs):
        with torch.device(self.device):
            return self.engine.generate(*args, **kwargs)


__all__ = ["resolve_device", "Ranks", "SINGLE", "check_world", "from_env", "shard", "full_state_dict",
           "unsharded", "full_optimizer_state", "load_optimizer_state", "clip_grad_norm", "params_finite",
           "OnDevice"]
