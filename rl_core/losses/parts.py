"""The shared parts of every objective (rl_core.losses.objectives, rl_core.losses.corrections): aggregation
(the normalisation, one tested function), the IS weights, the loss parameters, the input cleaning that makes
garbage outside the mask harmless, PPO's clip mask and the uniform stats dict.

Pure functions of tensors and plain numbers (docs/conventions.md §2); see rl_core.losses.objectives for the
tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: Per-token tensors of LossOutput.tokens, (B, T), meaningful on response tokens: the detached IS weight the
#: gradient used, and whether the clip mask (or its sequence-level form) or a correction dropped the token.
TOKEN_KEYS = ("is_weight", "clipped", "masked")
STAT_KEYS = ("is/weight_mean", "is/weight_max", "is/truncated_frac", "is/masked_frac",
             "ratio/discrepancy_mean", "ratio/staleness_mean", "seq/ratio_log_std", "clip/frac",
             "clip/frac_pos", "clip/frac_neg", "kl/staleness_k1", "kl/staleness_k3", "loss/value")


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise KeyError(f"unknown {what} {name!r} (allowed: {sorted(table)})")
    return table[name]


# ------------------------------------------------------------------------------------ aggregation


def _token_sum_const(per_token: Tensor, m: Tensor, constant: float | None, g: int | None) -> Tensor:
    return per_token.sum() / (per_token.shape[0] if constant is None else constant)


def _seq_mean(per_token: Tensor, m: Tensor, constant: float | None, g: int | None) -> Tensor:
    lengths = m.sum(-1).clamp(min=1).to(per_token.dtype)                            # (B,)
    return (per_token.sum(-1) / lengths).sum() / (per_token.shape[0] if constant is None else constant)


def _token_mean(per_token: Tensor, m: Tensor, constant: float | None, g: int | None) -> Tensor:
    return per_token.sum() / (m.sum().clamp(min=1).to(per_token.dtype) if constant is None else constant)


def _group_token_mean(per_token: Tensor, m: Tensor, constant: float | None, g: int | None) -> Tensor:
    b = per_token.shape[0]
    g = b if g is None else g
    if g < 1 or b % g:
        raise ValueError(f"group_size {g} does not divide the {b} responses of this call")
    sums = per_token.sum(-1).reshape(-1, g).sum(-1)                                  # (B/G,)
    tokens = m.sum(-1).reshape(-1, g).sum(-1).clamp(min=1).to(per_token.dtype)       # (B/G,)
    return (sums / tokens).sum() / (b // g if constant is None else constant)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float | None, int | None], Tensor]] = {
    "token_sum_const": _token_sum_const, "seq_mean": _seq_mean, "token_mean": _token_mean,
    "group_token_mean": _group_token_mean}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, constant: float | None = None,
              group_size: int | None = None) -> Tensor:
    """Reduce per-token terms (B, T) over the response tokens of ``mask`` (B, T) to a scalar.

    * ``token_sum_const``: sum over masked tokens / constant (None: B, the responses of this call).
    * ``seq_mean``: sum over responses of each response's masked-token mean / constant (None: B), i.e.
      (1/n) sum_i (1/|y_i|) sum_t, the per-response length normalisation; with constant None it is the
      mean over responses of the per-response token mean. A response with no tokens adds 0 (and still
      counts in B).
    * ``token_mean``: sum over masked tokens / constant (None: the number of masked tokens, at least 1).
    * ``group_token_mean``: rows are groups of ``group_size`` consecutive responses (None: the call is one
      group); each group's token sum over that group's token count, summed over groups / constant (None:
      the groups of this call). MiniMax-M1's CISPO normaliser.

    ``constant`` replaces the count of this call: pass the mini-batch's count when a mini-batch is split
    into micro-batches whose losses (gradients) are summed, and the sum equals the mini-batch loss
    (for ``group_token_mean``, with splits on group boundaries).
    """
    m = mask != 0
    fn = _lookup(AGGREGATIONS, mode, "aggregation")
    return fn(torch.where(m, per_token, 0.0), m, constant, group_size)


# ------------------------------------------------------------------------------------- IS weights


def _weight_full(log_ratio: Tensor, log_disc: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """w = min(pi_theta/mu_old, C) = exp(min(log r + log d, log C)); truncated where the sum exceeds log C.

    Summed in log space: the product of the two exponentials overflows and underflows separately
    (log r = 90, log d = -110: inf * 0 = NaN in fp32) where the weight itself is an ordinary number.
    """
    log_full = log_ratio + log_disc
    return log_full.clamp(max=math.log(cap)).exp(), log_full > math.log(cap)


def _weight_discrepancy(log_ratio: Tensor, log_disc: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """w = min(pi_old/mu_old, C) * pi_theta/pi_old = exp(min(log d, log C) + log r): only the
    train-inference factor is capped (summed in log space, as above)."""
    return (log_disc.clamp(max=math.log(cap)) + log_ratio).exp(), log_disc > math.log(cap)


IS_WEIGHTS = {"full": _weight_full, "discrepancy": _weight_discrepancy}


def _seq_product(log_tok: Tensor, m: Tensor) -> Tensor:
    return log_tok.sum(-1)


def _seq_geometric(log_tok: Tensor, m: Tensor) -> Tensor:
    return log_tok.sum(-1) / m.sum(-1).clamp(min=1).to(log_tok.dtype)


#: log of a response's sequence ratio from its per-token log ratios (B, T) (0 off the mask) -> (B,):
#: product = prod_t ratio_t (the sequence IS weight); geometric = its |y|-th root (length-normalised).
SEQ_RATIOS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "geometric": _seq_geometric, "product": _seq_product}
#: CISPO's normaliser -> aggregation: MiniMax-M1's per-group token count, or the mini-batch's (verl).
CISPO_NORMS = {"group": "group_token_mean", "token_mean": "token_mean"}


@dataclass(frozen=True)
class LossParams:
    """Plain numbers the objectives need; the trainer builds one from LossConfig per mini-batch."""

    is_cap: float = 5.0
    """C: truncation of the detached token IS weight (TIS), and of seq_tis's sequence weight."""
    is_cap_on: str = "full"
    """full: w = min(pi_theta/mu_old, C), the literal reading (default);
    discrepancy: w = min(pi_old/mu_old, C) * pi_theta/pi_old (only the train-inference factor is capped)."""
    eps_low: float = 0.2
    """Clip range below 1, on r = pi_theta/pi_old (acts on tokens with A < 0)."""
    eps_high: float = 0.27
    """Clip range above 1 (acts on tokens with A > 0)."""
    n_responses: float | None = None
    """Divisor of token_sum_const / seq_mean: the responses in the mini-batch. None: the B of the call."""
    n_tokens: float | None = None
    """Divisor of token_mean (CISPO): response tokens in the mini-batch. None: those of the call."""
    icepop_low: float = 0.5
    """IcePop's alpha: tokens with pi_old/mu_old below it get no gradient."""
    icepop_high: float = 5.0
    """IcePop's beta: tokens with pi_old/mu_old above it get no gradient."""
    seq_ratio: str = "geometric"
    """The sequence ratio of pi_old/mu_old that seq_mis bands and weights and seq/ratio_log_std reports:
    geometric (mean of the log ratios) or product (their sum)."""
    seq_mis_low: float = 0.98
    """seq_mis keeps a response whose sequence ratio is at least this ..."""
    seq_mis_high: float = 1.02
    """... and at most this."""
    gspo_eps_low: float = 3e-4
    """GSPO's clip range below 1, on the sequence ratio s_i."""
    gspo_eps_high: float = 4e-4
    """GSPO's clip range above 1."""
    cispo_norm: str = "group"
    """group: each group's token sum over that group's tokens (MiniMax-M1); token_mean: the mini-batch's."""
    group_size: int | None = None
    """G: rows come in groups of G consecutive responses of one prompt. None: the call is one group."""

    def __post_init__(self) -> None:
        _lookup(IS_WEIGHTS, self.is_cap_on, "is_cap_on")
        _lookup(SEQ_RATIOS, self.seq_ratio, "seq_ratio")
        _lookup(CISPO_NORMS, self.cispo_norm, "cispo_norm")

    @classmethod
    def from_config(cls, loss_cfg: Any, n_responses: float | None = None, n_tokens: float | None = None,
                    group_size: int | None = None) -> LossParams:
        """From a ``rl_core.config.LossConfig`` plus the mini-batch counts and the group size."""
        c = loss_cfg
        return cls(is_cap=c.is_cap, is_cap_on=c.is_cap_on, eps_low=c.eps_low, eps_high=c.eps_high,
                   n_responses=n_responses, n_tokens=n_tokens, icepop_low=c.icepop_low,
                   icepop_high=c.icepop_high, seq_ratio=c.seq_ratio, seq_mis_low=c.seq_mis_low,
                   seq_mis_high=c.seq_mis_high, gspo_eps_low=c.gspo_eps_low, gspo_eps_high=c.gspo_eps_high,
                   cispo_norm=c.cispo_norm, group_size=group_size)


class LossOutput(NamedTuple):
    loss: Tensor
    """Scalar to minimise (-J)."""
    stats: dict[str, Tensor]
    """Detached scalar tensors under the names of STAT_KEYS."""
    tokens: dict[str, Tensor] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    """Detached per-token tensors (B, T) under the names of TOKEN_KEYS: what the rollout samples show."""


# ------------------------------------------------------------------------------------- shared parts


def _inputs(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor,
            mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> m (B,T) bool; new (B,T) with grad; detached old, log_ratio, log_disc, adv (B,T); all 0 off m."""
    m = mask != 0
    new = torch.where(m, logp_new, 0.0)
    old = torch.where(m, logp_old.detach(), 0.0)
    behavior = torch.where(m, logp_behavior.detach(), 0.0)
    adv = torch.where(m, advantages.detach()[:, None].expand_as(new), 0.0)
    return m, new, old, new.detach() - old, old - behavior, adv


def _clip_keep(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """M_t: False where A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low."""
    drop = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
    return ~drop


def _ppo_clip(log_live: Tensor, ratio: Tensor, adv: Tensor, live: Tensor, eps_low: float,
              eps_high: float) -> Tensor:
    """min(r A, clip(r) A), computed as where(live, r, clip(r)) * A with r = exp(log_live) differentiated
    only where ``live`` (kept by M and contributing): equal to the min token by token (A > 0: the min is
    the clipped branch exactly when r > 1+eps_high; A < 0: exactly when r < 1-eps_low; A = 0: both 0), and
    a dropped or zero-weight token is a constant whose exp is never differentiated (no inf * 0 on huge
    ratios)."""
    r_live = torch.exp(torch.where(live, log_live, 0.0))
    return torch.where(live, r_live, ratio.clamp(1 - eps_low, 1 + eps_high)) * adv


def _mean(x: Tensor, m: Tensor) -> Tensor:
    """Mean of x over m; 0 for an empty set."""
    return torch.where(m, x, 0.0).sum() / m.sum().clamp(min=1)


def _spread(x: Tensor, rows: Tensor) -> Tensor:
    """Population std of x (B,) over the rows marked by ``rows`` (B,); 0 for fewer than two."""
    mu = _mean(x, rows)
    return _mean((x - mu) ** 2, rows).sqrt()


@torch.no_grad()
def _stats(loss: Tensor, m: Tensor, adv: Tensor, log_ratio: Tensor, log_disc: Tensor, weight: Tensor,
           truncated: Tensor, clipped: Tensor, masked: Tensor, seq_ratio: str) -> dict[str, Tensor]:
    """Token means over this call's response tokens, except seq/ratio_log_std.

    kl/staleness_k1 = mean(-log r) and kl/staleness_k3 = mean((r - 1) - log r), r = pi_theta/pi_old: both
    estimate KL(pi_old || pi_theta) on tokens sampled from mu_old ~ pi_old (k3 is Schulman's unbiased,
    nonnegative estimator of KL(q||p) with x ~ q and r = p(x)/q(x), here q = pi_old, p = pi_theta).
    is/masked_frac: tokens a correction zeroed (IcePop's band, seq_mis's dropped responses; 0 for the rest).
    seq/ratio_log_std: the spread over responses of log of the sequence ratio of pi_old/mu_old (``seq_ratio``
    mode), the quantity sequence-level corrections threshold.
    """
    ratio = log_ratio.exp()
    f = log_ratio.dtype
    return {
        "is/weight_mean": _mean(weight, m),
        "is/weight_max": torch.where(m, weight, 0.0).max(),     # weights are >= 0, so 0 when empty
        "is/truncated_frac": _mean(truncated.to(f), m),
        "is/masked_frac": _mean(masked.to(f), m),
        "ratio/discrepancy_mean": _mean(log_disc.exp(), m),
        "ratio/staleness_mean": _mean(ratio, m),
        "seq/ratio_log_std": _spread(SEQ_RATIOS[seq_ratio](log_disc, m), m.any(-1)),
        "clip/frac": _mean(clipped.to(f), m),
        "clip/frac_pos": _mean(clipped.to(f), m & (adv > 0)),
        "clip/frac_neg": _mean(clipped.to(f), m & (adv < 0)),
        "kl/staleness_k1": _mean(-log_ratio, m),
        "kl/staleness_k3": _mean(ratio - 1 - log_ratio, m),
        "loss/value": loss.detach(),
    }


def _output(loss: Tensor, m: Tensor, adv: Tensor, log_ratio: Tensor, log_disc: Tensor, weight: Tensor,
            truncated: Tensor, clipped: Tensor, masked: Tensor, seq_ratio: str) -> LossOutput:
    """The LossOutput of every objective: the loss, its :func:`_stats` and the per-token tensors."""
    stats = _stats(loss, m, adv, log_ratio, log_disc, weight, truncated, clipped, masked, seq_ratio)
    tokens = {"is_weight": torch.where(m, weight, 0.0).detach(), "clipped": m & clipped, "masked": m & masked}
    return LossOutput(loss, stats, tokens)


__all__ = ["STAT_KEYS", "TOKEN_KEYS", "AGGREGATIONS", "aggregate", "IS_WEIGHTS", "SEQ_RATIOS", "CISPO_NORMS",
           "LossParams", "LossOutput"]
