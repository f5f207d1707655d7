"""Objectives: hand-derived values, stop-gradients, invariances (docs/conventions.md §3 and §4).

Everything runs in float64 so hand values hold to ~1e-12. The shared example (B=2, T=3) is built from
ratio tables, so every expected number below is arithmetic on those tables:

    r = pi_theta/pi_old      row 0: [1.0, 1.5, 1.2]   row 1: [0.7, 1.0, --]
    d = pi_old/mu_old        row 0: [1.0, 4.0, 4.5]   row 1: [2.0, 1.25, --]
    logp_new                 row 0: [-1.0, -2.0, -0.5] row 1: [-1.5, -0.25, --]
    A = [0.5, -0.5]; mask = [[1,1,1],[1,1,0]]; (1, 2) is outside the mask and holds garbage (50, -1e4, nan)
    Clip (eps_low 0.2, eps_high 0.27): A>0 drops r > 1.27 -> (0,1); A<0 drops r < 0.8 -> (1,0).
    M = [[1,0,1],[0,1,-]]

The corrections share the PPO-clip surrogate where(M, r, clip r) * A:
    row 0: 0.5 * [1, 1.27, 1.2] = [0.5, 0.635, 0.6]     row 1: -0.5 * [0.8, 1] = [-0.4, -0.5]
and sequence ratios of d: products 1*4*4.5 = 18 and 2*1.25 = 2.5, geometric means 18^(1/3) and 2.5^(1/2).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_core import config
from rl_core.losses.objectives import (
    ADVANTAGES,
    CISPO_NORMS,
    IS_WEIGHTS,
    OBJECTIVES,
    SEQ_RATIOS,
    STAT_KEYS,
    LossParams,
    aggregate,
    cispo,
    get_objective,
    group_mean,
    group_zscore,
    grpo,
    gspo,
    icepop,
    minirl,
    seq_mis,
    seq_tis,
    tis_decoupled,
)

torch.set_num_threads(1)
D = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}
P2 = LossParams(n_responses=2.0)                  # n = B = 2 of the shared example


def close(actual, expected, **tol):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=D), torch.as_tensor(expected, dtype=D),
                               **(tol or TOL))


def example():
    """The shared example of the module docstring -> (logp_new (grad), logp_old, logp_behavior, adv, mask)."""
    r = torch.tensor([[1.0, 1.5, 1.2], [0.7, 1.0, 1.0]], dtype=D)
    d = torch.tensor([[1.0, 4.0, 4.5], [2.0, 1.25, 1.0]], dtype=D)
    new = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.25, 0.0]], dtype=D)
    old = new - r.log()
    behavior = old - d.log()
    new[1, 2], old[1, 2], behavior[1, 2] = 50.0, -1e4, float("nan")      # garbage outside the mask
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return new.requires_grad_(), old, behavior, torch.tensor([0.5, -0.5], dtype=D), mask


def run(name, p=P2, inputs=None):
    return get_objective(name).loss(*(inputs or example()), p)


# ------------------------------------------------------------------------------------ aggregation

PER_TOKEN = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], dtype=D)
AGG_MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=D)   # float mask, empty row


@pytest.mark.parametrize(("mode", "constant", "expected"), [
    ("token_sum_const", 3.0, 29 / 3),    # (1+2) + (5+6+7+8) = 29 masked sum, / 3
    ("token_sum_const", None, 29 / 3),   # None: / B = 3
    ("seq_mean", None, 8 / 3),           # row means 1.5, 6.5, 0 (empty row adds 0, counts in B): 8 / 3
    ("seq_mean", 2.0, 4.0),              # 8 / 2
    ("token_mean", None, 29 / 6),        # 29 / 6 masked tokens
    ("token_mean", 10.0, 2.9),           # 29 / 10
])
def test_aggregate_hand_values(mode, constant, expected):
    close(aggregate(PER_TOKEN, AGG_MASK, mode, constant), expected)


@pytest.mark.parametrize(("group_size", "constant", "expected"), [
    (1, None, 8 / 3),     # each row a group: 3/2 + 26/4 + 0 (empty: 0 / max(0, 1)) over 3 groups = 8/3
    (3, None, 29 / 6),    # one group of all rows: 29 over its 6 tokens, 1 group
    (3, 2.0, 29 / 12),    # the same over a constant 2 groups
    (None, None, 29 / 6),  # None: the call is one group
])
def test_aggregate_group_token_mean_hand_values(group_size, constant, expected):
    close(aggregate(PER_TOKEN, AGG_MASK, "group_token_mean", constant, group_size), expected)


def test_aggregate_group_token_mean_refuses_groups_that_do_not_divide_the_rows():
    with pytest.raises(ValueError, match="group_size 2"):
        aggregate(PER_TOKEN, AGG_MASK, "group_token_mean", None, 2)


def test_aggregate_seq_mean_is_per_response_length_normalisation():
    # (1/n) sum_i (1/|y_i|) sum_t with n = B = 3: (3/2 + 26/4 + 0) / 3 = 8/3, same as seq_mean's default.
    lengths = AGG_MASK.sum(-1).clamp(min=1)
    close(aggregate(PER_TOKEN, AGG_MASK, "seq_mean"), ((PER_TOKEN * AGG_MASK).sum(-1) / lengths).sum() / 3)


def test_aggregate_empty_mask_is_zero_not_nan():
    empty = torch.zeros_like(AGG_MASK)
    for mode in ("token_sum_const", "seq_mean", "token_mean", "group_token_mean"):
        close(aggregate(PER_TOKEN, empty, mode), 0.0)
    with pytest.raises(KeyError, match="token_sum_const"):
        aggregate(PER_TOKEN, AGG_MASK, "nope")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_invariance_token_sum_const_micro_batching_and_outside_mask(data):
    b = data.draw(st.integers(1, 6))
    t = data.draw(st.integers(1, 5))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    values = torch.randn(b, t, dtype=D, generator=gen)
    mask = torch.rand(b, t, generator=gen) < data.draw(st.floats(0.0, 1.0))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, b), max_size=3)))) if b > 1 else []
    bounds = [0, *[c for c in cuts if c < b], b]
    # micro-batching: each micro-batch divides by the mini-batch's B; the sum is the mini-batch loss
    per_token = values.clone().requires_grad_()
    full = aggregate(per_token, mask, "token_sum_const", float(b))
    (g_full,) = torch.autograd.grad(full, per_token)
    parts = sum(aggregate(per_token[lo:hi], mask[lo:hi], "token_sum_const", float(b))
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
    (g_parts,) = torch.autograd.grad(parts, per_token)
    close(parts, full)
    close(g_parts, g_full)
    # tokens outside the mask never change the result, whatever they hold
    garbage = torch.where(mask, values, torch.tensor([float("nan"), 1e300, -float("inf")], dtype=D)[
        torch.randint(0, 3, (b, t), generator=gen)])
    close(aggregate(garbage, mask, "token_sum_const", float(b)), full)


# ------------------------------------------------------------------------------------ objective values


def test_minirl_hand_value_and_stats():
    # w = min(r*d, 5): r*d = [[1, 6, 5.4], [1.4, 1.25]] -> w = [[1, 5, 5], [1.4, 1.25]]
    # J*n = 0.5*(1*-1.0 + 5*-0.5) + (-0.5)*(1.25*-0.25) = -1.75 + 0.15625 = -1.59375; n = 2
    out = run("minirl")
    close(out.loss, 1.59375 / 2)
    s = out.stats
    assert set(s) == set(STAT_KEYS) and all(not v.requires_grad and v.dim() == 0 for v in s.values())
    close(s["is/weight_mean"], (1 + 5 + 5 + 1.4 + 1.25) / 5)
    close(s["is/weight_max"], 5.0)
    close(s["is/truncated_frac"], 2 / 5)                       # r*d = 6 and 5.4 exceed C
    close(s["ratio/discrepancy_mean"], (1 + 4 + 4.5 + 2 + 1.25) / 5)
    close(s["ratio/staleness_mean"], (1 + 1.5 + 1.2 + 0.7 + 1) / 5)
    close(s["clip/frac"], 2 / 5)
    close(s["clip/frac_pos"], 1 / 3)                           # (0,1) of the 3 tokens with A > 0
    close(s["clip/frac_neg"], 1 / 2)                           # (1,0) of the 2 tokens with A < 0
    log_r = math.log(1.5) + math.log(1.2) + math.log(0.7)
    close(s["kl/staleness_k1"], -log_r / 5)                    # mean(-log r)
    close(s["kl/staleness_k3"], (0.5 + 0.2 - 0.3 - log_r) / 5)  # mean((r - 1) - log r)
    close(s["loss/value"], out.loss.detach())
    close(s["is/masked_frac"], 0.0)                            # MiniRL truncates, never masks
    # population std of two values is half their gap: geometric log ratios log(18)/3 and log(2.5)/2
    close(s["seq/ratio_log_std"], abs(math.log(18) / 3 - math.log(2.5) / 2) / 2)
    product = run("minirl", LossParams(seq_ratio="product", n_responses=2.0)).stats
    close(product["seq/ratio_log_std"], math.log(18 / 2.5) / 2)   # log 18 and log 2.5


def test_minirl_discrepancy_cap_hand_value():
    # w = min(d, 5) * r = [[1, 6, 5.4], [1.4, 1.25]]; nothing truncated (max d = 4.5 < 5)
    # J*n = 0.5*(1*-1.0 + 5.4*-0.5) + 0.15625 = -1.85 + 0.15625 = -1.69375
    out = run("minirl", LossParams(is_cap_on="discrepancy", n_responses=2.0))
    close(out.loss, 1.69375 / 2)
    close(out.stats["is/weight_mean"], (1 + 6 + 5.4 + 1.4 + 1.25) / 5)
    close(out.stats["is/weight_max"], 6.0)
    close(out.stats["is/truncated_frac"], 0.0)


@pytest.mark.parametrize(("name", "expected"), [
    # w = 1: J*n = 0.5*(-1.0 - 0.5) + (-0.5)*(-0.25) = -0.625
    ("minirl_no_is", 0.625 / 2),
    # M = 1: J*n = 0.5*(1*-1 + 5*-2 + 5*-0.5) + (-0.5)*(1.4*-1.5 + 1.25*-0.25) = -6.75 + 1.20625
    ("minirl_no_clip", 5.54375 / 2),
    # per response: row 0 0.5*(-1 - 2.5)/3 = -7/12, row 1 0.15625/2 = 5/64; J = (-7/12 + 5/64)/2 = -97/384
    ("minirl_length_norm", 97 / 384),
    # surrogate where(M, r, clip r)*A: row 0 0.5*[1, 1.27, 1.2] mean 1.735/3, row 1 -0.5*[0.8, 1] mean -0.45
    # J = (1.735/3 - 0.45)/2 = 0.385/6
    ("grpo", -0.385 / 6),
    # sg[clip r]*A*logp over 5 tokens: 0.5*(1*-1 + 1.27*-2 + 1.2*-0.5) - 0.5*(0.8*-1.5 + 1*-0.25) = -1.345
    ("cispo", 1.345 / 5),
])
def test_variant_hand_values(name, expected):
    out = run(name)
    close(out.loss, expected)
    assert all(torch.isfinite(v) for v in out.stats.values())


def test_stats_of_objectives_without_is_and_cispo_clip_counts():
    for name in ("minirl_no_is", "grpo", "cispo"):
        s = run(name).stats
        close(s["is/weight_mean"], 1.0), close(s["is/weight_max"], 1.0), close(s["is/truncated_frac"], 0.0)
    # minirl_no_clip never masks; CISPO reports the clipped ratios (1.5 and 0.7) though it never masks
    close(run("minirl_no_clip").stats["clip/frac"], 0.0)
    s = run("cispo").stats
    close(s["clip/frac"], 2 / 5), close(s["clip/frac_pos"], 1 / 3), close(s["clip/frac_neg"], 1 / 2)


def test_grpo_equals_textbook_min_form():
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(4, 6, dtype=D, generator=gen).requires_grad_()
    old = new.detach() + 0.3 * torch.randn(4, 6, dtype=D, generator=gen)
    adv = torch.tensor([1.0, -1.0, 0.0, 0.5], dtype=D)
    mask = torch.rand(4, 6, generator=gen) < 0.8
    out = grpo(new, old, old, adv, mask, LossParams())
    r = (new - old).exp()
    a = adv[:, None]
    textbook = torch.minimum(r * a, r.clamp(0.8, 1.27) * a)
    ref = aggregate(-textbook, mask, "seq_mean")
    close(out.loss, ref)
    close(torch.autograd.grad(out.loss, new)[0], torch.autograd.grad(ref, new)[0])


# ------------------------------------------------------------------------------------ gradients


def grads(name, p=P2):
    new, old, behavior, adv, mask = example()
    old.requires_grad_(), behavior.requires_grad_()
    out = get_objective(name).loss(new, old, behavior, adv, mask, p)
    g_new, g_old, g_beh = torch.autograd.grad(out.loss, (new, old, behavior), allow_unused=True)
    assert g_old is None and g_beh is None                  # pi_old, mu_old are constants
    assert torch.isfinite(g_new).all() and g_new[1, 2] == 0  # outside the mask: exactly 0, no NaN leak
    return g_new


def test_minirl_gradient_detaches_is_weight_and_zeroes_masked_tokens():
    # d loss / d logp_new = -(1/n) M w A exactly (no dw/dlogp term); n = 2
    # row 0: -(0.5*0.5)*[1*1, 0*5, 1*5] = [-0.25, 0, -1.25]; row 1: 0.25*[0*1.4, 1*1.25, 0] = [0, 0.3125, 0]
    g = grads("minirl")
    close(g, [[-0.25, 0.0, -1.25], [0.0, 0.3125, 0.0]])
    assert g[0, 1] == 0 and g[1, 0] == 0                    # the clipped tokens: exactly zero


def test_grpo_gradient():
    # d/dlogp of -(1/n)(1/|y|) r A on kept tokens, 0 on clipped ones
    # row 0: -(1/2)(1/3)(0.5)*[1.0, 0, 1.2]; row 1: -(1/2)(1/2)(-0.5)*[0, 1.0, 0]
    close(grads("grpo"), [[-1 / 12, 0.0, -0.1], [0.0, 0.125, 0.0]])


def test_cispo_keeps_gradient_of_clipped_tokens():
    # -(1/5) clip(r) A: row 0: -0.1*[1, 1.27, 1.2]; row 1: 0.1*[0.8, 1, 0]
    g = grads("cispo")
    close(g, [[-0.1, -0.127, -0.12], [0.08, 0.1, 0.0]])
    assert g[0, 1] != 0 and g[1, 0] != 0


def test_first_order_on_policy_minirl_gradient_is_sequence_reinforce():
    # pi_theta = pi_old = mu_old: w = 1, M = 1, so grad J = (1/n) sum_i A_i sum_t grad log pi(y_it),
    # the REINFORCE gradient of J_seq; checked on the parameters of a tiny real model.
    torch.manual_seed(0)
    b, t, h, v = 3, 5, 4, 7
    model = torch.nn.Linear(h, v).double()
    feats = torch.randn(b, t, h, dtype=D)
    tokens = torch.randint(0, v, (b, t))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([0.75, -0.25, -0.5], dtype=D)

    def logp():
        return model(feats).log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)   # (B, T)

    loss = minirl(logp(), logp().detach(), logp().detach(), adv, mask, LossParams(n_responses=b)).loss
    g_minirl = torch.autograd.grad(loss, list(model.parameters()))
    reinforce = -(adv * (logp() * mask).sum(-1)).sum() / b
    g_ref = torch.autograd.grad(reinforce, list(model.parameters()))
    for a, r in zip(g_minirl, g_ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------ the field's corrections
# All four weighted corrections compute -(1/n) sum sg[w] * where(M, r, clip r) * A (module docstring's
# surrogate table), n = 2; their gradient is -(1/n) M w r A.


@pytest.mark.parametrize(("name", "p", "expected"), [
    # w = min(d, 5) = [[1, 4, 4.5], [2, 1.25]]: 0.5 + 4*0.635 + 4.5*0.6 + 2*-0.4 + 1.25*-0.5 = 4.315
    ("tis_decoupled", P2, -4.315 / 2),
    # C = 4.2 truncates 4.5: 0.5 + 2.54 + 4.2*0.6 - 0.8 - 0.625 = 4.135
    ("tis_decoupled", LossParams(is_cap=4.2, n_responses=2.0), -4.135 / 2),
    # band [0.5, 5] holds every d (and none exceeds C): the same as tis_decoupled
    ("icepop", P2, -4.315 / 2),
    # band [0.9, 4.2] drops d = 4.5 at (0, 2): 0.5 + 2.54 + 0 - 0.8 - 0.625 = 1.615
    ("icepop", LossParams(icepop_low=0.9, icepop_high=4.2, n_responses=2.0), -1.615 / 2),
    # geometric band [0.5, 2]: row 0 (18^(1/3) = 2.62) dropped, row 1 kept with w = 2.5^(1/2):
    # J*n = 2.5^(1/2) * (-0.4 - 0.5)
    ("seq_mis", LossParams(seq_mis_low=0.5, seq_mis_high=2.0, n_responses=2.0), 0.9 * 2.5 ** 0.5 / 2),
    # product band [0.5, 10]: row 0 (18) dropped, row 1 (2.5) kept with w = 2.5: J*n = 2.5 * -0.9
    ("seq_mis", LossParams(seq_ratio="product", seq_mis_low=0.5, seq_mis_high=10.0, n_responses=2.0),
     2.25 / 2),
    # the default band [0.98, 1.02] drops both responses (geometric 2.62 and 1.58): nothing is left
    ("seq_mis", P2, 0.0),
    # w = min(prod d, 5) = 5 for row 0 (18), 2.5 for row 1: 5*(0.5 + 0.635 + 0.6) + 2.5*-0.9 = 6.425
    ("seq_tis", P2, -6.425 / 2),
])
def test_correction_hand_values(name, p, expected):
    out = run(name, p)
    close(out.loss, expected)
    assert set(out.stats) == set(STAT_KEYS)


def test_correction_stats():
    s = run("tis_decoupled").stats
    close(s["is/weight_mean"], (1 + 4 + 4.5 + 2 + 1.25) / 5), close(s["is/weight_max"], 4.5)
    close(s["is/truncated_frac"], 0.0), close(s["is/masked_frac"], 0.0), close(s["clip/frac"], 2 / 5)
    s = run("icepop", LossParams(icepop_low=0.9, icepop_high=4.2, n_responses=2.0)).stats
    close(s["is/weight_mean"], (1 + 4 + 0 + 2 + 1.25) / 5), close(s["is/masked_frac"], 1 / 5)
    s = run("seq_mis", LossParams(seq_mis_low=0.5, seq_mis_high=2.0, n_responses=2.0)).stats
    close(s["is/masked_frac"], 3 / 5)                          # the 3 tokens of row 0
    close(s["is/weight_mean"], 2 * 2.5 ** 0.5 / 5), close(s["is/weight_max"], 2.5 ** 0.5)
    close(run("seq_mis").stats["is/masked_frac"], 1.0)
    s = run("seq_tis").stats
    close(s["is/truncated_frac"], 3 / 5), close(s["is/weight_max"], 5.0)   # row 0's 18 -> 5
    close(s["is/weight_mean"], (3 * 5 + 2 * 2.5) / 5)
    # seq_tis weights with the product whatever seq_ratio says (a geometric mean would not reach C)
    close(run("seq_tis", LossParams(seq_ratio="product", n_responses=2.0)).loss, -6.425 / 2)


@pytest.mark.parametrize(("name", "p", "expected"), [
    # -(1/2) M w r A: row 0 0.5*[1*1, 0, 4.5*1.2]/-2; row 1 -0.5*[0, 1.25*1]/-2
    ("tis_decoupled", P2, [[-0.25, 0.0, -1.35], [0.0, 0.3125, 0.0]]),
    # (0, 2) is outside the band [0.9, 4.2]: exactly 0 where tis_decoupled gives -1.35
    ("icepop", LossParams(icepop_low=0.9, icepop_high=4.2, n_responses=2.0),
     [[-0.25, 0.0, 0.0], [0.0, 0.3125, 0.0]]),
    # row 0 dropped; row 1 w = 2.5^(1/2): -(1/2)*w*(-0.5)*1 at (1, 1), (1, 0) clipped
    ("seq_mis", LossParams(seq_mis_low=0.5, seq_mis_high=2.0, n_responses=2.0),
     [[0.0, 0.0, 0.0], [0.0, 0.25 * 2.5 ** 0.5, 0.0]]),
    # w = 5 on row 0: -(1/2)*5*0.5*[1, 0, 1.2]; w = 2.5 on row 1: -(1/2)*2.5*(-0.5)*[0, 1]
    ("seq_tis", P2, [[-1.25, 0.0, -1.5], [0.0, 0.625, 0.0]]),
])
def test_correction_gradients_detach_the_weight(name, p, expected):
    close(grads(name, p), expected)


def test_gspo_hand_value_and_gradient_inside_the_clip_range():
    # s_0 = (1*1.5*1.2)^(1/3) = 1.8^(1/3) = 1.216, s_1 = (0.7*1)^(1/2) = 0.837: both inside [0.8, 1.27]
    # J = (1/2)(0.5 s_0 - 0.5 s_1); ds_i/dlogp_t = s_i/|y_i|, so the gradient of -J is
    # row 0: -(1/2)(0.5) s_0/3 = -s_0/12 per token, row 1: -(1/2)(-0.5) s_1/2 = s_1/8 per token
    s0, s1 = 1.8 ** (1 / 3), 0.7 ** 0.5
    p = LossParams(gspo_eps_low=0.2, gspo_eps_high=0.27, n_responses=2.0)
    out = run("gspo", p)
    close(out.loss, -(0.5 * s0 - 0.5 * s1) / 2)
    close(out.stats["clip/frac"], 0.0)
    close(grads("gspo", p), [[-s0 / 12] * 3, [s1 / 8, s1 / 8, 0.0]])


def test_gspo_paper_clip_range_clips_both_responses():
    # eps 3e-4 / 4e-4: s_0 = 1.216 > 1.0004 with A > 0 and s_1 = 0.837 < 0.9997 with A < 0 are both clipped:
    # J = (1/2)(0.5*1.0004 - 0.5*0.9997) = 0.000175, no gradient, every token counted as clipped
    out = run("gspo")
    close(out.loss, -0.000175)
    s = out.stats
    close(s["clip/frac"], 1.0), close(s["clip/frac_pos"], 1.0), close(s["clip/frac_neg"], 1.0)
    close(s["is/weight_mean"], 1.0), close(s["is/masked_frac"], 0.0)      # no mu correction
    close(grads("gspo"), [[0.0] * 3, [0.0] * 3])


@pytest.mark.parametrize(("p", "expected"), [
    # MiniMax-M1, each row its own group (G = 1), 2 groups: rows' token means
    # 0.5*(1*-1 + 1.27*-2 + 1.2*-0.5)/3 = -0.69 and -0.5*(0.8*-1.5 + 1*-0.25)/2 = 0.3625, J = their mean
    (LossParams(group_size=1, n_responses=2.0), (0.69 - 0.3625) / 2),
    # one group of both rows (G = 2): 1.345 over its 5 tokens, the same as the token mean
    (LossParams(group_size=2, n_responses=2.0), 1.345 / 5),
    (LossParams(group_size=1, n_responses=2.0, cispo_norm="token_mean"), 1.345 / 5),
])
def test_cispo_normalisers_hand_values(p, expected):
    close(run("cispo", p).loss, expected)


def test_cispo_group_normaliser_gradient():
    # -(1/groups)(1/N_g) clip(r) A: row 0 -(1/2)(1/3)(0.5)*[1, 1.27, 1.2]; row 1 -(1/2)(1/2)(-0.5)*[0.8, 1]
    close(grads("cispo", LossParams(group_size=1, n_responses=2.0)),
          [[-1 / 12, -1.27 / 12, -1.2 / 12], [0.1, 0.125, 0.0]])


@pytest.mark.parametrize("seed", range(4))
def test_invariance_tis_decoupled_gradient_is_minirl_with_the_cap_on_the_discrepancy(seed):
    # M min(d, C) r A both ways (PPO's r carries the gradient; MiniRL's weight is the detached r min(d, C))
    batch = random_batch(seed, staleness=0.3, discrepancy=1.5)     # some d above C, some tokens clipped
    p = LossParams(is_cap_on="discrepancy")
    tis = run("tis_decoupled", p, batch)
    ref = run("minirl", p, batch)
    assert tis.stats["is/truncated_frac"] > 0 and tis.stats["clip/frac"] > 0
    close(torch.autograd.grad(tis.loss, batch[0])[0], torch.autograd.grad(ref.loss, batch[0])[0])


def test_invariance_icepop_equals_tis_decoupled_when_every_ratio_is_in_the_band():
    batch = random_batch(6, staleness=0.3, discrepancy=0.1)     # |log d| < log 2: inside [0.5, 5], below C
    ice, tis = run("icepop", LossParams(), batch), run("tis_decoupled", LossParams(), batch)
    close(ice.stats["is/masked_frac"], 0.0)
    close(ice.loss, tis.loss)
    close(torch.autograd.grad(ice.loss, batch[0])[0], torch.autograd.grad(tis.loss, batch[0])[0])


def test_invariance_gspo_on_policy_gradient_is_grpo_on_policy_gradient():
    # r = s = 1: both are -(1/n) sum_i A_i (1/|y_i|) sum_t grad log pi
    new, _, behavior, adv, mask = random_batch(7, discrepancy=0.5)
    batch = (new, new.detach().clone(), behavior, adv, mask)
    g, r = run("gspo", LossParams(), batch), run("grpo", LossParams(), batch)
    close(g.loss, r.loss), close(g.stats["clip/frac"], 0.0)
    close(torch.autograd.grad(g.loss, new)[0], torch.autograd.grad(r.loss, new)[0])


@pytest.mark.parametrize(("name", "adv"), [("icepop", -1.0), ("seq_mis", -1.0), ("gspo", 0.0)])
def test_a_zeroed_token_with_an_overflowing_ratio_has_zero_gradient_not_nan(name, adv):
    # log r = 100 overflows exp in fp32. icepop / seq_mis: d = e^10 is outside the band, so w = 0 (A < 0
    # keeps the token under M); gspo: A = 0 keeps the response. A zeroed term must not backpropagate inf * 0.
    f = torch.float32
    new = torch.tensor([[-1.0, -1.0]], dtype=f, requires_grad=True)
    old = new.detach() - 100.0
    behavior = old - 10.0
    out = get_objective(name).loss(new, old, behavior, torch.tensor([adv], dtype=f),
                                   torch.ones(1, 2, dtype=torch.bool), LossParams(n_responses=1.0))
    (g,) = torch.autograd.grad(out.loss, new)
    assert torch.isfinite(out.loss) and torch.equal(g, torch.zeros_like(g))


# ------------------------------------------------------------------------------------ invariances


def random_batch(seed, staleness=0.0, discrepancy=0.0, b=4, t=6):
    gen = torch.Generator().manual_seed(seed)
    new = -torch.rand(b, t, dtype=D, generator=gen) * 3
    old = new + staleness * torch.randn(b, t, dtype=D, generator=gen)
    behavior = old + discrepancy * torch.randn(b, t, dtype=D, generator=gen)
    adv = torch.randn(b, dtype=D, generator=gen)
    mask = torch.rand(b, t, generator=gen) < 0.8
    return new.requires_grad_(), old, behavior, adv, mask


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_invariance_on_policy_ratio_one_clip_zero(name):
    new, _, behavior, adv, mask = random_batch(1, discrepancy=1.0)
    s = get_objective(name).loss(new, new.detach().clone(), behavior, adv, mask, LossParams()).stats
    close(s["ratio/staleness_mean"], 1.0), close(s["clip/frac"], 0.0)
    close(s["kl/staleness_k1"], 0.0), close(s["kl/staleness_k3"], 0.0)


def test_invariance_engines_agree_is_weight_one():
    new, _, _, adv, mask = random_batch(2)
    same = (new, new.detach().clone(), new.detach().clone(), adv, mask)
    s = run("minirl", LossParams(), same).stats
    close(s["is/weight_mean"], 1.0), close(s["is/weight_max"], 1.0), close(s["is/truncated_frac"], 0.0)
    close(s["ratio/discrepancy_mean"], 1.0)
    close(run("minirl", LossParams(), same).loss, run("minirl_no_is", LossParams(), same).loss)


def test_invariance_no_clip_equals_minirl_when_nothing_is_masked():
    batch = random_batch(3, staleness=0.05, discrepancy=0.5)      # |log r| small: no token leaves the range
    out = run("minirl", LossParams(), batch)
    close(out.stats["clip/frac"], 0.0)
    close(out.loss, run("minirl_no_clip", LossParams(), batch).loss)


def test_invariance_cap_full_equals_discrepancy_on_policy():
    new, _, behavior, adv, mask = random_batch(4, discrepancy=2.0)  # some pi_old/mu_old above C = 5
    batch = (new, new.detach().clone(), behavior, adv, mask)
    full = run("minirl", LossParams(is_cap_on="full"), batch)
    disc = run("minirl", LossParams(is_cap_on="discrepancy"), batch)
    assert full.stats["is/truncated_frac"] > 0
    close(full.loss, disc.loss)
    close(full.stats["is/weight_mean"], disc.stats["is/weight_mean"])


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_invariance_micro_batching_every_objective(name):
    # with the mini-batch counts in LossParams, summing micro-batch losses gives the mini-batch loss/grad
    new, old, behavior, adv, mask = random_batch(5, staleness=0.3, discrepancy=0.5, b=6)
    p = LossParams(n_responses=6.0, n_tokens=float(mask.sum()), group_size=2)   # splits on group bounds
    fn = get_objective(name).loss
    full = fn(new, old, behavior, adv, mask, p).loss
    parts = sum(fn(new[s], old[s], behavior[s], adv[s], mask[s], p).loss for s in (slice(0, 2), slice(2, 6)))
    close(parts, full)
    close(torch.autograd.grad(parts, new)[0], torch.autograd.grad(full, new)[0])


# ------------------------------------------------------------------------------------ advantages

REWARDS = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], dtype=D)   # 3 groups of G = 4


def test_group_mean_hand_values():
    # means 0.5, 1, 0.25
    close(group_mean(REWARDS, 4), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75])


def test_group_zscore_hand_values():
    # unbiased std: group 0 sum sq dev 1 -> sqrt(1/3); group 2 sum sq dev 0.75 -> sqrt(0.25) = 0.5
    s0, eps = math.sqrt(1 / 3), 1e-6
    expected = [0.5 / (s0 + eps), -0.5 / (s0 + eps), -0.5 / (s0 + eps), 0.5 / (s0 + eps), 0, 0, 0, 0,
                *[-0.25 / (0.5 + eps)] * 3, 0.75 / (0.5 + eps)]
    close(group_zscore(REWARDS, 4), expected)


def test_constant_groups_give_exact_zero_advantages():
    rewards = torch.tensor([0.1] * 3 + [0.0] * 3 + [1] * 3, dtype=D)    # mean of 3 x 0.1 is off by 1 ulp
    for fn in ADVANTAGES.values():
        out = fn(rewards, 3)
        assert torch.equal(out, torch.zeros(9, dtype=D))
    assert torch.equal(group_mean(torch.tensor([True, False]), 2), torch.tensor([0.5, -0.5]))
    with pytest.raises(ValueError):
        group_mean(REWARDS, 5)
    with pytest.raises(ValueError):
        group_zscore(REWARDS[:3], 1)


# ------------------------------------------------------------------------------------ registry


def test_registry_matches_config_choices():
    fields = {f.name: f for f in config.dataclasses.fields(config.LossConfig)}
    assert set(OBJECTIVES) == set(fields["objective"].metadata["choices"])
    assert set(IS_WEIGHTS) == set(fields["is_cap_on"].metadata["choices"])
    assert set(SEQ_RATIOS) == set(fields["seq_ratio"].metadata["choices"])
    assert set(CISPO_NORMS) == set(fields["cispo_norm"].metadata["choices"])
    assert all(o.advantage in ADVANTAGES for o in OBJECTIVES.values())
    assert OBJECTIVES["grpo"].advantage == "group_zscore" and OBJECTIVES["minirl"].loss is minirl
    assert OBJECTIVES["cispo"].loss is cispo and OBJECTIVES["gspo"].advantage == "group_zscore"
    assert [OBJECTIVES[k].loss for k in ("tis_decoupled", "icepop", "seq_mis", "seq_tis", "gspo")] == [
        tis_decoupled, icepop, seq_mis, seq_tis, gspo]
    p = LossParams.from_config(config.LossConfig(is_cap_on="discrepancy"), n_responses=8)
    assert (p.is_cap, p.is_cap_on, p.eps_low, p.eps_high, p.n_responses) == (5.0, "discrepancy", 0.2, 0.27, 8)
    # every LossConfig field reaches LossParams under its own name, with the same default
    cfg = config.LossConfig()
    p = LossParams.from_config(cfg, group_size=4)
    assert p.group_size == 4 and all(getattr(p, f) == getattr(cfg, f) for f in fields if f != "objective")
    assert all(getattr(LossParams(), f) == getattr(cfg, f) for f in fields if f != "objective")
    with pytest.raises(KeyError, match="minirl"):
        get_objective("ppo")
    with pytest.raises(KeyError, match="discrepancy"):
        LossParams(is_cap_on="both")
    with pytest.raises(KeyError, match="geometric"):
        LossParams(seq_ratio="arithmetic")
    with pytest.raises(KeyError, match="token_mean"):
        LossParams(cispo_norm="seq")


@pytest.mark.parametrize("cap_on", ["full", "discrepancy"])
def test_is_weight_is_finite_where_the_two_factors_overflow_and_underflow_separately(cap_on):
    # log r = 90 (pi_theta/pi_old = e^90 overflows fp32), log d = -110 (pi_old/mu_old = e^-110 underflows):
    # full: w = exp(min(90 - 110, log 5)) = e^-20;  discrepancy: exp(min(-110, log 5) + 90) = e^-20.
    # The product of the two exponentials is inf * 0 = NaN in fp32.
    f = torch.float32
    assert torch.isnan(torch.tensor(90.0, dtype=f).exp() * torch.tensor(-110.0, dtype=f).exp())
    new = torch.tensor([[-1.0]], dtype=f, requires_grad=True)
    old = new.detach() - 90.0
    behavior = old + 110.0
    out = minirl(new, old, behavior, torch.tensor([1.0], dtype=f), torch.ones(1, 1, dtype=torch.bool),
                 LossParams(is_cap_on=cap_on, eps_high=1e30, n_responses=1.0))
    out.loss.backward()
    expected = math.exp(-20.0)
    torch.testing.assert_close(out.stats["is/weight_mean"], torch.tensor(expected, dtype=f))
    torch.testing.assert_close(out.loss, torch.tensor(expected * 1.0, dtype=f))   # -w * A * logp_new
    torch.testing.assert_close(new.grad, torch.tensor([[-expected]], dtype=f))    # d(-w A logp)/dlogp
    assert out.stats["is/truncated_frac"] == 0
