"""Capability checks (rl_core.orchestration.capabilities): an arm its backends cannot run fails at config
validation, with a message naming the capability and the backend. Environments are given explicitly, so these
tests do not depend on what is installed here; one test checks the real probe imports neither torch nor
vllm."""

import subprocess
import sys

import pytest

from rl_core import config as C
from rl_core.orchestration.capabilities import (
    CapabilityError,
    Environment,
    check_capabilities,
    rollout_capabilities,
)

BARE = Environment(vllm=False, vllm_build="", triton=False, megatron=False, cuda_gpu=False)
VLLM_CPU = Environment(vllm=True, vllm_build="cpu", triton=True, megatron=False, cuda_gpu=False)
VLLM_GPU = Environment(vllm=True, vllm_build="gpu", triton=True, megatron=True, cuda_gpu=True)


def cfg(*overrides):
    return C.resolve(overrides=list(overrides))


def test_default_arm_needs_nothing_optional():
    check_capabilities(cfg(), BARE)
    check_capabilities(cfg("replay.mode=r3", "rollout.precision=fp8"), BARE)  # the embedded engine has it all


def test_vllm_not_importable_names_the_backend():
    with pytest.raises(CapabilityError, match=r"rollout\.engine='vllm': backend 'vllm' is not importable"):
        check_capabilities(cfg("rollout.engine=vllm"), BARE)


def test_r3_on_vllm_cpu_build_names_routed_experts_and_the_backend():
    with pytest.raises(CapabilityError) as e:
        check_capabilities(cfg("rollout.engine=vllm", "replay.mode=r3"), VLLM_CPU)
    msg = str(e.value)
    assert "replay.mode='r3' needs capability 'routed_experts'" in msg
    assert "backend 'vllm (vllm-cpu build)' lacks" in msg and "Triton" in msg


def test_capability_error_is_a_config_error():
    with pytest.raises(C.ConfigError):
        check_capabilities(cfg("rollout.engine=vllm", "replay.mode=r3"), VLLM_CPU)


def test_fp8_on_vllm_cpu_build_names_fp8():
    with pytest.raises(CapabilityError, match=r"rollout\.precision='fp8' needs capability 'fp8'.*vllm-cpu"):
        check_capabilities(cfg("rollout.engine=vllm", "rollout.precision=fp8"), VLLM_CPU)
    check_capabilities(cfg("rollout.engine=vllm", "rollout.precision=bf16"), VLLM_CPU)
    check_capabilities(cfg("rollout.engine=vllm", "rollout.precision=fp32", "replay.mode=r2"), VLLM_CPU)


def test_all_problems_are_reported_together():
    with pytest.raises(CapabilityError) as e:
        check_capabilities(cfg("rollout.engine=vllm", "rollout.precision=fp8", "replay.mode=r3",
                               "train.engine=megatron"), VLLM_CPU)
    msg = str(e.value)
    assert "'fp8'" in msg and "'routed_experts'" in msg and "megatron-core" in msg


def test_vllm_gpu_build_offers_routed_experts_only_with_triton():
    check_capabilities(cfg("rollout.engine=vllm", "replay.mode=r3", "rollout.precision=bf16"), VLLM_GPU)
    no_triton = Environment(vllm=True, vllm_build="gpu", triton=False, megatron=False, cuda_gpu=True)
    assert "routed_experts" not in rollout_capabilities("vllm", no_triton)
    no_gpu = Environment(vllm=True, vllm_build="gpu", triton=True, megatron=False, cuda_gpu=False)
    with pytest.raises(CapabilityError, match=r"'vllm \(GPU build\)' needs capability 'cuda'"):
        check_capabilities(cfg("rollout.engine=vllm"), no_gpu)


def test_megatron_needs_megatron_core_and_runs_bf16_at_any_world_size():
    arm = cfg("train.engine=megatron")
    with pytest.raises(CapabilityError, match=r"backend 'megatron-core' is not importable"):
        check_capabilities(arm, BARE)
    check_capabilities(arm, Environment(False, "", False, megatron=True, cuda_gpu=False))  # CPU: the shim's
    check_capabilities(arm, VLLM_GPU)
    check_capabilities(cfg("train.engine=megatron", "train.precision=bf16"), VLLM_GPU)
    # several ranks in bf16: the reductions act on the fp32 masters (tests/test_megatron.py: DP, EP, TP 2)
    check_capabilities(cfg("train.engine=megatron", "train.precision=bf16", "train.world_size=2"), VLLM_GPU)
    check_capabilities(cfg("train.engine=megatron", "train.precision=bf16", "train.world_size=2",
                           "train.megatron_tp=2"), VLLM_GPU)


def test_probe_imports_neither_torch_nor_vllm():
    code = ("import sys; from rl_core import config; from rl_core.orchestration import capabilities; "
            "capabilities.check_capabilities(config.resolve()); env = capabilities.probe(); "
            "assert not {'torch', 'vllm', 'megatron'} & set(sys.modules), sorted(sys.modules); print(env)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Environment(")


def test_vllm_cpu_build_rejects_head_sizes_its_attention_lacks():
    with pytest.raises(CapabilityError, match=r"model\.head_dim=16 needs capability 'head_dim=16'.*vllm-cpu"):
        check_capabilities(cfg("rollout.engine=vllm", "model.head_dim=16"), VLLM_CPU)
    check_capabilities(cfg("rollout.engine=vllm", "model.head_dim=16"), VLLM_GPU)
    check_capabilities(cfg("model.head_dim=16"), VLLM_CPU)  # the embedded engine takes any size


def test_vllm_never_serves_a_format_under_another_formats_name():
    # vLLM's online fp8 is per-tensor W8A8, not the 128x128 block format `fp8` names; no MXFP4 or fp8 KV here.
    for over in ("rollout.precision=fp8", "rollout.precision=fp8_w8a16", "rollout.precision=mxfp4",
                 "rollout.kv_cache=fp8"):
        with pytest.raises(CapabilityError, match=over.split("=")[0].replace(".", r"\.")):
            check_capabilities(cfg("rollout.engine=vllm", over), VLLM_GPU)
        check_capabilities(cfg(over), BARE)  # the embedded engine has them all


def test_an_arm_no_machine_can_run_is_refused_when_the_grid_loads(tmp_path):
    # vLLM (any build) serves no mxfp4: a grid asking for it fails before any job, even where Snakemake
    # runs without GPUs. Megatron bf16 at TP 2 is possible (tests/test_megatron.py checks its gradient).
    from rl_core.orchestration.grid import GridError, grid_from_dict

    def one_arm(config: dict) -> dict:
        return {"name": "t", "preset": "smoke", "base": {"model": {"num_key_value_heads": 2}},
                "figures": {"f": {"title": "F", "arms": {"a": {"label": "A", "config": config}}}}}

    with pytest.raises(GridError, match=r"figure 'f', arm 'a': no backend can run this arm: "
                                        r"rollout.precision='mxfp4'"):
        grid_from_dict(one_arm({"rollout": {"engine": "vllm", "precision": "mxfp4"}}))
    megatron_bf16_tp2 = {"train": {"engine": "megatron", "precision": "bf16", "world_size": 2,
                                   "megatron_tp": 2}}
    assert len(grid_from_dict(one_arm(megatron_bf16_tp2)).runs) == 1
    possible = {"rollout": {"engine": "vllm", "precision": "bf16"}, "replay": {"mode": "r3"}}
    ok = {"name": "t", "preset": "smoke", "figures": {"f": {"title": "F", "arms": {
        "a": {"label": "A", "config": possible}}}}}
    assert len(grid_from_dict(ok).runs) == 1   # possible on a GPU machine with the vLLM GPU build and Triton
