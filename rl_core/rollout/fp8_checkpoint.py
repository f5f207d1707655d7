"""The ``fp8`` rollout format as a published checkpoint: block-scaled FP8, the format of Qwen's own FP8
releases, which vLLM serves (its ``fp8`` quantisation method reading ``quantization_config`` from
config.json; the GPU build's block-FP8 linear and fused-MoE layers).

    config.json       our config plus quantization_config = QUANTIZATION_CONFIG (below)
    model.safetensors hub layout; each quantised weight ``....weight`` is float8_e4m3fn (out, in) with
                      ``....weight_scale_inv`` float32 (ceil(out/128), ceil(in/128)) beside it, one scale per
                      128 x 128 block, dequantised as ``w = w_fp8 * weight_scale_inv`` block by block (the
                      name
                      is DeepSeek-V3's: the inverse of the quantiser's multiplier); every other tensor bf16

Quantised: the attention projections (q, k, v, o) and every expert's gate, up and down projections, the
weights rl_core.rollout.formats quantises for ``fp8`` (the router, embeddings, norms and lm_head stay bf16).
Activations are not in the file: ``activation_scheme: dynamic`` quantises them per token and 128 channels at
run time, as rl_core.rollout.formats.fp8_act_quant does.

Why every quantised width must be a multiple of 128 (rl_core.orchestration.capabilities.block_fp8_problems):
vLLM fuses q|k|v and
gate|up into one linear each and needs each fused part's output width (and each input width) to be a whole
number of 128-blocks; a width that is not is refused by vLLM's block-FP8 layers (or, through other paths,
served with a layer left unquantised). The embedded engine quantises the FUSED matrices, so with widths
that are not multiples of 128 its blocks would straddle q|k|v, a different set of scales from the file's.
With whole blocks the two agree: the file's blocks, concatenated, are the fused matrix's blocks, so the
embedded engine built from the file (:func:`read_fp8_checkpoint`) holds bitwise the weights and scales it
quantises in memory (tests/test_fp8_checkpoint.py). A shape that does not fit is refused, saying which
weight and why, never written with some layers left in bf16.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rl_core.orchestration.capabilities import block_fp8_problems, block_fp8_refusal
from rl_core.policy.model import config_value, from_hub_layout, to_hub_layout
from rl_core.rollout.formats import BLOCK, FP8, fp8_block_quant

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [BLOCK, BLOCK]}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERTS = ("gate_proj", "up_proj", "down_proj")
SCALE = "weight_scale_inv"


@dataclass(frozen=True)
class BlockFP8:
    """A block-quantised weight: e4m3 values q (..., out, in) and fp32 block scales (..., out/128, in/128)."""

    q: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


def quantised(name: str) -> bool:
    """Whether a hub-layout tensor is one the format quantises."""
    parts = name.split(".")
    return parts[-1] == "weight" and len(parts) >= 3 and (
        (parts[-3] == "self_attn" and parts[-2] in ATTENTION) or
        (len(parts) >= 4 and parts[-4] == "experts" and parts[-2] in EXPERTS))


def write_fp8_checkpoint(hf_cfg: dict, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """config.json + model.safetensors in the block-FP8 format (module docstring) from a trainer (stacked)
    or hub-layout state dict; ValueError (rl_core.orchestration.capabilities.block_fp8_refusal) for a shape
    that does not fit, before writing."""
    if (why := block_fp8_refusal(hf_cfg)) is not None:
        raise ValueError(why)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in to_hub_layout(from_hub_layout(dict(state_dict))).items():
        t = t.detach().to("cpu")
        if quantised(name):
            q, scale = fp8_block_quant(t.float())
            tensors[name] = q.contiguous()
            tensors[name[: -len("weight")] + SCALE] = scale.contiguous()
        else:
            tensors[name] = t.to(torch.bfloat16).contiguous()
    if hf_cfg.get("tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    config = {**hf_cfg, "torch_dtype": "bfloat16", "quantization_config": dict(QUANTIZATION_CONFIG)}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def read_fp8_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(config without quantization_config, state dict in our stacked layout) of a block-FP8 checkpoint:
    each quantised weight a :class:`BlockFP8` (experts stacked (E, out, in) with scales (E, out/128, in/128)),
    the rest bf16 tensors. What rl_core.rollout.embedded.EmbeddedRolloutEngine(precision="fp8") takes."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    qc = config.pop("quantization_config", None)
    if qc != QUANTIZATION_CONFIG:
        raise ValueError(f"{path}/config.json: quantization_config {qc!r} is not the block-FP8 format "
                         f"{QUANTIZATION_CONFIG!r}")
    raw = load_file(str(path / "model.safetensors"))
    plain = {k: v for k, v in raw.items() if not k.endswith(SCALE) and not quantised(k)}
    if config.get("tie_word_embeddings", False) and "lm_head.weight" not in plain:
        plain["lm_head.weight"] = plain["model.embed_tokens.weight"]
    q = {k: v for k, v in raw.items() if quantised(k)}
    if any(v.dtype != FP8 for v in q.values()):
        raise ValueError(f"{path}: a quantised weight is not float8_e4m3fn")
    stacked_q = from_hub_layout(q)
    stacked_s = from_hub_layout({k: raw[k[: -len("weight")] + SCALE] for k in q})
    state = {**plain, **{k: BlockFP8(stacked_q[k], stacked_s[k]) for k in stacked_q}}
    config_value(config, "num_experts")  # a config we can read
    return config, state


def cat_out(parts: list) -> torch.Tensor | BlockFP8:
    """Concatenate weights along the output dimension (-2): tensors, or BlockFP8 of whole 128-row blocks
    (their scales' block rows concatenate the same way)."""
    if not isinstance(parts[0], BlockFP8):
        return torch.cat(parts, dim=-2)
    for p in parts[:-1]:
        if p.q.shape[-2] % BLOCK:
            raise ValueError(f"a block-FP8 part of {p.q.shape[-2]} rows is not whole {BLOCK}-row blocks")
    return BlockFP8(torch.cat([p.q for p in parts], dim=-2), torch.cat([p.scale for p in parts], dim=-2))


class CheckpointSynced:
    """A rollout engine whose weights arrive through the block-FP8 checkpoint (rollout.weight_sync
    = checkpoint):
    each sync writes it (into ``work``, default a fresh temporary folder) and loads the engine from the
    file. ``make(config, state_dict)`` builds the engine (the embedded one at fp8)."""

    def __init__(self, make, hf_cfg: dict, state_dict: dict[str, torch.Tensor],
                 work: str | Path | None = None):
        import tempfile

        self.hf_cfg = dict(hf_cfg)
        self.dir = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="rl-fp8-checkpoint-"))
        config, state = read_fp8_checkpoint(write_fp8_checkpoint(self.hf_cfg, state_dict, self.dir))
        self.engine = make(config, state)
        self.capabilities = self.engine.capabilities

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        _, state = read_fp8_checkpoint(write_fp8_checkpoint(self.hf_cfg, state_dict, self.dir))
        self.engine.sync_weights(state)

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)


__all__ = ["QUANTIZATION_CONFIG", "BlockFP8", "quantised", "block_fp8_problems", "write_fp8_checkpoint",
           "read_fp8_checkpoint", "cat_out", "CheckpointSynced"]
