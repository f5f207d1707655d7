"""Number formats of the two engines: the BF16 training engine (rl_core.training.scoring) and the rollout
engine's quantised formats (rl_core.rollout.formats), each checked against what its number format explains.

Models are random inits of the default tiny architecture with init_std = 0.1 (as in test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from rl_core.config import ModelConfig
from rl_core.policy.model import MoEPolicy, hf_config
from rl_core.rollout.formats import (
    FP8,
    W8A8Block,
    fp8_act_quant,
    fp8_block_dequant,
    fp8_block_quant,
    fp8_kv,
    mxfp4_dequant,
    mxfp4_quant,
)
from rl_core.training.scoring import token_logprobs

torch.set_num_threads(1)
V = 24


def tiny(seed: int = 3) -> MoEPolicy:
    cfg = hf_config(ModelConfig(init_std=0.1), V, eos_token_id=1, pad_token_id=0)
    return MoEPolicy(cfg, seed=seed).eval()


def batch(B: int = 16, T: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _bf16(t):
    return t.to(torch.bfloat16).float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


class EmulateBF16Matmuls(TorchFunctionMode):
    """A forward without autocast in which every matmul op (linear, attention) takes bf16-rounded inputs,
    computes in fp32 and returns bf16, as autocast's bf16 kernels do (fp32 accumulation, bf16 output). Every
    other op then sees the same dtypes as under autocast, so only the matmul kernels themselves differ
    (summation order, rounding ties)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunction():
            if func is F.linear:
                return F.linear(*map(_bf16, args)).to(torch.bfloat16)
            if func is F.scaled_dot_product_attention:
                return _flash_attention_bf16(*args, **kwargs)
            return func(*args, **kwargs)


def _flash_attention_bf16(q, k, v, attn_mask, scale, enable_gqa):
    """What torch's CPU flash-attention kernel computes for bf16 inputs: fp32 scores of bf16 q and k, the
    unnormalised probabilities exp(s - max) rounded to bf16 for the product with v, the normaliser in fp32."""
    q, k, v = map(_bf16, (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~attn_mask, float("-inf"))
    p = (s - s.amax(-1, keepdim=True)).exp()
    return ((_bf16(p) @ v) / p.sum(-1, keepdim=True)).to(torch.bfloat16)


def test_bf16_training_logprobs_differ_from_fp32_by_bf16_rounding_and_no_more():
    """The bf16 engine's distance from fp32 is the size of bf16 rounding noise, measured by an emulation that
    rounds exactly the matmul inputs and outputs to bf16 and nothing else.

    Two bf16 computations that differ in any detail (here: the attention kernel's blockwise softmax) round
    different elements and land about as far from each other as from fp32, so the test compares sizes:
    |bf16 - fp32| / |emulated - fp32| is ~1 (0.98-1.04 measured on 0.02-0.1 init scales). Rounding to fp16
    (2^-11) would give ~1/8, to an fp8 format ~16, and a knob that does nothing 0."""
    model, (ids, mask) = tiny(), batch()
    fp32 = token_logprobs(model, ids, mask).logp
    bf16 = token_logprobs(model, ids, mask, precision="bf16").logp
    with EmulateBF16Matmuls():
        emulated = token_logprobs(model, ids, mask).logp
    real = mask[:, 1:].bool()
    gap = float((bf16 - fp32).detach()[:, 1:][real].abs().mean())
    explained = float((emulated - fp32).detach()[:, 1:][real].abs().mean())
    assert gap > 1e-3 and 0.7 < gap / explained < 1.4, (gap, explained)


def test_bf16_training_keeps_fp32_master_weights_gradients_and_log_probs():
    model, (ids, mask) = tiny(), batch(B=4)
    out = token_logprobs(model, ids, mask, precision="bf16", with_entropy=True)
    assert out.logp.dtype == torch.float32 and out.entropy.dtype == torch.float32
    out.logp.sum().backward()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.step()
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())


# ------------------------------------------------------------------------------ rollout formats


def test_block_fp8_with_one_block_covering_a_small_matrix_is_per_tensor_scaling():
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    q, scale = fp8_block_quant(w)
    per_tensor = w.abs().max() / 448.0
    assert scale.shape == (1, 1) and torch.equal(scale[0, 0], per_tensor)
    assert q.dtype == FP8 and torch.equal(q, (w / per_tensor).to(FP8))


def test_block_fp8_scales_each_128_block_by_its_own_amax_and_round_trips_e4m3_values():
    # A (256, 384) weight of 2 x 3 blocks, block (i, j) holding e4m3-representable values times 2^(i+j):
    # each block's amax is 448 * 2^(i+j), its scale 2^(i+j), and dequantising gives the values back exactly.
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(256, 384, generator=g).mul(100).clamp(-448, 448).to(FP8).float()
    grid[::128, ::128] = 448.0
    power = torch.tensor([[2.0 ** (i + j) for j in range(3)] for i in range(2)])
    w = grid * power.repeat_interleave(128, 0).repeat_interleave(128, 1)
    q, scale = fp8_block_quant(w)
    assert torch.equal(scale, power)
    assert torch.equal(fp8_block_dequant(q, scale), w)


def test_fp8_activations_get_one_scale_per_token_and_128_channels():
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2))
    xq, sx = fp8_act_quant(x)
    assert sx.shape == (3, 2)
    assert torch.equal(sx[:, 1], x[:, 128:].abs().amax(-1) / 448.0)
    assert torch.equal(xq.float(), (x.view(3, 2, 128) / sx[..., None]).to(FP8).float().view(3, 256))


def test_w8a8_linear_is_the_product_of_the_dequantised_activations_and_weights():
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(200, 256, generator=g), torch.randn(5, 256, generator=g)   # 2 input blocks, ragged out
    layer = W8A8Block(w)
    xq, sx = fp8_act_quant(x)
    x_deq = (xq.float().view(5, 2, 128) * sx[..., None]).view(5, 256)
    w_deq = fp8_block_dequant(layer.q, layer.scale)
    partial = [x_deq[:, b:b + 128] @ w_deq[:, b:b + 128].T for b in (0, 128)]
    exact = partial[0] + partial[1]
    # bf16 rounds each block's partial sum and the output, each by at most its unit roundoff 2^-8 (8
    # significant bits); the sum of the scaled partials in fp32 adds nothing visible at this scale.
    bound = 2 ** -8 * (partial[0].abs() + partial[1].abs() + exact.abs()) * 1.01
    assert ((layer.linear(x).float() - exact).abs() <= bound).all()
    assert not torch.allclose(layer.linear(x).float(), x @ w.T, rtol=1e-3)   # and it is really quantised


def test_mxfp4_hand_computed_block():
    # One block of 32: amax 12 -> e8m0 scale 2^(floor(log2 12) - 2) = 2 (e2m1's largest exponent is 2), so the
    # values are x / 2 rounded to e2m1 {0, 0.5, 1, 1.5, 2, 3, 4, 6} (ties to even), times 2:
    # 12 -> 6 -> 12; 5 -> 2.5 (tie between 2 and 3, even: 2) -> 4; 0.7 -> 0.35 -> 0.5 -> 1;
    # 7 -> 3.5 (tie between 3 and 4, even: 4) -> 8; -1.2 -> -0.6 -> -0.5 -> -1; 0.2 -> 0.1 -> 0 -> 0.
    x = torch.zeros(1, 32)
    x[0, :6] = torch.tensor([12.0, 5.0, 0.7, 7.0, -1.2, 0.2])
    data, scale = mxfp4_quant(x)
    assert data.dtype == torch.uint8 and data.shape == (1, 16)
    assert scale.dtype == torch.float8_e8m0fnu and scale.view(torch.uint8).item() == 127 + 1
    assert mxfp4_dequant(data, scale)[0, :6].tolist() == [12.0, 4.0, 1.0, 8.0, -1.0, 0.0]


def test_mxfp4_round_trips_exactly_representable_values():
    values = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    g = torch.Generator().manual_seed(4)
    sign = torch.where(torch.rand(4, 64, generator=g) < 0.5, -1.0, 1.0)
    x = values[torch.randint(0, 8, (4, 64), generator=g)] * sign
    x[:, ::32] = 6.0                                   # each block's amax is 6: scale 2^0
    x = x * torch.tensor([1.0, 0.25, 8.0, 2.0 ** -10])[:, None]          # a power of two per row
    assert torch.equal(mxfp4_dequant(*mxfp4_quant(x)), x)


def test_fp8_kv_cache_rounds_to_e4m3_with_scale_one():
    x = torch.tensor([1.0, 1.0625, 1.1, 0.001, 500.0])
    # e4m3 spacing at 1 is 2^-3: 1.0625 is a tie (even: 1.0), 1.1 -> 1.125; 0.001 is subnormal (step 2^-9,
    # 0.001 / 2^-9 = 0.512 -> 1 step = 0.001953125); 500 saturates at 448.
    assert fp8_kv(x).tolist() == [1.0, 1.0, 1.125, 2 ** -9, 448.0]
