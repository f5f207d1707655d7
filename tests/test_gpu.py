"""The training engine on a CUDA GPU (marker `gpu`: `pytest -m gpu`; each skips without a GPU), and
`make gpu-check`'s behaviour on a machine without one (default suite)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY as TRAIN_TINY
from tiny import build_cold_start

from rl_core import config as C

REPO = Path(__file__).resolve().parent.parent
# test_train's tiny arm, off-policy (N = 2).
TINY = {**{k: v for k, v in TRAIN_TINY.items() if k != "checkpoint_every"},
        "train": {**TRAIN_TINY["train"], "n_minibatches": 2}}


def needs_gpu(test):
    """Marker `gpu` (deselected by default) and a clean skip where torch sees no GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    return str(build_cold_start(tmp_path_factory.mktemp("coldstart"), TINY))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_check_says_skipped_and_exits_0_without_a_gpu():
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("gpu-check: no CUDA GPU: skipped")


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_arm_trains_on_the_gpu_and_records_it(cold_start, tmp_path, precision):
    from rl_core.train import run

    cfg = C.resolve(TINY, {"init": cold_start, "train": {"device": "cuda", "precision": precision},
                           "replay": {"mode": "r3"}})
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["device"] == "cuda:0" and summary["world_size"] == 1


@needs_gpu
def test_fp32_scores_on_the_gpu_equal_the_cpu_and_the_gpu_sampler_agrees(cold_start):
    from rl_core.policy.model import load_pretrained
    from rl_core.rollout.embedded import EmbeddedRolloutEngine
    from rl_core.training.distributed import OnDevice
    from rl_core.training.scoring import token_logprobs

    policy = load_pretrained(cold_start)
    cpu_engine = EmbeddedRolloutEngine.from_model(policy, "fp32")
    ro = cpu_engine.generate([[3, 4, 5, 6]] * 8, 12, 1.0, torch.Generator().manual_seed(0))
    cpu = token_logprobs(policy, ro.input_ids, ro.attention_mask).logp
    gpu_policy = load_pretrained(cold_start).cuda()
    gpu = token_logprobs(gpu_policy, ro.input_ids.cuda(), ro.attention_mask.cuda()).logp.cpu()
    assert float((cpu - gpu).abs().max()) < 1e-4
    # The embedded engine on the GPU: its behaviour log-probs are the fp32 trainer's on what it sampled.
    engine = OnDevice(lambda: EmbeddedRolloutEngine.from_model(gpu_policy, "fp32"), torch.device("cuda"))
    ro = engine.generate([[3, 4, 5, 6]] * 8, 12, 1.0, torch.Generator("cuda").manual_seed(0))
    assert ro.input_ids.is_cuda
    scored = token_logprobs(gpu_policy, ro.input_ids, ro.attention_mask).logp
    assert float((scored - ro.logp_behavior)[ro.response_mask].abs().max()) < 1e-4


def test_the_gpu_check_rehearses_every_row_on_the_cpu(tmp_path):
    """`python bench/gpu_check.py --rehearse`: the whole script's logic on this CPU (tiny shapes, cpu, 2 gloo
    ranks): the api probe, every row run or "skipped:" with why, the table, the JSON; the two embedded fp8
    rows (memory and block-FP8 checkpoint sync) agree exactly. About 45 s on a 2-core machine."""
    import json

    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--rehearse", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["arm"]: r for r in report["arms"]}
    assert set(rows) == {"cpu_fp32", "cuda_bf16", "torchrun_x2", "embedded_fp8", "embedded_fp8_ckpt",
                         "vllm_fp32", "vllm_bf16", "vllm_fp8_block", "megatron_bf16"}
    assert rows["torchrun_x2"]["world_size"] == 2 and rows["torchrun_x2"]["status"] == "completed"
    assert rows["embedded_fp8"]["kl_k3"] == rows["embedded_fp8_ckpt"]["kl_k3"]
    assert all(("skipped" in r) or r["status"] == "completed" for r in rows.values())
    assert "gpu-check: vllm_fp8_block: skipped: " in p.stdout and "gpu-check: row " in p.stdout
    assert all(report["apis"].values()), report["apis"]  # the pinned torch has every API the GPU path calls
