"""The training engine's scoring: per-token log-probabilities (and entropy) of given sequences.

This is where ``logp_old`` (no grad, at theta_old) and ``logp_new`` (with grad, at theta) come from; the
routing it returns is what R2 records, and ``replay`` is how R2/R3 force it (rl_core.policy.model).

Precision (``train.precision``):

* ``fp32``: everything fp32, the exact reference.
* ``bf16``: as Megatron trains: the parameters (master weights) and AdamW's state stay fp32; the forward
  runs under ``torch.autocast(bfloat16)``, so every matmul (projections, router logits, experts, lm_head)
  and attention takes bf16 inputs and accumulates in fp32; RMSNorm and the router softmax compute in
  fp32 (rl_core.policy.model casts explicitly), and the log-softmax, entropy and the loss are fp32. Gradients
  flow back to the fp32 parameters. One departure from Megatron: the residual stream between layers is
  fp32 here (autocast keeps the adds in fp32), where Megatron keeps it bf16 unless
  ``fp32_residual_connection``; the matmul inputs, which carry most of the rounding, are bf16 in both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rl_core.policy.model import MoEPolicy


class Scores(NamedTuple):
    logp: torch.Tensor            # (B, T) fp32: log p(input_ids[:, t] | tokens < t); 0 at t = 0 and pads
    entropy: torch.Tensor | None  # (B, T) fp32, detached: entropy of the distribution that produced t
    routing: torch.Tensor         # (B, T, L, k) long: experts used (replayed where given, else natural)
    routing_natural: torch.Tensor  # (B, T, L, k) long: the router's own top-k (e_pi even under replay)


PRECISIONS = ("fp32", "bf16")


def _bf16(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: {precision!r} is not one of {list(PRECISIONS)}")
    return precision == "bf16"


def token_logprobs(model: MoEPolicy, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, replay: torch.Tensor | None = None,
                   with_entropy: bool = False, precision: str = "fp32") -> Scores:
    """Score ``input_ids`` (B, T) under softmax(logits / temperature) in fp32 (forward at ``precision``).

    logp[b, t] = log_softmax(logits[b, t-1] / T)[input_ids[b, t]] where tokens t-1 and t are both real;
    0 elsewhere (t = 0, pads, the first real token of a left-padded row). The model sees only the columns
    [first, last] that hold a real token in some row (a mini-batch of short responses skips the global
    batch's trailing pad columns); outputs are scattered back to (B, T). The log-softmax is taken once
    over the shifted logits; the entropy -sum p log p of that same tensor is computed without grad (a
    diagnostic: the paper's objectives have no entropy term), so it adds nothing to the autograd graph.
    """
    B, T = input_ids.shape
    cols = attention_mask.bool().any(0).nonzero()
    lo, hi = int(cols.min()), int(cols.max()) + 1
    ids, mask = input_ids[:, lo:hi], attention_mask[:, lo:hi]
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=_bf16(precision)):
        logits, routing, routing_natural = model(ids, mask, None if replay is None else replay[:, lo:hi])
    shifted = logits[:, :-1]
    if temperature != 1.0:
        shifted = shifted / temperature
    logp_all = torch.log_softmax(shifted.float(), dim=-1)                       # (B, T'-1, V)
    picked = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)                  # (B, T'-1)
    real = mask[:, 1:].bool() & mask[:, :-1].bool()

    def full(x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(B, T'-1 or T', ...) at columns [lo+1 or lo, hi) -> (B, T, ...) with ``fill`` outside."""
        out = x.new_full((B, T, *x.shape[2:]), fill)
        out[:, hi - x.shape[1]:hi] = x
        return out

    logp = full(torch.where(real, picked, torch.zeros_like(picked)))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
            entropy = full(torch.where(real, ent, torch.zeros_like(ent)))
    routing, routing_natural = full(routing, -1), full(routing_natural, -1)
    return Scores(logp, entropy, routing, routing_natural)


__all__ = ["Scores", "token_logprobs"]
