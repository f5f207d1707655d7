"""Number formats of the two engines: the BF16 training engine (rl_core.engine) and the rollout engine's
quantised formats (rl_core.rollout.formats), each checked against what its number format explains.

Models are random inits of the default tiny architecture with init_std = 0.1 (as in test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from rl_core.config import ModelConfig
from rl_core.engine import token_logprobs
from rl_core.model import MoEPolicy, hf_config

torch.set_num_threads(1)
V = 24


def tiny(seed: int = 3) -> MoEPolicy:
    return MoEPolicy(hf_config(ModelConfig(init_std=0.1), V, eos_token_id=1, pad_token_id=0), seed=seed).eval()


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
    gap = float((bf16 - fp32)[:, 1:][real].abs().mean())
    explained = float((emulated - fp32)[:, 1:][real].abs().mean())
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
