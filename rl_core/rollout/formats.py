"""Number formats of the rollout engine, each a real format held as its real bits plus scales.

Named after what inference servers run (rl_core.config RolloutConfig.precision):

* ``fp8`` (W8A8, "fine-grained FP8", as Qwen's FP8 checkpoints are served by vLLM and transformers):
  e4m3 weights with one fp32 scale per 128 x 128 block (:func:`fp8_block_quant`), and activations
  quantised on the fly to e4m3 with one scale per token and 128 input channels (:func:`fp8_act_quant`).
  :class:`W8A8Block` multiplies them: per 128-wide input block, the e4m3 values (exact in bf16) go through
  a bf16 matmul with fp32 accumulation, and the partial sum is scaled by the activation and weight scales.
  One departure from a GPU kernel, which scales the fp32 accumulator: CPU bf16 matmuls return bf16, so
  each partial sum is rounded to bf16 once before scaling (unit roundoff 2^-8, 16x below the e4m3
  rounding of the inputs, 2^-4).
* ``fp8_w8a16``: e4m3 weights with one scale per output channel (:func:`fp8_channel_quant`), dequantised
  to bf16 once per weight sync; activations bf16 (vLLM's fp8 path on GPUs without fp8 tensor cores).
* ``mxfp4`` (W4A16, OCP Microscaling, as gpt-oss is served): e2m1 values with one e8m0 (power-of-two)
  scale per 32 consecutive input channels, from torchao's MX reference code
  (``torchao.prototype.mx_formats``); dequantised to bf16 (exactly: e2m1 times a power of two fits bf16).
* :func:`fp8_kv`: the e4m3 KV cache of vLLM's ``kv_cache_dtype=fp8`` (a per-tensor scale, 1.0 without
  calibrated scales).

Blocks are along (output, input) of a weight (..., out, in); a dimension that is not a multiple of the
block is padded with zeros for the amax, so a matrix smaller than one block gets one scale: per-tensor.
The block-FP8 quantisers are our own (torchao's run only as Triton kernels, on GPUs); the e4m3 rounding
itself is torch's float8_e4m3fn cast (round to nearest even, saturated at +-448 by the clamp).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from rl_core.policy.grouped import grouped_mm

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0   # largest finite e4m3
BLOCK = 128       # weight blocks BLOCK x BLOCK, activation groups 1 x BLOCK (Qwen FP8 / DeepSeek-V3)
MX_BLOCK = 32     # OCP MX: one e8m0 scale per 32 elements


def _pad_to(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    pad = -x.shape[dim] % multiple
    if not pad:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


#: The value of every e4m3 bit pattern (torch's own cast of the 256 bytes), for :func:`fp8_to`.
_E4M3_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()


#: The same table in bf16 (exact: every e4m3 value fits bf16), the activations' dtype, built once.
_E4M3_BF16 = _E4M3_VALUES.to(torch.bfloat16)


def fp8_to(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 -> ``dtype`` by table lookup: bitwise torch's cast, which is scalar code on the CPU (6x slower
    than this at a decode step's activations; it was half the time of an fp8 rollout)."""
    table = _E4M3_BF16 if dtype == torch.bfloat16 else _E4M3_VALUES
    table = table.to(device=q.device, dtype=dtype)  # a no-op for the prebuilt tables on the CPU
    return table.index_select(0, q.reshape(-1).view(torch.uint8).int()).view(q.shape)


# ------------------------------------------------------------------------------------ weights


def fp8_block_quant(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., out, in) -> e4m3 (..., out, in), fp32 scales amax/448 (..., out/block, in/block) rounded up."""
    *lead, n_out, n_in = w.shape
    padded = _pad_to(_pad_to(w.float(), -1, block), -2, block)
    bo, bi = padded.shape[-2] // block, padded.shape[-1] // block
    blocks = padded.reshape(*lead, bo, block, bi, block)
    scale = blocks.abs().amax(dim=(-3, -1)).clamp(min=1e-12) / FP8_MAX             # (..., bo, bi)
    q = _e4m3(blocks, scale[..., :, None, :, None]).reshape(padded.shape)
    return q[..., :n_out, :n_in], scale


def block_scales_full(scale: torch.Tensor, shape: torch.Size, block: int = BLOCK) -> torch.Tensor:
    """Block scales (..., bo, bi) -> one scale per element (..., out, in)."""
    full = scale.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return full[..., :shape[-2], :shape[-1]]


def fp8_block_dequant(q: torch.Tensor, scale: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    return q.float() * block_scales_full(scale, q.shape, block)


def fp8_channel_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., out, in) -> e4m3 (..., out, in), fp32 scales (..., out, 1): one per output channel."""
    scale = w.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return _e4m3(w.float(), scale), scale


def _mx():
    """torchao's MX reference code, imported on first use (1 s; its CUDA kernels' load errors silenced)."""
    for name in ("torchao", "torch.utils._pytree"):  # CUDA kernels absent; its pytree registration notices
        logging.getLogger(name).setLevel(logging.ERROR)
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    return to_mx, to_dtype


def mxfp4_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., out, in) -> packed e2m1 pairs (uint8, (..., out, in/2)), e8m0 scales (..., out, in/32)."""
    if w.shape[-1] % MX_BLOCK:
        raise ValueError(f"mxfp4 needs the input dimension to be a multiple of {MX_BLOCK}, got {w.shape[-1]}")
    to_mx, _ = _mx()
    flat = w.float().reshape(-1, w.shape[-1])
    scale, data = to_mx(flat.contiguous(), torch.float4_e2m1fn_x2, MX_BLOCK)
    return data.reshape(*w.shape[:-1], -1), scale.reshape(*w.shape[:-1], -1)


def mxfp4_dequant(data: torch.Tensor, scale: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    _, to_dtype = _mx()
    flat = to_dtype(data.reshape(-1, data.shape[-1]), scale.reshape(-1, scale.shape[-1]).view(-1),
                    torch.float4_e2m1fn_x2, MX_BLOCK, dtype)
    return flat.reshape(*data.shape[:-1], 2 * data.shape[-1])


# -------------------------------------------------------------------------------- activations


def fp8_act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, in) -> e4m3 values held as bf16 (exact) (N, in), fp32 scales per token/group (N, in/block)."""
    n, n_in = x.shape
    groups = _pad_to(x.float(), -1, block).view(n, -1, block)
    scale = groups.abs().amax(-1).clamp_(min=1e-12).div_(FP8_MAX)                 # (N, G)
    q = (groups / scale[..., None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8).view(n, -1)  # _e4m3, in place
    return fp8_to(q if n_in == q.shape[1] else q[:, :n_in], torch.bfloat16), scale


def fp8_kv(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Round to the e4m3 KV cache and back (values kept in x's dtype)."""
    return fp8_to((x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), x.dtype) * scale


# ------------------------------------------------------------------------------- held weights


class Dense:
    """A weight held in the compute dtype: bf16/fp32, or a format dequantised once per sync."""

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.w_t = w.transpose(-1, -2)  # grouped_mm takes (E, in, out): a view, no copy

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        return grouped_mm(x, self.w_t, offs=offs)


class W8A8Block:
    """e4m3 weight (..., out, in) with 128 x 128 block scales; inputs quantised per token and 128-group."""

    def __init__(self, w: torch.Tensor | None, block: int = BLOCK,
                 quantised: tuple[torch.Tensor, torch.Tensor] | None = None):
        """From a weight ``w`` (quantised here), or from ``quantised`` = (e4m3 values, block scales) as
        stored in a block-FP8 checkpoint (rl_core.rollout.fp8_checkpoint; ``w`` None)."""
        self.q, self.scale = fp8_block_quant(w, block) if quantised is None else quantised
        self.block = block
        self.n_in = self.q.shape[-1]
        n_out = self.q.shape[-2]
        qb = self.q.to(torch.bfloat16)                                    # e4m3 values, exact in bf16
        # Per input block b: the weight's values and its per-output-row scales (..., out).
        self.parts = []
        for b in range(0, self.n_in, block):
            row_scale = self.scale[..., b // block].repeat_interleave(block, dim=-1)[..., :n_out]
            part = qb[..., b:b + block]
            self.parts.append((slice(b, b + block), part, part.transpose(-1, -2), row_scale))

    # Both products below: a block's bf16 partial sum times the fp32 activation scale promotes to fp32
    # (the bf16 value widened exactly, as .float() would), then the weight scale in place, the blocks'
    # fp32 sums added in block order: the same roundings as the plain expression, with fewer passes.

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) bf16."""
        lead = x.shape[:-1]
        xq, sx = fp8_act_quant(x.reshape(-1, self.n_in), self.block)
        out = None
        for g, (cols, wq, _, row_scale) in enumerate(self.parts):
            part = torch.mul(F.linear(xq[:, cols], wq), sx[:, g, None]).mul_(row_scale)
            out = part if out is None else out.add_(part)
        return out.to(torch.bfloat16).view(*lead, -1)

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x (N, in) rows sorted by expert (offs: cumulative row counts) -> (N, out) bf16."""
        xq, sx = fp8_act_quant(x, self.block)
        expert = torch.bucketize(torch.arange(x.shape[0]), offs.long(), right=True)  # (N,) expert of a row
        out = None
        for g, (cols, _, wq_t, row_scale) in enumerate(self.parts):
            part = grouped_mm(xq[:, cols].contiguous(), wq_t, offs=offs)
            part = torch.mul(part, sx[:, g, None]).mul_(row_scale.index_select(0, expert))  # 2x [expert]
            out = part if out is None else out.add_(part)
        return out.to(torch.bfloat16)


def held(w: torch.Tensor, fmt: str, dtype: torch.dtype):
    """The compute copy of a quantisable weight (attention projections, experts) in format ``fmt``."""
    w = w.detach().float()
    if fmt == "fp8":
        return W8A8Block(w)
    if fmt == "fp8_w8a16":
        q, scale = fp8_channel_quant(w)
        return Dense((q.float() * scale).to(dtype))
    if fmt == "mxfp4":
        return Dense(mxfp4_dequant(*mxfp4_quant(w), dtype=dtype))
    return Dense(w.to(dtype, copy=True))


__all__ = ["FP8", "FP8_MAX", "BLOCK", "MX_BLOCK", "fp8_block_quant", "fp8_block_dequant",
           "block_scales_full", "fp8_channel_quant", "fp8_act_quant", "fp8_kv", "mxfp4_quant",
           "mxfp4_dequant", "Dense", "W8A8Block", "held"]
