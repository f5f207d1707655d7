"""The policy: a Qwen3-MoE-architecture causal LM in plain torch, with routing record and replay.

Read top to bottom, leaves to root: RMSNorm, RoPE, grouped-query attention with Qwen3's per-head
q_norm/k_norm, the softmax top-k router with renormalised gates, SwiGLU experts, the decoder layer, the
model. Every layer is MoE; no shared expert, no biases, untied lm_head (the tiny default). Numerically it
follows ``transformers.Qwen3MoeForCausalLM`` (fp32 logits agree to ~1e-7 relative; tests/test_model.py).

Departures from the textbook / HF implementation, all deliberate:

* Position ids come from the attention mask, ``(cumsum(mask) - 1).clamp(min=0)``: prompts are
  left-padded, responses right-padded, and the first real token of every row sits at position 0.
* Pads are never computed (:class:`Layout`): every token-wise op runs on the real tokens packed as
  (N, d); only attention scatters them to a padded (rows, H, T', D), causal AND masking padded keys (a
  padded query keeps its own key so no softmax row is empty; its output is dropped). Logits are 0 and
  routing -1 at pads. With responses of very different lengths this halves the FLOPs of a training step.
  Attention runs per bucket of rows of similar length, each row's real tokens left-aligned and padded
  only to its bucket's longest row (T' <= T): the same keys in the same order, so the same result up to
  fp32 summation order (which already depended on the batch's T); its (T')^2 work is 2-3x less than T^2.
* Routing replay (docs/objective.md §5): ``replay`` (B, T, L, k) forces the discrete top-k choice of a
  (token, layer) whose row is all >= 0; a row of -1 routes naturally. Gates are always the LIVE softmax
  probabilities gathered at the chosen ids and renormalised, so the router still gets gradients. Natural
  and replayed routing share one code path, so replaying a recorded routing is bitwise identical.
* Experts are held as stacked (E, out, in) parameters for speed; :func:`to_hub_layout` and
  :func:`from_hub_layout` convert to and from the hub's per-expert tensors, which is what
  :func:`save_pretrained` writes and :func:`load_pretrained` reads (transformers 5 and vLLM load it).

Precision: parameters are fp32. For bf16 training wrap the forward in
``torch.autocast("cpu"|"cuda", dtype=torch.bfloat16)`` (rl_core.training.scoring does): matmuls run in bf16,
attention with FlashAttention's bf16 numerics (:func:`flash_attention_bf16`), RMSNorm and the router
softmax stay fp32 (they cast explicitly), and ``PolicyOutput.logits`` is always returned as fp32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rl_core.config import ModelConfig
from rl_core.policy.attention import FlashBF16
from rl_core.policy.export import write_side_files
from rl_core.policy.grouped import grouped_mm

EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
#: bf16 expert matmuls run on row counts rounded up to this (see Experts._grouped).
EXPERT_ROWS = 64


def hf_config(model_cfg: ModelConfig, vocab_size: int, eos_token_id: int, pad_token_id: int) -> dict:
    """config.json content of the Hugging Face Qwen3-MoE layout (hub spelling: num_experts, rope_theta)."""
    m = model_cfg
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": vocab_size,
        "hidden_size": m.hidden_size,
        # Only dense (mlp_only) layers use it, and there are none; Qwen3 sets it to k x the expert width.
        "intermediate_size": m.moe_intermediate_size * m.num_experts_per_tok,
        "moe_intermediate_size": m.moe_intermediate_size,
        "num_hidden_layers": m.num_hidden_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_key_value_heads,
        "head_dim": m.head_dim,
        "num_experts": m.num_experts,
        "num_experts_per_tok": m.num_experts_per_tok,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "hidden_act": "silu",
        "max_position_embeddings": m.max_position_embeddings,
        "rope_theta": m.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": m.rms_norm_eps,
        "initializer_range": m.init_std,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": m.num_hidden_layers,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
    }


def config_value(cfg: dict, key: str):
    """Read a config.json field, also accepting the spellings transformers 5 writes (num_local_experts,
    rope_parameters.rope_theta) so checkpoints re-saved by transformers still load."""
    if key == "num_experts" and key not in cfg:
        return cfg["num_local_experts"]
    if key == "rope_theta" and key not in cfg:
        return cfg["rope_parameters"]["rope_theta"]
    return cfg[key]


# ------------------------------------------------------------------------------------------ leaves


class RMSNorm(nn.Module):
    """y = w * x / rms(x), normalised in fp32 then cast back to the input dtype (as HF does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (...) long -> cos, sin (..., head_dim) fp32, the half-split (non-interleaved) layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., H, D), cos/sin (..., D) -> x rotated; rotate_half pairs dim i with i + D/2."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_allowed(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask (B, T) -> allowed (B, 1, T, T) bool: causal, real keys only, plus the diagonal."""
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    return ((causal & attention_mask.bool()[:, None, :]) | eye)[:, None]


#: Attention's row buckets (see Layout): rows sorted by length, split into this many equal counts.
ATTENTION_BUCKETS = 4


class Bucket(NamedTuple):
    """Rows of similar length for attention: their N_b real tokens left-aligned in an (n, T_b) grid."""

    tokens: torch.Tensor   # (N_b,) indices into the packed (N, ...) tokens, row by row
    slots: torch.Tensor    # (N_b,) flat positions of those tokens in the (n * T_b) grid
    n: int                 # rows
    T: int                 # T_b: the bucket's longest row
    allowed: torch.Tensor  # (n, 1, T_b, T_b) bool: causal, real keys only, plus the diagonal


class Layout:
    """Where the real tokens of a padded (B, T) batch are: the model runs every token-wise op (embedding,
    norms, projections, router, experts, lm_head) on the N real tokens only, packed as (N, ...), and
    scatters them to a padded grid just for attention (:meth:`attend`). Pads cost no expert or projection
    FLOPs, and attention pays for each bucket's longest row, not the batch's (``buckets``)."""

    def __init__(self, attention_mask: torch.Tensor, buckets: int = ATTENTION_BUCKETS):
        self.B, self.T = attention_mask.shape
        real = attention_mask.bool()
        self.index = real.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of real tokens
        lengths = real.sum(1)                                # (B,)
        first = lengths.cumsum(0) - lengths                  # (B,) a row's first packed token
        self.buckets = []
        for rows in torch.sort(lengths, stable=True).indices.tensor_split(min(buckets, self.B)):
            T_b = int(lengths[rows].max()) if len(rows) else 0
            if T_b == 0:
                continue
            cols = torch.arange(T_b, device=real.device)
            valid = cols < lengths[rows, None]                # (n, T_b) left-aligned real tokens
            slots = valid.reshape(-1).nonzero().squeeze(1)
            self.buckets.append(Bucket((first[rows, None] + cols)[valid], slots, len(rows), T_b,
                                       attention_allowed(valid)))
        order = torch.cat([b.tokens for b in self.buckets]) if self.buckets else self.index
        self.unbucket = torch.argsort(order)  # (N,) bucketed order -> packed order

    def attend(self, fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (N, H, D), k/v (N, Hkv, D) -> fn(q, k, v, allowed) per bucket on (n, H, T_b, D) -> (N, H, D).

        Each row's real tokens keep their order, so a query sees the keys it saw in the (B, T) layout.
        Pad slots hold zeros; no real query reads them, a pad query reads only itself and is dropped."""
        outs = []
        for b in self.buckets:
            grid = [t.new_zeros(b.n * b.T, *t.shape[1:]).index_copy(0, b.slots, t.index_select(0, b.tokens))
                    .view(b.n, b.T, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)]
            out = fn(*grid, b.allowed).transpose(1, 2)        # (n, T_b, H, D)
            outs.append(out.reshape(b.n * b.T, *out.shape[2:]).index_select(0, b.slots))
        return torch.cat(outs).index_select(0, self.unbucket)

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)"""
        return t.reshape(self.B * self.T, *t.shape[2:]).index_select(0, self.index)

    def pad(self, t: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), ``fill`` at pads (differentiable in t)."""
        out = t.new_full((self.B * self.T, *t.shape[1:]), fill)
        return out.index_copy(0, self.index, t).view(self.B, self.T, *t.shape[1:])


def flash_attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """Attention with FlashAttention's bf16 numerics: q (B, H, T, D), k/v (B, Hkv, T, D), allowed (B, 1, T, T)

    q, k, v are rounded to bf16; scores, the softmax maximum and normaliser and both products accumulate
    in fp32; the unnormalised probabilities exp(s - max) are rounded to bf16 before the product with v
    (what torch's CPU flash kernel does for bf16 inputs); the output is bf16. Computed as fp32 matmuls on
    the rounded values outside autocast, because torch's CPU bf16 attention backward is ~10x slower than
    fp32 at these sizes (measured: 183 ms vs 19 ms per update of a mini-batch). Forward and backward are one
    autograd Function with FlashAttention's backward (:class:`rl_core.policy.attention.FlashBF16`).
    """
    with torch.autocast(q.device.type, enabled=False):
        return FlashBF16.apply(q, k, v, allowed, scale)


class Attention(nn.Module):
    """Grouped-query attention with per-head RMSNorm on q and k before RoPE (Qwen3)."""

    def __init__(self, cfg: dict):
        super().__init__()
        H, D, Hkv, d = (cfg["num_attention_heads"], cfg["head_dim"], cfg["num_key_value_heads"],
                        cfg["hidden_size"])
        self.n_heads, self.n_kv, self.head_dim = H, Hkv, D
        self.q_proj = nn.Linear(d, H * D, bias=False)
        self.k_proj = nn.Linear(d, Hkv * D, bias=False)
        self.v_proj = nn.Linear(d, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, d, bias=False)
        self.q_norm = RMSNorm(D, cfg["rms_norm_eps"])
        self.k_norm = RMSNorm(D, cfg["rms_norm_eps"])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Layout) -> torch.Tensor:
        """x (N, d) real tokens, cos/sin (N, D) -> (N, d). Projections, norms and RoPE run on the N real
        tokens; only the score/softmax/value product runs on a padded layout (:meth:`Layout.attend`)."""
        N, D = x.shape[0], self.head_dim
        q = apply_rope(self.q_norm(self.q_proj(x).view(N, self.n_heads, D)), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(N, self.n_kv, D)), cos, sin)
        v = self.v_proj(x).view(N, self.n_kv, D)
        # q head h reads kv head h // (H / Hkv), as HF's repeat_kv does.
        if torch.is_autocast_enabled(x.device.type):
            out = layout.attend(lambda q, k, v, allowed: flash_attention_bf16(q, k, v, allowed, D ** -0.5),
                                q, k, v)
        else:
            out = layout.attend(lambda q, k, v, allowed: F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, scale=D ** -0.5, enable_gqa=True), q, k, v)
        return self.o_proj(out.reshape(N, -1))


def route(router_logits: torch.Tensor, top_k: int,
          replay: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """router_logits (N, E) -> ids (N, k) long, natural_ids (N, k) long, gates (N, k) fp32.

    One path for natural and replayed routing: natural ids are topk of the fp32 softmax (in topk's
    order); rows of ``replay`` (N, k) that are all >= 0 replace them; gates are the live probabilities
    at the chosen ids, renormalised to sum to 1 (norm_topk_prob).
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    natural = torch.topk(probs, top_k, dim=-1).indices
    ids = natural
    if replay is not None:
        forced = (replay >= 0).all(dim=-1, keepdim=True)
        ids = torch.where(forced, replay, natural)
    gates = probs.gather(-1, ids)
    return ids, natural, gates / gates.sum(dim=-1, keepdim=True)


class Experts(nn.Module):
    """E SwiGLU experts held as stacked weights: gate_proj/up_proj (E, I, d), down_proj (E, d, I)."""

    grouped_mm = staticmethod(grouped_mm)  # :func:`compile_layers` may swap in an eager-only one

    def __init__(self, cfg: dict):
        super().__init__()
        E, d, inter = config_value(cfg, "num_experts"), cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.gate_proj = nn.Parameter(torch.empty(E, inter, d))
        self.up_proj = nn.Parameter(torch.empty(E, inter, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, inter))

    def forward(self, x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x (N, d), ids (N, k), gates (N, k) -> sum_j gates[:, j] * expert_{ids[:, j]}(x), (N, d).

        Loops over experts, not tokens: (token, slot) pairs are sorted by expert once, then each expert
        runs on its contiguous slice and scatters back with index_add (deterministic on CPU). On the CPU
        the loop is one grouped matmul per projection (per group the GEMM F.linear runs: bitwise the same
        forward) on weights cast once per forward, not per expert slice: 2x faster forward+backward.
        """
        k = ids.shape[1]
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // k
        gate_of = gates.reshape(-1)[order]
        if x.device.type == "cpu":
            return self._grouped(x, flat, token_of, gate_of)
        counts = torch.bincount(flat, minlength=self.gate_proj.shape[0]).tolist()
        out = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = token_of[start:start + n]
            xe = x.index_select(0, idx)
            h = F.silu(F.linear(xe, self.gate_proj[e])) * F.linear(xe, self.up_proj[e])
            y = F.linear(h, self.down_proj[e]) * gate_of[start:start + n, None].to(h.dtype)
            out.index_add_(0, idx, y.to(out.dtype))
            start += n
        return out

    def _grouped(self, x: torch.Tensor, flat: torch.Tensor, token_of: torch.Tensor,
                 gate_of: torch.Tensor) -> torch.Tensor:
        """The CPU path of :meth:`forward`: autocast's dtype applied by hand (grouped_mm is not on CPU
        autocast's list), as F.linear under autocast would: inputs and weights rounded, fp32 accumulate.

        In bf16 each expert's rows are padded with zero rows to a multiple of :data:`EXPERT_ROWS`: oneDNN
        builds (JIT-compiles) a kernel per matrix shape, and the per-expert row counts change every step,
        which cost more than the arithmetic (a mini update took 1.7x fp32's). A row's result does not depend
        on the row count (tests/test_speed_invariance.py); pad rows have gate 0 and add into a dropped row."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        N, counts = x.shape[0], torch.bincount(flat, minlength=self.gate_proj.shape[0])
        tokens, gates, source = token_of, gate_of, x
        if dtype != torch.float32:
            padded = (counts + EXPERT_ROWS - 1) // EXPERT_ROWS * EXPERT_ROWS
            expert = torch.repeat_interleave(torch.arange(len(counts)), counts)   # (N k,) in sorted order
            shift = padded.cumsum(0) - padded - counts.cumsum(0) + counts  # padded - packed start
            slot = torch.arange(len(token_of)) + shift[expert]
            tokens = torch.full((int(padded.sum()),), N).index_copy_(0, slot, token_of)  # pads: row N
            gates = gate_of.new_zeros(len(tokens)).index_copy(0, slot, gate_of)
            source, counts = torch.cat([x, x.new_zeros(1, x.shape[1])]), padded
        offs = counts.cumsum(0).to(torch.int32)
        xe = source.index_select(0, tokens)

        def mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # a cast per use, as autocast does:
            return self.grouped_mm(a.to(dtype), w.to(dtype).transpose(-1, -2), offs=offs)  # fp32 grad sums

        h = F.silu(mm(xe, self.gate_proj)) * mm(xe, self.up_proj)
        y = mm(h, self.down_proj) * gates[:, None].to(h.dtype)
        return torch.zeros_like(source).index_add_(0, tokens, y.to(x.dtype))[:N]


class SparseMoeBlock(nn.Module):
    """Router (``gate``, no bias) + experts; returns the mixed output, the used and the natural ids."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.top_k = cfg["num_experts_per_tok"]
        self.gate = nn.Linear(cfg["hidden_size"], config_value(cfg, "num_experts"), bias=False)
        self.experts = Experts(cfg)

    def forward(self, x: torch.Tensor, replay: torch.Tensor | None):
        """x (N, d), replay (N, k) | None -> out (N, d), ids (N, k), natural ids (N, k)."""
        ids, natural, gates = route(self.gate(x), self.top_k, replay)
        return self.experts(x, ids, gates), ids, natural


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = SparseMoeBlock(cfg)

    def forward(self, x, cos, sin, layout, replay):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout)
        h, ids, natural = self.mlp(self.post_attention_layernorm(x), replay)
        return x + h, ids, natural


class Backbone(nn.Module):
    """The ``model.`` prefix of the hub layout: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


# -------------------------------------------------------------------------------------------- model


class PolicyOutput(NamedTuple):
    logits: torch.Tensor           # (B, T, V) fp32; 0 at pads (never computed)
    routing: torch.Tensor          # (B, T, L, k) long: experts used per token and layer (replayed|natural),
                                   # -1 at pads (never routed), as the rollout engine records them
    routing_natural: torch.Tensor  # (B, T, L, k) long: the router's own top-k (equals routing without replay)


class MoEPolicy(nn.Module):
    """Qwen3-MoE causal LM. ``MoEPolicy(hf_cfg, seed)`` initialises from a torch.Generator(seed)."""

    capabilities: frozenset[str] = frozenset()  # as a training engine (rl_core.training.base): none beyond it

    def __init__(self, hf_cfg: dict, seed: int = 0):
        super().__init__()
        if not hf_cfg.get("norm_topk_prob", False) or hf_cfg.get("mlp_only_layers") or \
                hf_cfg.get("decoder_sparse_step", 1) != 1:
            raise ValueError("MoEPolicy supports norm_topk_prob=true and every layer MoE")
        self.config = dict(hf_cfg)
        self.head_dim = hf_cfg["head_dim"]
        self.rope_theta = float(config_value(hf_cfg, "rope_theta"))
        self.model = Backbone(hf_cfg)
        self.lm_head = nn.Linear(hf_cfg["hidden_size"], hf_cfg["vocab_size"], bias=False)
        if hf_cfg.get("tie_word_embeddings", False):  # one Parameter, as the checkpoint says
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Normal(0, initializer_range) for every matrix and embedding; norms = 1. Deterministic in seed."""
        gen = torch.Generator().manual_seed(seed)
        std = self.config["initializer_range"]
        for name, p in self.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                replay: torch.Tensor | None = None) -> PolicyOutput:
        """input_ids (B, T) long, attention_mask (B, T) | None, replay (B, T, L, k) | None."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        layout = Layout(attention_mask)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = rope_cos_sin(layout.unpad(positions), self.head_dim, self.rope_theta)
        x = self.model.embed_tokens(layout.unpad(input_ids))
        replay = None if replay is None else layout.unpad(replay)
        routing, natural = [], []
        for i, layer in enumerate(self.model.layers):
            x, ids, nat = layer(x, cos, sin, layout, None if replay is None else replay[:, i])
            routing.append(ids)
            natural.append(nat)
        logits = self.lm_head(self.model.norm(x)).float()
        return PolicyOutput(layout.pad(logits), layout.pad(torch.stack(routing, dim=1), -1),
                            layout.pad(torch.stack(natural, dim=1), -1))


def routing_disagreement(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of (masked token, layer) pairs whose top-k SETS differ; a, b (B, T, L, k), mask (B, T).

    Pairs where either routing is -1 (never processed by that engine) are left out; 0 if none remain.
    """
    valid = mask.bool()[:, :, None] & (a >= 0).all(-1) & (b >= 0).all(-1)
    differ = (a.sort(-1).values != b.sort(-1).values).any(-1)
    n = valid.sum()
    return torch.where(n > 0, (differ & valid).sum() / n.clamp(min=1), torch.zeros((), dtype=torch.float32))


# ------------------------------------------------------------------------------------ checkpoints


def to_hub_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked ``...mlp.experts.gate_proj`` (E, I, d) -> hub ``...mlp.experts.{j}.gate_proj.weight``."""
    out = {}
    for name, t in state_dict.items():
        head, _, proj = name.rpartition(".")
        if head.endswith("mlp.experts") and proj in EXPERT_PROJS:
            for j in range(t.shape[0]):
                out[f"{head}.{j}.{proj}.weight"] = t[j].contiguous()
        else:
            out[name] = t
    return out


def from_hub_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_hub_layout`; a dict already in the stacked layout passes through unchanged."""
    out, experts = {}, {}
    for name, t in state_dict.items():
        parts = name.split(".")
        if len(parts) >= 4 and parts[-4] == "experts" and parts[-3].isdigit() and parts[-1] == "weight":
            experts.setdefault(f"{'.'.join(parts[:-3])}.{parts[-2]}", {})[int(parts[-3])] = t
        else:
            out[name] = t
    for name, by_j in experts.items():
        out[name] = torch.stack([by_j[j] for j in range(len(by_j))])
    return out


def save_pretrained(model: MoEPolicy, out_dir: str | Path, tokenizer=None) -> Path:
    """Write config.json, model.safetensors (hub layout) and, if given, tokenizer.json with the side files
    that AutoTokenizer and generate() need (rl_core.policy.export: tokenizer_config, generation_config).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` or a path to a tokenizer.json to copy (its folder's own
    side files are copied too, where it has them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_hub_layout(model.state_dict()).items()
               if not (k == "lm_head.weight" and model.config.get("tie_word_embeddings", False))}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        if isinstance(tokenizer, str | Path):
            shutil.copyfile(tokenizer, out / "tokenizer.json")
        else:
            tokenizer.save(str(out / "tokenizer.json"))
        source = Path(tokenizer).parent if isinstance(tokenizer, str | Path) else None
        write_side_files(out, model.config, source)
    return out


def load_pretrained(path: str | Path) -> MoEPolicy:
    """Read a checkpoint directory written by :func:`save_pretrained` or by transformers: one
    model.safetensors or shards listed in model.safetensors.index.json, any dtype (bf16 weights are
    upcast to the fp32 parameters), tied embeddings (no lm_head.weight) when config.json says so."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("pad_token_id") is None:  # Qwen3's configs name no pad: pad with eos (masked everywhere)
        eos = cfg.get("eos_token_id")
        cfg["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    model = MoEPolicy(cfg)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(path / name)))
    state = from_hub_layout(state)
    if cfg.get("tie_word_embeddings", False):
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True)
    return model


def compile_layers(model: MoEPolicy, precision: str) -> MoEPolicy:
    """``train.compile``: torch.compile (inductor, dynamic shapes) each decoder layer in place; parameter
    names, state_dict and checkpoints are unchanged. In fp32 the experts' grouped matmuls stay eager (a
    graph break per layer): torch 2.13's fake ``grouped_mm``, which tracing needs, takes bf16 only.

    Inductor rounds bf16 intermediates as eager does (``emulate_precision_casts``, set for this process):
    by default a fused kernel keeps them fp32, and the compiled bf16 trainer then moved log-probs from
    the eager one's as far as bf16 moves them from fp32 (tests/test_compile.py measures both)."""
    import torch._inductor.config as inductor_config

    inductor_config.emulate_precision_casts = True
    for layer in model.model.layers:
        if precision == "fp32":
            layer.mlp.experts.grouped_mm = torch.compiler.disable(grouped_mm)
        layer.compile(dynamic=True)
    return model


__all__ = ["hf_config", "config_value", "MoEPolicy", "PolicyOutput", "route", "routing_disagreement",
           "rope_cos_sin", "apply_rope", "to_hub_layout", "from_hub_layout", "save_pretrained",
           "load_pretrained", "compile_layers"]
