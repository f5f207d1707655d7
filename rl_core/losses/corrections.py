"""The field's train-inference corrections beside MiniRL: decoupled TIS, IcePop, sequence-level MIS/TIS, GSPO.

The corrections share one form, verl's decoupled PPO: J = (1/n) sum_{i,t} sg[w_it] * min(r A, clip(r) A)
with r = pi_theta/pi_old clipped as in MiniRL and a detached weight w built from d = pi_old/mu_old alone;
they differ only in w (:func:`tis_decoupled`, :func:`icepop`, :func:`seq_mis`, :func:`seq_tis`). They keep
MiniRL's token sum / n (verl's default token-mean differs by the mini-batch's mean length, one scalar per
step), so a head-to-head comparison isolates the correction. :func:`gspo` replaces the token ratio by a
length-normalised sequence ratio. Same signature and conventions as rl_core.losses.objectives, which registers
them.

Paper index: decoupled PPO, Hilton et al. 2021 (arXiv 2110.00641) as verl's rollout correction runs it;
IcePop, Ling Team 2025 (Ring-1T, "Every Step Evolves", arXiv 2510.18855); sequence-level masked / truncated
IS, Liu, Li et al. 2025 ("When Speed Kills Stability", the blog behind verl's rollout_corr_helper and
slime's MIS example); GSPO, Zheng et al. 2025 (arXiv 2507.18071).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rl_core.losses.parts import (
    SEQ_RATIOS,
    LossOutput,
    LossParams,
    _clip_keep,
    _inputs,
    _output,
    _ppo_clip,
    _seq_geometric,
    _seq_product,
    aggregate,
)


def _decoupled(parts: tuple, p: LossParams, weight: Tensor, truncated: Tensor, masked: Tensor) -> LossOutput:
    """J = (1/n) sum_{i,t} sg[w_it] min(r A_i, clip(r) A_i), r = pi_theta/pi_old clipped by eps_low/eps_high:
    the form every correction shares (module docstring). d loss/d logp = -(1/n) M w r A."""
    m, new, old, log_ratio, log_disc, adv = parts
    ratio = log_ratio.exp()
    keep = _clip_keep(ratio, adv, p.eps_low, p.eps_high)
    live = keep & (weight > 0) & (adv != 0)
    surrogate = weight * _ppo_clip(new - old, ratio, adv, live, p.eps_low, p.eps_high)
    loss = aggregate(-surrogate, m, "token_sum_const", p.n_responses)
    return _output(loss, m, adv, log_ratio, log_disc, weight, truncated, ~keep, masked,
                   p.seq_ratio)


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
    return _output(loss, m, adv, log_ratio, log_disc, torch.ones_like(log_ratio), none,
                   m & ~keep[:, None], none, p.seq_ratio)


__all__ = ["tis_decoupled", "icepop", "seq_mis", "seq_tis", "gspo"]
