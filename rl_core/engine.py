"""The training engine's scoring: per-token log-probabilities (and entropy) of given sequences.

This is where ``logp_old`` (no grad, at theta_old) and ``logp_new`` (with grad, at theta) come from; the
routing it returns is what R2 records, and ``replay`` is how R2/R3 force it (rl_core.model).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rl_core.model import MoEPolicy


class Scores(NamedTuple):
    logp: torch.Tensor            # (B, T) fp32: log p(input_ids[:, t] | tokens < t); 0 at t = 0 and pads
    entropy: torch.Tensor | None  # (B, T) fp32, detached: entropy of the distribution that produced t
    routing: torch.Tensor         # (B, T, L, k) long: experts used (replayed where given, else natural)
    routing_natural: torch.Tensor  # (B, T, L, k) long: the router's own top-k (e_pi even under replay)


def token_logprobs(model: MoEPolicy, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, replay: torch.Tensor | None = None,
                   with_entropy: bool = False) -> Scores:
    """Score ``input_ids`` (B, T) under softmax(logits / temperature) in fp32.

    logp[b, t] = log_softmax(logits[b, t-1] / T)[input_ids[b, t]]; logp[:, 0] = 0 and logp = 0 where
    ``attention_mask`` is 0. The log-softmax is taken once over the (B, T-1, V) shifted logits; the
    entropy -sum p log p of that same tensor is computed without grad (it is a diagnostic: the paper's
    objectives have no entropy term), so it adds no (B, T, V) tensor to the autograd graph.
    """
    logits, routing, routing_natural = model(input_ids, attention_mask, replay)
    shifted = logits[:, :-1]
    if temperature != 1.0:
        shifted = shifted / temperature
    logp_all = torch.log_softmax(shifted.float(), dim=-1)                       # (B, T-1, V)
    picked = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)              # (B, T-1)
    zero_col = picked.new_zeros(picked.shape[0], 1)
    real = attention_mask[:, 1:].bool()
    logp = torch.cat([zero_col, torch.where(real, picked, torch.zeros_like(picked))], dim=1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
            entropy = torch.cat([zero_col.detach(), torch.where(real, ent, torch.zeros_like(ent))], dim=1)
    return Scores(logp, entropy, routing, routing_natural)


__all__ = ["Scores", "token_logprobs"]
