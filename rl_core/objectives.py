"""Policy-gradient objectives (PAPER.md section 3): MiniRL and its ablation variants, GRPO, CISPO.

verl ``core_algos`` style: every term is a pure function of tensors and plain numbers (no config object,
no ``.item()``, no logging), all with one signature, looked up by name in :data:`OBJECTIVES`; the
normalisation is the separate :func:`aggregate`. Each loss is the quantity to **minimise** (= -J).

Tensors, named by the policy that produced them:

* ``logp_new``      (B, T)  log pi_theta(y_t), the policy being optimised (carries the gradient)
* ``logp_old``      (B, T)  log pi_old(y_t), the training engine's recomputation at theta_old
* ``logp_behavior`` (B, T)  log mu_old(y_t), the rollout engine that sampled y
* ``advantages``    (B,)    one per response, broadcast over its tokens (treated as constants)
* ``mask``          (B, T)  bool or float; nonzero marks a response token

Positions outside ``mask`` may hold anything (0, huge, inf, nan): they are replaced by 0 with
``torch.where`` before any arithmetic, so they add exactly nothing to the loss, the gradient or the stats.

Paper index: MiniRL and variants, Zheng et al. 2025 (arXiv 2512.01374); GRPO, Shao et al. 2024
(DeepSeekMath, arXiv 2402.03300); CISPO, MiniMax 2025 (MiniMax-M1, arXiv 2506.13585).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

STAT_KEYS = ("is/weight_mean", "is/weight_max", "is/truncated_frac", "ratio/discrepancy_mean",
             "ratio/staleness_mean", "clip/frac", "clip/frac_pos", "clip/frac_neg", "kl/staleness_k1",
             "kl/staleness_k3", "loss/value")


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise KeyError(f"unknown {what} {name!r} (allowed: {sorted(table)})")
    return table[name]


# ------------------------------------------------------------------------------------ aggregation


def _token_sum_const(per_token: Tensor, m: Tensor, constant: float | None) -> Tensor:
    return per_token.sum() / (per_token.shape[0] if constant is None else constant)


def _seq_mean(per_token: Tensor, m: Tensor, constant: float | None) -> Tensor:
    lengths = m.sum(-1).clamp(min=1).to(per_token.dtype)                            # (B,)
    return (per_token.sum(-1) / lengths).sum() / (per_token.shape[0] if constant is None else constant)


def _token_mean(per_token: Tensor, m: Tensor, constant: float | None) -> Tensor:
    return per_token.sum() / (m.sum().clamp(min=1).to(per_token.dtype) if constant is None else constant)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float | None], Tensor]] = {
    "token_sum_const": _token_sum_const, "seq_mean": _seq_mean, "token_mean": _token_mean}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, constant: float | None = None) -> Tensor:
    """Reduce per-token terms (B, T) over the response tokens of ``mask`` (B, T) to a scalar.

    * ``token_sum_const``: sum over masked tokens / constant (None: B, the responses of this call).
    * ``seq_mean``: sum over responses of each response's masked-token mean / constant (None: B), i.e.
      (1/n) sum_i (1/|y_i|) sum_t, the per-response length normalisation; with constant None it is the
      mean over responses of the per-response token mean. A response with no tokens adds 0 (and still
      counts in B).
    * ``token_mean``: sum over masked tokens / constant (None: the number of masked tokens, at least 1).

    ``constant`` replaces the count of this call: pass the mini-batch's count when a mini-batch is split
    into micro-batches whose losses (gradients) are summed, and the sum equals the mini-batch loss.
    """
    m = mask != 0
    return _lookup(AGGREGATIONS, mode, "aggregation")(torch.where(m, per_token, 0.0), m, constant)


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


@dataclass(frozen=True)
class LossParams:
    """Plain numbers the objectives need; the trainer builds one from LossConfig per mini-batch."""

    is_cap: float = 5.0
    """C: truncation of the detached token IS weight (TIS)."""
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

    def __post_init__(self) -> None:
        _lookup(IS_WEIGHTS, self.is_cap_on, "is_cap_on")

    @classmethod
    def from_config(cls, loss_cfg: Any, n_responses: float | None = None,
                    n_tokens: float | None = None) -> LossParams:
        """From a ``rl_core.config.LossConfig`` plus the mini-batch counts."""
        return cls(is_cap=loss_cfg.is_cap, is_cap_on=loss_cfg.is_cap_on, eps_low=loss_cfg.eps_low,
                   eps_high=loss_cfg.eps_high, n_responses=n_responses, n_tokens=n_tokens)


class LossOutput(NamedTuple):
    loss: Tensor
    """Scalar to minimise (-J)."""
    stats: dict[str, Tensor]
    """Detached scalar tensors under the names of STAT_KEYS."""


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


def _mean(x: Tensor, m: Tensor) -> Tensor:
    """Mean of x over m; 0 for an empty set."""
    return torch.where(m, x, 0.0).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def _stats(loss: Tensor, m: Tensor, adv: Tensor, log_ratio: Tensor, log_disc: Tensor, weight: Tensor,
           truncated: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    """Token means over this call's response tokens.

    kl/staleness_k1 = mean(-log r) and kl/staleness_k3 = mean((r - 1) - log r), r = pi_theta/pi_old: both
    estimate KL(pi_old || pi_theta) on tokens sampled from mu_old ~ pi_old (k3 is Schulman's unbiased,
    nonnegative estimator of KL(q||p) with x ~ q and r = p(x)/q(x), here q = pi_old, p = pi_theta).
    """
    ratio = log_ratio.exp()
    f = log_ratio.dtype
    return {
        "is/weight_mean": _mean(weight, m),
        "is/weight_max": torch.where(m, weight, 0.0).max(),     # weights are > 0, so 0 only when empty
        "is/truncated_frac": _mean(truncated.to(f), m),
        "ratio/discrepancy_mean": _mean(log_disc.exp(), m),
        "ratio/staleness_mean": _mean(ratio, m),
        "clip/frac": _mean(clipped.to(f), m),
        "clip/frac_pos": _mean(clipped.to(f), m & (adv > 0)),
        "clip/frac_neg": _mean(clipped.to(f), m & (adv < 0)),
        "kl/staleness_k1": _mean(-log_ratio, m),
        "kl/staleness_k3": _mean(ratio - 1 - log_ratio, m),
        "loss/value": loss.detach(),
    }


# -------------------------------------------------------------------------------------- objectives


def minirl(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
           p: LossParams, *, use_is: bool = True, clip: bool = True, length_norm: bool = False) -> LossOutput:
    """MiniRL: J = (1/n) sum_{i,t} M_t sg[w_t] A_i log pi_theta(y_it), with n = p.n_responses.

    w_t is the truncated token IS weight against mu_old (see LossParams.is_cap_on); use_is=False sets
    w_t = 1 (plain REINFORCE with the group-mean baseline). M_t is the clipping mask on r = pi_theta/pi_old
    (the training engine's old policy, not mu); clip=False sets M_t = 1. A masked token's term is exactly
    0, so its gradient is exactly 0. length_norm=True aggregates with "seq_mean": each response's token
    sum times 1/|y_i|, then (1/n) sum_i.
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    ratio = log_ratio.exp()
    if use_is:
        weight, truncated = IS_WEIGHTS[p.is_cap_on](log_ratio, log_disc, p.is_cap)
    else:
        weight, truncated = torch.ones_like(ratio), torch.zeros_like(m)
    keep = _clip_keep(ratio, adv, p.eps_low, p.eps_high) if clip else torch.ones_like(m)
    coef = torch.where(keep, weight * adv, 0.0)                      # detached: sg[w] and M
    mode = "seq_mean" if length_norm else "token_sum_const"
    loss = aggregate(-coef * new, m, mode, p.n_responses)
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, weight, truncated, ~keep))


def grpo(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
         p: LossParams) -> LossOutput:
    """GRPO: J = (1/n) sum_i (1/|y_i|) sum_t min(r_t A_i, clip(r_t, 1-eps_low, 1+eps_high) A_i).

    r = pi_theta/pi_old (no mu correction; logp_behavior only feeds the stats). Computed as
    where(M_t, r_t, clip(r_t)) * A_i, which equals the min token by token (A > 0: the min is the clipped
    branch exactly when r > 1+eps_high; A < 0: exactly when r < 1-eps_low; A = 0: both are 0), so a
    clipped token is a constant and its exp is never differentiated (no inf * 0 on huge ratios).
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    ratio = log_ratio.exp()
    keep = _clip_keep(ratio, adv, p.eps_low, p.eps_high)
    live = torch.exp(torch.where(keep, new - old, 0.0))             # r_t, with grad where kept
    surrogate = torch.where(keep, live, ratio.clamp(1 - p.eps_low, 1 + p.eps_high)) * adv
    loss = aggregate(-surrogate, m, "seq_mean", p.n_responses)
    ones = torch.ones_like(ratio)
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, ones, torch.zeros_like(m), ~keep))


def cispo(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
          p: LossParams) -> LossOutput:
    """CISPO: J = (1/N_tok) sum_{i,t} sg[clip(r_t, 1-eps_low, 1+eps_high)] A_i log pi_theta(y_it).

    r = pi_theta/pi_old, no mu correction, no mask: a clipped token keeps its gradient through log pi.
    N_tok = p.n_tokens (None: this call's response tokens). clip/* report the fraction of tokens whose
    ratio was clipped; is/* report the absent mu correction (weight 1, truncated 0).
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    ratio = log_ratio.exp()
    lo, hi = 1 - p.eps_low, 1 + p.eps_high
    loss = aggregate(-ratio.clamp(lo, hi) * adv * new, m, "token_mean", p.n_tokens)
    clipped = (ratio < lo) | (ratio > hi)
    ones = torch.ones_like(ratio)
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, ones, torch.zeros_like(m), clipped))


# -------------------------------------------------------------------------------------- advantages


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B*G,) group-contiguous -> (B, G) float."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size {group_size} does not divide {rewards.numel()} rewards")
    r = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    return r.reshape(-1, group_size)


def _centred(g: Tensor) -> Tensor:
    """R - group mean; exactly 0 for a constant group (a float mean of equal values can be off by 1 ulp)."""
    constant = (g == g[:, :1]).all(-1, keepdim=True)
    return torch.where(constant, 0.0, g - g.mean(-1, keepdim=True))


def group_mean(rewards: Tensor, group_size: int) -> Tensor:
    """A = R - mean of its group (MiniRL, CISPO). rewards (B*G,) group-contiguous -> (B*G,)."""
    return _centred(_groups(rewards, group_size)).reshape(-1)


def group_zscore(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """A = (R - mean) / (std + eps) over its group (GRPO). rewards (B*G,) -> (B*G,).

    std is the unbiased (Bessel-corrected) group std, as in TRL's and verl's GRPO, so the numbers match
    what users of those frameworks see; eps = 1e-6 as in verl. A constant group gives exactly 0.
    """
    if group_size < 2:
        raise ValueError(f"group_zscore needs group_size >= 2 (unbiased std), got {group_size}")
    g = _groups(rewards, group_size)
    return (_centred(g) / (g.std(-1, keepdim=True) + eps)).reshape(-1)


ADVANTAGES: dict[str, Callable[[Tensor, int], Tensor]] = {
    "group_mean": group_mean, "group_zscore": group_zscore}


# -------------------------------------------------------------------------------------- registry

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, LossParams], LossOutput]


class Objective(NamedTuple):
    loss: LossFn
    """(logp_new, logp_old, logp_behavior, advantages, mask, params) -> LossOutput."""
    advantage: str
    """Key of ADVANTAGES this objective is defined with."""


OBJECTIVES: dict[str, Objective] = {
    "minirl": Objective(minirl, "group_mean"),
    "minirl_length_norm": Objective(partial(minirl, length_norm=True), "group_mean"),
    "minirl_no_is": Objective(partial(minirl, use_is=False), "group_mean"),
    "minirl_no_clip": Objective(partial(minirl, clip=False), "group_mean"),
    "grpo": Objective(grpo, "group_zscore"),
    "cispo": Objective(cispo, "group_mean"),
}


def get_objective(name: str) -> Objective:
    """OBJECTIVES[name], with an error that lists the allowed names."""
    return _lookup(OBJECTIVES, name, "objective")


__all__ = ["LossParams", "LossOutput", "Objective", "LossFn", "minirl", "grpo", "cispo", "aggregate",
           "group_mean", "group_zscore", "OBJECTIVES", "ADVANTAGES", "AGGREGATIONS", "IS_WEIGHTS",
           "STAT_KEYS", "get_objective"]
