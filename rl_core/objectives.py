"""Policy-gradient objectives (PAPER.md section 3): MiniRL and its ablation variants, GRPO, CISPO, and the
field's train-inference corrections beside them (decoupled TIS, IcePop, sequence-level MIS/TIS, GSPO).

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

The corrections share one form, verl's decoupled PPO: J = (1/n) sum_{i,t} sg[w_it] * min(r A, clip(r) A)
with r = pi_theta/pi_old clipped as in MiniRL and a detached weight w built from d = pi_old/mu_old alone;
they differ only in w (:func:`tis_decoupled`, :func:`icepop`, :func:`seq_mis`, :func:`seq_tis`). They keep
MiniRL's token sum / n (verl's default token-mean differs by the mini-batch's mean length, one scalar per
step), so a head-to-head comparison isolates the correction.

Paper index: MiniRL and variants, Zheng et al. 2025 (arXiv 2512.01374); GRPO, Shao et al. 2024
(DeepSeekMath, arXiv 2402.03300); CISPO, MiniMax 2025 (MiniMax-M1, arXiv 2506.13585); decoupled PPO,
Hilton et al. 2021 (arXiv 2110.00641) as verl's rollout correction runs it; IcePop, Ling Team 2025 (Ring-1T,
"Every Step Evolves", arXiv 2510.18855); sequence-level masked / truncated IS, Liu, Li et al. 2025 ("When
Speed Kills Stability", the blog behind verl's rollout_corr_helper and slime's MIS example); GSPO, Zheng
et al. 2025 (arXiv 2507.18071).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

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
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, weight, truncated, ~keep,
                                   torch.zeros_like(m), p.seq_ratio))


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
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, torch.ones_like(ratio), none, ~keep,
                                   none, p.seq_ratio))


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
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, torch.ones_like(ratio), none, clipped,
                                   none, p.seq_ratio))


def _decoupled(parts: tuple, p: LossParams, weight: Tensor, truncated: Tensor, masked: Tensor) -> LossOutput:
    """J = (1/n) sum_{i,t} sg[w_it] min(r A_i, clip(r) A_i), r = pi_theta/pi_old clipped by eps_low/eps_high:
    the form every correction shares (module docstring). d loss/d logp = -(1/n) M w r A."""
    m, new, old, log_ratio, log_disc, adv = parts
    ratio = log_ratio.exp()
    keep = _clip_keep(ratio, adv, p.eps_low, p.eps_high)
    live = keep & (weight > 0) & (adv != 0)
    surrogate = weight * _ppo_clip(new - old, ratio, adv, live, p.eps_low, p.eps_high)
    loss = aggregate(-surrogate, m, "token_sum_const", p.n_responses)
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, weight, truncated, ~keep, masked,
                                   p.seq_ratio))


def tis_decoupled(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor,
                  mask: Tensor, p: LossParams) -> LossOutput:
    """Decoupled token TIS: w_t = min(pi_old/mu_old, C) times the PPO-clip surrogate on pi_theta/pi_old.

    Follows verl's decoupled mode (rollout_corr_helper ``rollout_is="token"`` weights multiplied into
    core_algos' vanilla PPO loss) and slime's ``vanilla_tis_function`` (which also clamps from below at
    its tis_clip_low; we do not). Its gradient is exactly MiniRL's with ``is_cap_on: discrepancy``
    (M min(d, C) r A on kept tokens), made a named objective. Deliberate differences from verl:
    C = p.is_cap (the paper's 5; verl's default is 2), no dual-clip (verl's clip_ratio_c = 3 also drops
    A < 0 tokens with r > 3; MiniRL has no such mask), and MiniRL's token sum / n, not verl's token-mean.
    """
    parts = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    m, log_disc = parts[0], parts[4]
    log_cap = math.log(p.is_cap)
    weight = log_disc.clamp(max=log_cap).exp()
    return _decoupled(parts, p, weight, m & (log_disc > log_cap), torch.zeros_like(m))


def icepop(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
           p: LossParams) -> LossOutput:
    """IcePop: w_t = d_t if icepop_low <= d_t <= icepop_high else 0, d = pi_old/mu_old, times the PPO-clip
    surrogate on pi_theta/pi_old: a token outside the band gets no gradient at all (masked, not truncated).

    Follows the IcePop objective of Ring-1T (arXiv 2510.18855: M(k) = k inside [alpha, beta], 0 outside;
    alpha 0.5, beta 5) as NeMo RL (``truncated_importance_sampling_type: icepop``) and slime
    (``icepop_function``) implement it. Deliberate difference: MiniRL's token sum / n, where the sources
    normalise per response (GRPO-style) or by the batch's tokens (NeMo RL's token-level loss).
    """
    parts = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    m, log_disc = parts[0], parts[4]
    inside = (log_disc >= math.log(p.icepop_low)) & (log_disc <= math.log(p.icepop_high))
    weight = torch.where(inside, log_disc, 0.0).exp() * inside
    return _decoupled(parts, p, weight, torch.zeros_like(m), m & ~inside)


def seq_mis(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
            p: LossParams) -> LossOutput:
    """Sequence-level masked IS: w_i = rho_i if seq_mis_low <= rho_i <= seq_mis_high else 0, for every
    token of response i, times the PPO-clip surrogate; a response outside the band is dropped whole.

    rho_i is the sequence ratio of d = pi_old/mu_old in ``p.seq_ratio`` mode: geometric (default,
    exp(mean_t log d), length-normalised, the filter of verl's Geo-RS and NeMo RL's seq-mask-tis) or
    product (prod_t d, the sequence IS weight of "When Speed Kills Stability"'s Seq-MIS and TRL's
    ``vllm_importance_sampling_mode: sequence_mask``). Follows slime's MIS example (``tis_mode: mask`` at
    ``tis_level`` geometric / sequence), which weights and masks with the same ratio. Deliberate
    differences: verl's Seq-MIS also truncates the kept weights at C and NeMo RL's seq-mask-tis weights
    kept responses per token; the band defaults (0.98, 1.02) are wider than the sources' (verl 0.999-1.001,
    NeMo RL 0.999-1.002, slime 0.9999-1.0001), which are set for responses of thousands of tokens: at
    ~20 tokens and a token KL near 1e-3 they are about two standard deviations of log rho_i. For product
    mode set a product band (verl 0.5-2, TRL at most 3).
    """
    parts = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    m, log_disc = parts[0], parts[4]
    log_rho = SEQ_RATIOS[p.seq_ratio](log_disc, m)                                    # (B,)
    inside = (log_rho >= math.log(p.seq_mis_low)) & (log_rho <= math.log(p.seq_mis_high))
    weight = (torch.where(inside, log_rho, 0.0).exp() * inside)[:, None].expand_as(log_disc)
    return _decoupled(parts, p, weight, torch.zeros_like(m), m & ~inside[:, None])


def seq_tis(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
            p: LossParams) -> LossOutput:
    """Sequence-level truncated IS: w_i = min(prod_t pi_old/mu_old, C) for every token of response i,
    times the PPO-clip surrogate.

    Follows verl's Seq-TIS (``rollout_is="sequence"``, decoupled mode) and TRL's ``sequence_truncate``: the
    product, whatever ``p.seq_ratio`` says (a geometric mean near 1 would never reach C). Deliberate
    differences: C = p.is_cap (verl 2, TRL 3), no lower truncation (TRL's optional clip_min).
    """
    parts = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    m, log_disc = parts[0], parts[4]
    log_rho = _seq_product(log_disc, m)                                              # (B,)
    log_cap = math.log(p.is_cap)
    weight = log_rho.clamp(max=log_cap).exp()[:, None].expand_as(log_disc)
    return _decoupled(parts, p, weight, m & (log_rho > log_cap)[:, None], torch.zeros_like(m))


def gspo(logp_new: Tensor, logp_old: Tensor, logp_behavior: Tensor, advantages: Tensor, mask: Tensor,
         p: LossParams) -> LossOutput:
    """GSPO: J = (1/n) sum_i min(s_i A_i, clip(s_i, 1-gspo_eps_low, 1+gspo_eps_high) A_i),
    s_i = (pi_theta(y_i)/pi_old(y_i))^(1/|y_i|) = exp(mean_t log r_t).

    Zheng et al. 2025 (arXiv 2507.18071): its sequence-level objective, the clip ranges 3e-4 / 4e-4 of its
    experiments and group z-scored advantages; one clip decision per response, and
    grad s_i = s_i (1/|y_i|) sum_t grad log pi.
    Equal to verl's compute_policy_loss_gspo (the GSPO-token form with seq-mean-token-mean) when each
    response has one advantage. No mu correction (logp_behavior only feeds the stats), as in the paper;
    clip/* count the tokens of clipped responses.
    """
    m, new, old, log_ratio, log_disc, adv = _inputs(logp_new, logp_old, logp_behavior, advantages, mask)
    a = torch.where(m.any(-1), advantages.detach(), 0.0)                              # (B,)
    log_s = _seq_geometric(log_ratio, m)                                             # (B,) detached
    keep = _clip_keep(log_s.exp(), a, p.gspo_eps_low, p.gspo_eps_high)               # (B,)
    s = _ppo_clip(_seq_geometric(new - old, m), log_s.exp(), a, keep & (a != 0), p.gspo_eps_low,
                  p.gspo_eps_high)                                                   # (B,) s_i A_i, clipped
    loss = aggregate(-s[:, None].expand_as(new), m, "seq_mean", p.n_responses)      # (1/n) sum_i
    none = torch.zeros_like(m)
    return LossOutput(loss, _stats(loss, m, adv, log_ratio, log_disc, torch.ones_like(log_ratio), none,
                                   m & ~keep[:, None], none, p.seq_ratio))


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
    # the corrections keep MiniRL's advantage, so each differs from MiniRL in its weight alone
    "tis_decoupled": Objective(tis_decoupled, "group_mean"),
    "icepop": Objective(icepop, "group_mean"),
    "seq_mis": Objective(seq_mis, "group_mean"),
    "seq_tis": Objective(seq_tis, "group_mean"),
    "gspo": Objective(gspo, "group_zscore"),
}


def get_objective(name: str) -> Objective:
    """OBJECTIVES[name], with an error that lists the allowed names."""
    return _lookup(OBJECTIVES, name, "objective")


__all__ = ["LossParams", "LossOutput", "Objective", "LossFn", "minirl", "grpo", "cispo", "tis_decoupled",
           "icepop", "seq_mis", "seq_tis", "gspo", "aggregate", "group_mean", "group_zscore", "OBJECTIVES",
           "ADVANTAGES", "AGGREGATIONS", "IS_WEIGHTS", "SEQ_RATIOS", "CISPO_NORMS", "STAT_KEYS",
           "get_objective"]
