"""Policy-gradient objectives (docs/objective.md §3-§6): MiniRL and its ablation variants, GRPO, CISPO, and
the field's train-inference corrections beside them (decoupled TIS, IcePop, sequence-level MIS/TIS, GSPO).

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

Where things live: this module holds the paper's objectives and the registry; the field's corrections are
in rl_core.losses.corrections, the shared parts (aggregation, IS weights, LossParams, stats) in
rl_core.losses.parts, the advantages in rl_core.losses.advantages. All are importable from here.

Paper index: MiniRL and variants, Zheng et al. 2025 (arXiv 2512.01374); GRPO, Shao et al. 2024
(DeepSeekMath, arXiv 2402.03300); CISPO, MiniMax 2025 (MiniMax-M1, arXiv 2506.13585); the corrections'
papers are indexed in rl_core.losses.corrections.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from rl_core.losses.advantages import ADVANTAGES, group_mean, group_zscore
from rl_core.losses.corrections import gspo, icepop, seq_mis, seq_tis, tis_decoupled
from rl_core.losses.knobs import READS
from rl_core.losses.parts import (
    AGGREGATIONS,
    CISPO_NORMS,
    IS_WEIGHTS,
    SEQ_RATIOS,
    STAT_KEYS,
    LossOutput,
    LossParams,
    _clip_keep,
    _inputs,
    _lookup,
    _output,
    _ppo_clip,
    aggregate,
)

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
    return _output(loss, m, adv, log_ratio, log_disc, weight, truncated, ~keep,
                   torch.zeros_like(m), p.seq_ratio)


def grpo(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
         p: LossParams) -> LossOutput:
    """GRPO: J = (1/n) sum_i (1/|y_i|) sum_t min(r_t A_i, clip(r_t, 1-eps_low, 1+eps_high) A_i).

    r = pi_theta/pi_old (no mu correction; logp_behavior only feeds the stats); the min is computed as in
    :func:`_ppo_clip`.
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    ratio = log_ratio.exp()
    keep = _clip_keep(ratio, adv, p.eps_low, p.eps_high)
    surrogate = _ppo_clip(new - old, ratio, adv, keep & (adv != 0), p.eps_low, p.eps_high)
    loss = aggregate(-surrogate, m, "seq_mean", p.n_responses)
    none = torch.zeros_like(m)
    return _output(loss, m, adv, log_ratio, log_disc, torch.ones_like(ratio), none, ~keep,
                   none, p.seq_ratio)


def cispo(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
          p: LossParams) -> LossOutput:
    """CISPO: J = (1/N) sum_{i,t} sg[clip(r_t, 1-eps_low, 1+eps_high)] A_i log pi_theta(y_it).

    r = pi_theta/pi_old, no mu correction, no mask: a clipped token keeps its gradient through log pi.
    The normaliser N is ``p.cispo_norm``: "group" (default, MiniMax-M1's formula: each prompt's group of G
    responses divided by that group's total tokens, then averaged over the groups of the mini-batch,
    n_responses / G of them) or "token_mean" (verl's compute_policy_loss_cispo with its default token-mean:
    the mini-batch's tokens, p.n_tokens; None: this call's). The two agree when every group has as many
    tokens. clip/* report the fraction of tokens whose ratio was clipped; is/* report the absent mu
    correction (weight 1, truncated 0).
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    ratio = log_ratio.exp()
    lo, hi = 1 - p.eps_low, 1 + p.eps_high
    mode = CISPO_NORMS[p.cispo_norm]
    groups = p.n_responses / p.group_size if p.n_responses and p.group_size else None
    constant = groups if mode == "group_token_mean" else p.n_tokens
    loss = aggregate(-ratio.clamp(lo, hi) * adv * new, m, mode, constant, p.group_size)
    clipped = (ratio < lo) | (ratio > hi)
    none = torch.zeros_like(m)
    return _output(loss, m, adv, log_ratio, log_disc, torch.ones_like(ratio), none, clipped,
                   none, p.seq_ratio)


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
    # the corrections keep MiniRL's advantage, so each differs from MiniRL in its weight alone
    "tis_decoupled": Objective(tis_decoupled, "group_mean"),
    "icepop": Objective(icepop, "group_mean"),
    "seq_mis": Objective(seq_mis, "group_mean"),
    "seq_tis": Objective(seq_tis, "group_mean"),
    "gspo": Objective(gspo, "group_zscore"),
}


if set(OBJECTIVES) != set(READS):  # the knob table the config validates with covers this registry exactly
    raise ImportError(f"rl_core.losses.knobs.READS {sorted(READS)} != OBJECTIVES {sorted(OBJECTIVES)}")


def get_objective(name: str) -> Objective:
    """OBJECTIVES[name], with an error that lists the allowed names."""
    return _lookup(OBJECTIVES, name, "objective")


__all__ = ["LossParams", "LossOutput", "Objective", "LossFn", "minirl", "grpo", "cispo", "tis_decoupled",
           "icepop", "seq_mis", "seq_tis", "gspo", "aggregate", "group_mean", "group_zscore", "OBJECTIVES",
           "ADVANTAGES", "AGGREGATIONS", "IS_WEIGHTS", "SEQ_RATIOS", "CISPO_NORMS", "STAT_KEYS",
           "get_objective"]
