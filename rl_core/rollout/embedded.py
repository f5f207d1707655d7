"""The embedded rollout engine: the sampler mu_old, behind the contract of rl_core.rollout.base.

:class:`EmbeddedRolloutEngine` is a second, independent implementation of the Qwen3-MoE forward pass, built
like an inference server rather than a trainer: fused qkv and gate|up weights, a preallocated KV cache,
one prefill of the left-padded prompts, then one forward per new token for the whole batch, routing all
tokens of a step at once and looping over experts only. It shares with rl_core.policy.model only the pure RoPE
helpers. Its weights are held in a configurable precision, so the gap between the engine that samples and
the engine that trains arises the way it does in real systems (docs/architecture.md §6):

* ``fp32``: weights and compute fp32; agrees with the training engine to fp32 rounding (~1e-6).
* ``bf16``: weights cast to bf16; activations (residual stream) bf16; the weight matmuls are native bf16
  matmuls with fp32 accumulation. RMSNorm, q/k norm + RoPE, and the router softmax run in fp32 and round
  to bf16; expert outputs are mixed by the fp32 gates and summed in fp32. Attention works like
  FlashAttention: q, k, v and the softmax probabilities are bf16-rounded, the two inner products
  accumulate in fp32 (the KV cache stores the bf16-rounded values in fp32, because CPU bf16 bmm at these
  sizes is slower than fp32). Native bf16 was chosen over emulation (fp32 compute, rounding after each
  op) after measuring one CPU thread here (oneDNN with AVX512-BF16): a 128x128x256 bf16 matmul takes
  30 us against 78 us in fp32 (equal at 32 rows), so emulation would only add rounding copies.
* ``fp8`` (W8A8), ``fp8_w8a16``, ``mxfp4`` (W4A16): the attention projections and the experts in those
  formats (rl_core.rollout.formats, which says what each is and how it is computed); embeddings, lm_head,
  norms and the router stay bf16, as real FP8 / MXFP4 checkpoints leave them; the rest computes as bf16.
* ``kv_cache="fp8"``: keys and values are rounded to e4m3 (scale 1.0) as they enter the cache.

Each engine has its own router at its precision, so low precision flips near-tied top-k choices.
This engine runs on the CPU (the GPU rollout path is the vLLM backend).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rl_core.policy.model import MoEPolicy, apply_rope, config_value, from_hub_layout, rope_cos_sin
from rl_core.rollout.base import RolloutBatch
from rl_core.rollout.formats import W8A8Block, fp8_kv, held
from rl_core.rollout.fp8_checkpoint import BlockFP8, cat_out

PRECISIONS = ("fp32", "bf16", "fp8", "fp8_w8a16", "mxfp4")
KV_CACHES = ("auto", "fp8")


# ------------------------------------------------------------------------------------------- weights


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, cast back to x's dtype, then scaled by the held weight."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _keep_rows(cache: torch.Tensor, keep: torch.Tensor, written: int) -> torch.Tensor:
    """The rows ``keep`` of a KV cache (L, B, Hkv, S, D), copying only its ``written`` columns (the rest
    is never read before a forward writes it)."""
    out = cache.new_empty(cache.shape[0], len(keep), *cache.shape[2:])
    out[:, :, :, :written] = cache[:, keep, :, :written]
    return out


# -------------------------------------------------------------------------------------------- engine


class EmbeddedRolloutEngine:
    """Batched KV-cache sampler with its own weights (``precision``: PRECISIONS, ``kv_cache``: KV_CACHES)."""

    capabilities = frozenset({"routed_experts"})

    def __init__(self, hf_cfg: dict, state_dict: dict[str, torch.Tensor], precision: str = "bf16",
                 kv_cache: str = "auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache: {kv_cache!r} is not one of {list(KV_CACHES)}")
        c = hf_cfg
        self.cfg = dict(hf_cfg)
        self.precision, self.kv_cache = precision, kv_cache
        self.dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        self.n_layers, self.d = c["num_hidden_layers"], c["hidden_size"]
        self.n_heads, self.n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = c["head_dim"]
        self.top_k = c["num_experts_per_tok"]
        self.n_experts = config_value(c, "num_experts")
        self.eps = c["rms_norm_eps"]
        self.rope_theta = float(config_value(c, "rope_theta"))
        self.eos_token_id, self.pad_token_id = c["eos_token_id"], c["pad_token_id"]
        self._rope = rope_cos_sin(torch.arange(c["max_position_embeddings"]), self.head_dim, self.rope_theta)
        self.sync_weights(state_dict)

    @classmethod
    def from_model(cls, model: MoEPolicy, precision: str = "bf16",
                   kv_cache: str = "auto") -> EmbeddedRolloutEngine:
        return cls(model.config, model.state_dict(), precision, kv_cache)

    @classmethod
    def from_pretrained(cls, path: str | Path, precision: str = "bf16",
                        kv_cache: str = "auto") -> EmbeddedRolloutEngine:
        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        return cls(cfg, load_file(str(path / "model.safetensors")), precision, kv_cache)

    # ------------------------------------------------------------------------------ weight sync

    def _held(self, w: torch.Tensor, quantizable: bool):
        """The compute copy of a weight at this engine's precision (never aliasing the trainer's): a plain
        tensor, or for the projections and experts a held format with .linear / .grouped."""
        if isinstance(w, BlockFP8):  # from a block-FP8 checkpoint (rl_core.rollout.fp8_checkpoint)
            if not quantizable or self.precision != "fp8":
                raise ValueError(f"a block-FP8 weight given to a {self.precision} engine's "
                                 f"{'quantised' if quantizable else 'unquantised'} slot")
            here = torch.empty(0).device  # the default device (rl_core.training.distributed.OnDevice's)
            return W8A8Block(None, quantised=(w.q.to(here), w.scale.to(here)))
        if quantizable:
            return held(w, self.precision, self.dtype)
        return w.detach().to(self.dtype, copy=True)

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load weights from the trainer's state dict (stacked experts) or a hub-layout one, or the state
        dict of a block-FP8 checkpoint (rl_core.rollout.fp8_checkpoint.read_fp8_checkpoint: its quantised
        weights held as stored)."""
        sd = {k: v if isinstance(v, BlockFP8) else v.detach().float()
              for k, v in from_hub_layout(state_dict).items()}
        self.embed = self._held(sd["model.embed_tokens.weight"], False)
        self.final_norm = self._held(sd["model.norm.weight"], False)
        self.lm_head = self._held(sd["lm_head.weight"], False)
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            qkv = cat_out([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            experts = p + "mlp.experts."
            gate_up = cat_out([sd[experts + "gate_proj"], sd[experts + "up_proj"]])  # (E, 2I, d)
            self.layers.append({
                "ln1": self._held(sd[p + "input_layernorm.weight"], False),
                "qkv": self._held(qkv, True),
                "qk_norm": self._held(torch.cat([sd[p + "self_attn.q_norm.weight"].expand(self.n_heads, -1),
                                                 sd[p + "self_attn.k_norm.weight"].expand(self.n_kv, -1)]),
                                      False),                                    # (H + Hkv, D)
                "o": self._held(sd[p + "self_attn.o_proj.weight"], True),
                "ln2": self._held(sd[p + "post_attention_layernorm.weight"], False),
                "router": self._held(sd[p + "mlp.gate.weight"], False),
                "gate_up": self._held(gate_up, True),
                "down": self._held(sd[experts + "down_proj"], True),
            })

    # ---------------------------------------------------------------------------------- forward

    def _ensure_rope(self, n_positions: int) -> None:
        """Grow the cos/sin table (same values as rope_cos_sin on the positions) to n_positions rows."""
        if n_positions > self._rope[0].shape[0]:
            self._rope = rope_cos_sin(torch.arange(n_positions), self.head_dim, self.rope_theta)

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rope[0][positions], self._rope[1][positions]

    def _round(self, t: torch.Tensor) -> torch.Tensor:
        """Round an fp32 tensor to the compute precision, keeping fp32 storage (no-op for fp32)."""
        return t if self.dtype == torch.float32 else t.to(self.dtype).float()

    def _attention(self, h, w, cos, sin, cache_k, cache_v, start, blocked):
        """h (B, Tq, d) at cache columns [start, start+Tq); cache_k/v (B, Hkv, S, D); blocked
        (B, 1, 1, Tq, end) bool: True where a query may not read a key.

        Like FlashAttention: q, k, v and the softmax probabilities are rounded to the compute precision,
        scores and the weighted sum of values accumulate in fp32. The cache stores bf16-rounded values
        in fp32 so the two small batched matmuls run in fp32 (CPU bf16 bmm is slower here).
        """
        B, Tq, _ = h.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        end, g = start + Tq, H // Hkv
        qk, v = w["qkv"].linear(h).split([(H + Hkv) * D, Hkv * D], dim=-1)
        # q and k heads side by side: one RMSNorm (q_norm | k_norm weights per head) and one RoPE.
        qk = self._round(apply_rope(_rms(qk.reshape(B, Tq, H + Hkv, D).float(), w["qk_norm"], self.eps),
                                    cos, sin))
        q, k = qk.split([H, Hkv], dim=2)
        v = v.reshape(B, Tq, Hkv, D)
        if self.kv_cache == "fp8":
            k, v = fp8_kv(k), fp8_kv(v)
        cache_k[:, :, start:end] = k.transpose(1, 2)
        cache_v[:, :, start:end] = v.transpose(1, 2)
        # The g query heads sharing a kv head ride along the query axis: no repeat of K/V.
        q = q.reshape(B, Tq, Hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, g * Tq, D)
        scores = (q @ cache_k[:, :, :end].transpose(-1, -2)).view(B, Hkv, g, Tq, end)
        scores = (scores * D ** -0.5).masked_fill(blocked, float("-inf"))
        probs = self._round(torch.softmax(scores, dim=-1)).view(B, Hkv, g * Tq, end)
        out = (probs @ cache_v[:, :, :end]).view(B, Hkv, g, Tq, D).permute(0, 3, 1, 2, 4)
        return w["o"].linear(out.reshape(B, Tq, H * D).to(h.dtype))

    def _moe(self, x: torch.Tensor, w: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d) -> out (N, d), ids (N, k). All tokens of the step routed at once; (token, slot) pairs
        sorted by expert, one grouped matmul per projection (per group the GEMM F.linear runs, so equal to
        a loop over experts bitwise), one index_add back in expert order; no host sync."""
        probs = torch.softmax(F.linear(x, w["router"]).float(), dim=-1)
        top, ids = probs.topk(self.top_k, dim=-1)
        gates = top / top.sum(-1, keepdim=True)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        offs = torch.bincount(flat, minlength=self.n_experts).cumsum(0).to(torch.int32)
        token_of = order // self.top_k
        gate, up = w["gate_up"].grouped(x.index_select(0, token_of), offs).chunk(2, dim=-1)
        # silu and the product run in fp32 inside the CPU bf16 kernels, rounded after each op.
        act = F.silu(gate) * up
        # bf16 output times the fp32 gate promotes to fp32: the k-way mix is summed in fp32.
        y = w["down"].grouped(act, offs) * gates.reshape(-1)[order, None]
        out = torch.zeros(x.shape, dtype=torch.float32).index_add_(0, token_of, y)
        return out.to(x.dtype), ids

    def _forward(self, ids, positions, cache, start, key_valid, last_only: bool = False):
        """ids/positions (B, Tq) at cache columns [start, start+Tq); key_valid (B, S) bool.

        Returns logits (B, Tq, V) fp32 (B, 1, V with ``last_only``: a prefill for sampling needs only the
        last column, which is the same for every left-padded row) and routing (B, Tq, L, k); fills the KV
        cache for those columns.
        """
        B, Tq = ids.shape
        end = start + Tq
        cols, rows = torch.arange(end), torch.arange(start, end)
        causal = cols[None, :] <= rows[:, None]
        # Padded queries keep their own key so no softmax row is empty (see rl_core.policy.model).
        allowed = (causal & key_valid[:, None, :end]) | (cols[None, :] == rows[:, None])
        blocked = ~allowed[:, None, None]  # (B, 1, 1, Tq, end), shared by every layer
        cos, sin = self._cos_sin(positions)
        x = self.embed[ids]
        routing = []
        for layer, w in enumerate(self.layers):
            x = x + self._attention(_rms(x, w["ln1"], self.eps), w, cos, sin, cache[0][layer],
                                    cache[1][layer], start, blocked)
            y, chosen = self._moe(_rms(x, w["ln2"], self.eps).reshape(B * Tq, self.d), w)
            x = x + y.view(B, Tq, self.d)
            routing.append(chosen.view(B, Tq, self.top_k))
        if last_only:
            x = x[:, -1:]
        logits = F.linear(_rms(x, self.final_norm, self.eps), self.lm_head).float()
        return logits, torch.stack(routing, dim=2)

    def _new_cache(self, B: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uninitialised: a forward writes its columns [start, end) before its attention reads [0, end)."""
        shape = (self.n_layers, B, self.n_kv, S, self.head_dim)
        return torch.empty(shape), torch.empty(shape)  # fp32 storage of compute-precision values

    @torch.no_grad()
    def full_forward(self, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One prefill over sequences (B, T) -> logits (B, T, V) fp32, routing (B, T, L, k) (-1 on pads)."""
        B, T = input_ids.shape
        self._ensure_rope(T)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits, routing = self._forward(input_ids, positions, self._new_cache(B, T), 0, attention_mask.bool())
        return logits, routing.masked_fill(~attention_mask.bool()[:, :, None, None], -1)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> ids (B, P) left-padded with pad_token_id, mask (B, P) long."""
        lengths = torch.tensor([len(p) for p in prompts])
        P = int(lengths.max())
        mask = (torch.arange(P)[None, :] >= (P - lengths)[:, None]).long()
        ids = torch.full((len(prompts), P), self.pad_token_id, dtype=torch.long)
        ids[mask.bool()] = torch.tensor([t for p in prompts for t in p], dtype=torch.long)  # row-major fill
        return ids, mask

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                 generator: torch.Generator) -> RolloutBatch:
        """Sample up to ``max_new_tokens`` per prompt from softmax(logits_fp32 / temperature).

        One prefill of the left-padded prompts, then one forward per step for the rows still running. A
        row that sampled EOS records nothing more; once a quarter of the computed rows have finished they
        are dropped from the batch and the KV cache (continuous batching without refill), so decoding
        costs what the live rows need. Stops when every row has finished or after ``max_new_tokens``; R
        is the longest response produced.

        Decoding runs under torch.inference_mode (no autograd bookkeeping per op: an fp8 rollout 1.2x
        faster than under no_grad, the same kernels); the batch's tensors are cloned out of it, so the
        trainer can use them as it would any tensor.
        """
        with torch.inference_mode():
            ro = self._generate(prompts, max_new_tokens, temperature, generator)
        tensors = {f: getattr(ro, f).clone() for f in ("input_ids", "attention_mask", "response_mask",
                                                       "logp_behavior", "routing")}
        return RolloutBatch(**tensors, finish_reason=ro.finish_reason, prompt_len=ro.prompt_len)

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                  generator: torch.Generator) -> RolloutBatch:
        if max_new_tokens < 1 or not prompts or min(map(len, prompts)) < 1:
            raise ValueError("generate needs max_new_tokens >= 1 and at least one non-empty prompt")
        prompt, prompt_mask = self._left_pad(prompts)
        (B, P), R = prompt.shape, max_new_tokens
        input_ids = torch.cat([prompt, torch.full((B, R), self.pad_token_id, dtype=torch.long)], dim=1)
        key_valid = torch.cat([prompt_mask.bool(), torch.ones(B, R, dtype=torch.bool)], dim=1)
        routing = torch.full((B, P + R, self.n_layers, self.top_k), -1, dtype=torch.long)
        logp_behavior = torch.zeros(B, P + R)
        response_mask = torch.zeros(B, P + R, dtype=torch.bool)
        cache = self._new_cache(B, P + R)
        self._ensure_rope(P + R)

        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        logits, chosen = self._forward(prompt, positions, cache, 0, key_valid, last_only=True)
        routing[:, :P] = chosen.masked_fill(~prompt_mask.bool()[:, :, None, None], -1)
        next_pos = prompt_mask.sum(-1)                                           # (B,) position of col P
        stopped = torch.zeros(B, dtype=torch.bool)                               # sampled EOS, per row
        rows = torch.arange(B)                                                   # the rows being computed
        for j in range(R):
            col = P + j
            logp_all = torch.log_softmax(logits[:, -1].float() / temperature, dim=-1)   # (n, V)
            if not bool(torch.isfinite(logp_all).all()):  # diverged weights: the trainer records it
                raise FloatingPointError("rollout engine: non-finite logits (the policy diverged)")
            token = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(-1)
            finished = stopped[rows]
            token = token.masked_fill(finished, self.pad_token_id)
            input_ids[rows, col] = token
            logp_token = logp_all.gather(-1, token[:, None]).squeeze(-1)
            logp_behavior[rows, col] = logp_token.masked_fill(finished, 0.0)
            response_mask[rows, col] = ~finished
            finished = finished | (token == self.eos_token_id)
            stopped[rows] = finished
            if j == R - 1 or bool(finished.all()):
                break
            if 4 * int(finished.sum()) >= len(rows):  # drop finished rows from the batch and the cache
                keep = (~finished).nonzero().squeeze(1)
                rows, token, finished, key_valid = rows[keep], token[keep], finished[keep], key_valid[keep]
                cache, next_pos = tuple(_keep_rows(c, keep, col) for c in cache), next_pos[keep]
            logits, chosen = self._forward(token[:, None], (next_pos + j)[:, None], cache, col, key_valid)
            routing[rows, col] = chosen[:, 0].masked_fill(finished[:, None, None], -1)
        end = col + 1
        return RolloutBatch(
            input_ids=input_ids[:, :end],
            attention_mask=torch.cat([prompt_mask, response_mask[:, P:end].long()], dim=1),
            response_mask=response_mask[:, :end], logp_behavior=logp_behavior[:, :end],
            routing=routing[:, :end], finish_reason=["stop" if f else "length" for f in stopped.tolist()],
            prompt_len=P)


__all__ = ["EmbeddedRolloutEngine", "PRECISIONS", "KV_CACHES"]
