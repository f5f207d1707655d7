"""Invariance tests of the speed-ups: a faster path must compute what the plain one does, bitwise.

Nothing here is timed (`make bench` measures speed); each test pins a fast path to its reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rl_core.config import ModelConfig
from rl_core.policy.model import Experts, MoEPolicy, hf_config
from rl_core.training.scoring import token_logprobs


def looped_experts(self: Experts, x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The reference: one F.linear per expert on its slice of the stacked weights (autocast casts each)."""
    k, flat = ids.shape[1], ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=self.gate_proj.shape[0]).tolist()
    token_of, gate_of = order // k, gates.reshape(-1)[order]
    out, start = torch.zeros_like(x), 0
    for e, n in enumerate(counts):
        idx = token_of[start:start + n]
        xe = x.index_select(0, idx)
        h = F.silu(F.linear(xe, self.gate_proj[e])) * F.linear(xe, self.up_proj[e])
        y = F.linear(h, self.down_proj[e]) * gate_of[start:start + n, None].to(h.dtype)
        out.index_add_(0, idx, y.to(out.dtype))
        start += n
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_grouped_experts_equal_the_per_expert_loop_bitwise_forward_and_gradients(monkeypatch, precision):
    cfg = hf_config(ModelConfig(init_std=0.1), vocab_size=24, eos_token_id=1, pad_token_id=0)
    model = MoEPolicy(cfg, seed=0)
    ids = torch.randint(3, 24, (16, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:4, :6] = 0  # left padding on some rows

    def run():
        model.zero_grad(set_to_none=True)
        out = token_logprobs(model, ids, mask, precision=precision)
        (out.logp * 0.01).sum().backward()
        return out.logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_logp, fast_grads = run()
    monkeypatch.setattr(Experts, "forward", looped_experts)
    ref_logp, ref_grads = run()
    assert torch.equal(fast_logp, ref_logp)
    assert all(torch.equal(fast_grads[n], ref_grads[n]) for n in ref_grads)


def plain_flash_bf16(q, k, v, allowed, scale):
    """The reference expression (autograd through every op): rounding passed straight through, max held."""
    r = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    g = q.shape[1] // k.shape[1]
    q, k, v = r(q.float()), r(k.float()), r(v.float())
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    p = (s - s.amax(-1, keepdim=True).detach()).exp()
    return ((r(p) @ v) / p.sum(-1, keepdim=True)).to(torch.bfloat16)


def test_flash_bf16_function_forward_is_the_plain_expression_bitwise_and_its_gradient_agrees():
    from rl_core.policy.attention import FlashBF16
    from rl_core.policy.model import attention_allowed

    gen = torch.Generator().manual_seed(0)
    B, H, Hkv, T, D = 3, 4, 2, 9, 8
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    allowed = attention_allowed(mask)
    q, k, v = (torch.randn(B, h, T, D, generator=gen, requires_grad=True) for h in (H, Hkv, Hkv))
    w = torch.randn(B, H, T, D, generator=gen).to(torch.bfloat16).float()  # a bf16 output's gradient is bf16

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, allowed, D ** -0.5)
        (out.float() * w).sum().backward()
        return out, [t.grad.clone() for t in (q, k, v)]

    fast, fast_grads = run(FlashBF16.apply)
    ref, ref_grads = run(plain_flash_bf16)
    assert fast.dtype == torch.bfloat16 and torch.equal(fast, ref)
    # The same formula and bf16 roundings in another fp32 order: bitwise here (at the mini scale an element's
    # bf16 rounding flips now and then: within one bf16 ulp).
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-6)
        assert (a == b).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_table_decode_is_torchs_cast_bitwise_for_every_bit_pattern(dtype):
    from rl_core.rollout.formats import FP8, fp8_to

    every = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).reshape(16, 16)
    cast, table = every.to(dtype), fp8_to(every, dtype)
    assert table.dtype == dtype and table.shape == (16, 16)
    assert torch.equal(cast.isnan(), table.isnan())
    assert torch.equal(cast[~cast.isnan()], table[~table.isnan()])
    sliced = every[:, ::2]  # a non-contiguous view decodes too
    assert torch.equal(fp8_to(sliced, dtype).nan_to_num(), sliced.to(dtype).nan_to_num())


def plain_w8a8(layer, x: torch.Tensor, offs: torch.Tensor | None = None) -> torch.Tensor:
    """The reference W8A8 product: per 128-wide input block, the bf16 partial sum widened, times the
    activation scale, times the weight scale, the blocks summed from 0; one expression per op."""
    from rl_core.rollout.formats import fp8_act_quant

    xq, sx = fp8_act_quant(x, layer.block)
    expert = None if offs is None else torch.bucketize(torch.arange(x.shape[0]), offs.long(), right=True)
    out = 0
    for g, (cols, wq, wq_t, row_scale) in enumerate(layer.parts):
        if offs is None:
            part = F.linear(xq[:, cols], wq).float() * sx[:, g, None] * row_scale
        else:
            part = F.grouped_mm(xq[:, cols].contiguous(), wq_t, offs=offs).float() * sx[:, g, None] \
                * row_scale[expert]
        out = out + part
    return out.to(torch.bfloat16)


@pytest.mark.parametrize("n_in", [128, 96, 256, 320])  # one block, a padded block, two, a padded third
def test_w8a8_fast_products_are_the_plain_expression_bitwise(n_in):
    from rl_core.rollout.formats import W8A8Block

    gen = torch.Generator().manual_seed(n_in)
    x = (torch.randn(40, n_in, generator=gen) * 3).to(torch.bfloat16)
    x[3] = 0  # an all-zero token: its scale is clamped, not 0
    dense = W8A8Block(torch.randn(200, n_in, generator=gen) * 0.05)
    assert torch.equal(dense.linear(x), plain_w8a8(dense, x))
    experts = W8A8Block(torch.randn(4, 136, n_in, generator=gen) * 0.05)
    offs = torch.tensor([7, 0, 21, 12]).cumsum(0).to(torch.int32)  # an expert without rows
    assert torch.equal(experts.grouped(x, offs), plain_w8a8(experts, x, offs))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_buckets_agree_with_one_padded_block_forward_and_gradients(monkeypatch, precision):
    """Rows bucketed by length (rl_core.policy.model.Layout) see the same keys in the same order as in one
    block padded to the longest row: scores agree to summation order, routing exactly, gradients closely."""
    from rl_core.policy.model import Layout

    cfg = hf_config(ModelConfig(init_std=0.1), vocab_size=24, eos_token_id=1, pad_token_id=0)
    model = MoEPolicy(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 24, (12, 30), generator=gen)
    mask = torch.zeros_like(ids)
    for b, (pad, n) in enumerate(zip(torch.randint(0, 6, (12,), generator=gen).tolist(),
                                     torch.randint(3, 24, (12,), generator=gen).tolist(), strict=True)):
        mask[b, pad:pad + n] = 1  # left padding, then a response of its own length, then right padding
    mask[5] = 0  # a row without tokens

    def run(buckets: int):
        monkeypatch.setattr(Layout.__init__, "__defaults__", (buckets,))
        assert len(Layout(mask).buckets) == min(buckets, 11)
        model.zero_grad(set_to_none=True)
        out = token_logprobs(model, ids, mask, precision=precision)
        (out.logp * 0.01).sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    (one, one_grads), (four, four_grads) = run(1), run(4)
    tol = {"fp32": 1e-5, "bf16": 2e-2}[precision]
    torch.testing.assert_close(four.logp, one.logp, rtol=tol, atol=tol)
    assert torch.equal(four.routing, one.routing)
    for n in one_grads:
        scale = float(one_grads[n].abs().max())  # small entries are sums that cancel: tolerance on the scale
        torch.testing.assert_close(four_grads[n], one_grads[n], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("precision", ["fp32", "fp8"])
def test_generate_under_inference_mode_is_generate_under_no_grad_bitwise(precision):
    from rl_core.rollout.embedded import EmbeddedRolloutEngine

    cfg = hf_config(ModelConfig(init_std=0.1), vocab_size=24, eos_token_id=1, pad_token_id=0)
    engine = EmbeddedRolloutEngine.from_model(MoEPolicy(cfg, seed=0), precision)
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]] * 4
    fast = engine.generate(prompts, 12, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = engine._generate(prompts, 12, 1.0, torch.Generator().manual_seed(0))
    for name in ("input_ids", "attention_mask", "response_mask", "logp_behavior", "routing"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
        assert not getattr(fast, name).is_inference()  # usable in autograd, writable in place
    assert fast.finish_reason == plain.finish_reason
