"""One arm end to end: invariances of the global step, determinism, resume after SIGKILL, divergence.

All runs start from one tiny cold start (pretrain + SFT on 2-3 operand single-digit sums) that scores
~0.3, so groups have mixed rewards and non-zero advantages.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import build_cold_start

from rl_core import config as C
from rl_core import samples as S
from rl_core.train import main, run

TINY = {
    "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "task": {"min_operands": 2, "max_operands": 3, "max_operand": 3, "ops": "+",
             "n_train": 48, "n_bench": 16},
    "pipeline": {"pretrain_steps": 60, "sft_steps": 120, "batch_size": 32, "sft_lr": 3e-3},
    "rollout": {"max_new_tokens": 16, "group_size": 4},
    "train": {"batch_prompts": 4, "steps": 4, "n_minibatches": 1, "lr": 1e-3},
    "eval": {"every": 4, "k": 2, "n_problems": 16},
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    return str(build_cold_start(tmp_path_factory.mktemp("coldstart"), TINY))


def cfg_for(cold_start, *overrides):
    return C.resolve(TINY, {"init": cold_start}, overrides=list(overrides))


def train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "minibatch" in r]


def strip_perf(rows):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_on_policy_clip_fraction_is_zero_and_r2_is_bitwise_no_replay(cold_start, tmp_path):
    plain = run(cfg_for(cold_start), tmp_path / "none")
    r2 = run(cfg_for(cold_start, "replay.mode=r2"), tmp_path / "r2")
    assert plain["status"] == r2["status"] == "completed"
    rows_plain, rows_r2 = train_rows(tmp_path / "none"), train_rows(tmp_path / "r2")
    assert len(rows_plain) == 4
    assert all(r["clip/frac"] == 0.0 and r["ratio/staleness_mean"] == 1.0 for r in rows_plain)
    assert any(r["grad/norm"] > 0 for r in rows_plain)  # the policy did move: the invariance is not vacuous
    assert strip_perf(rows_plain) == strip_perf(rows_r2)


def test_fp32_rollout_engine_gives_unit_is_weights(cold_start, tmp_path):
    run(cfg_for(cold_start, "rollout.precision=fp32"), tmp_path / "fp32")
    for r in train_rows(tmp_path / "fp32"):
        assert abs(r["is/weight_mean"] - 1.0) < 1e-5 and abs(r["is/weight_max"] - 1.0) < 1e-5
        assert abs(r["kl/train_infer_k1"]) < 1e-6
        assert r["route/disagree_rollout_vs_old"] == 0.0
    run(cfg_for(cold_start, "rollout.precision=fp8"), tmp_path / "fp8")
    fp8 = train_rows(tmp_path / "fp8")
    assert max(abs(r["is/weight_mean"] - 1.0) for r in fp8) > 1e-3  # the control above is not vacuous


def test_off_policy_first_minibatch_has_ratio_one_later_ones_are_stale(cold_start, tmp_path):
    run(cfg_for(cold_start, "train.n_minibatches=4", "train.steps=8", "train.lr=1e-2"), tmp_path / "n4")
    rows = train_rows(tmp_path / "n4")
    assert [r["minibatch"] for r in rows] == [1, 2, 3, 4] * 2
    for r in rows:
        if r["minibatch"] == 1:
            assert r["kl/staleness_k1"] == 0.0 and r["clip/frac"] == 0.0 and r["ratio/staleness_mean"] == 1.0
            assert r["ratio/staleness_max_abs_log"] == 0.0
        else:
            assert r["kl/staleness_k3"] > 0.0
    assert sum(r["clip/frac"] > 0 for r in rows if r["minibatch"] > 1) >= 3


@pytest.mark.parametrize("mode", ["none", "r2", "r3"])
def test_first_minibatch_pi_old_from_its_update_equals_a_separate_old_pass(cold_start, tmp_path, mode):
    """Mini-batch 1 skips the no-grad logp_old pass (rl_core.step): what its update records must be
    exactly what that pass would have given at theta_old, with the replay the pass would have used."""
    from rl_core.step import collect, update
    from rl_core.train import Arm, RunFiles
    from rl_core.training.scoring import token_logprobs

    cfg = cfg_for(cold_start, "train.n_minibatches=2", f"replay.mode={mode}", "train.lr=1e-2",
                  "rollout.precision=fp8")
    arm = Arm(cfg, RunFiles(tmp_path))
    problems = arm.task.train_problems[:8]
    batch, _ = collect(cfg, arm.policy, arm.engine, arm.task, problems, arm.objective,
                       torch.Generator().manual_seed(0))
    first, second = torch.arange(0, 16), torch.arange(16, 32)
    # The update must move the weights, whatever the sampler drew (equal rewards in every group give zero
    # advantages and a zero gradient): give mini-batch 1 fixed non-zero advantages. This test is about
    # which log-probs the update records as logp_old, not about the advantages' values.
    batch.advantages[first] = torch.tensor([1.0, -1.0]).repeat(8).to(batch.advantages.dtype)
    ro = batch.rollout
    assert torch.isnan(batch.logp_old[first]).all() and not torch.isnan(batch.logp_old[second]).any()
    with torch.no_grad():
        replay = batch.replay[first] if mode == "r3" else None
        ref = token_logprobs(arm.policy, ro.input_ids[first], ro.attention_mask[first], replay=replay)
    with pytest.raises(RuntimeError, match="mini-batch 1"):  # before any weight changes
        update(cfg, arm.policy, arm.opt, batch, second, arm.objective, arm.params)
    metrics, finite = update(cfg, arm.policy, arm.opt, batch, first, arm.objective, arm.params)
    assert finite and metrics["grad/norm"] > 0
    assert torch.equal(batch.logp_old[first], ref.logp)
    assert torch.equal(batch.routing_old[first], ref.routing_natural)
    assert not batch.old_pending.any()


def test_same_config_and_seed_give_bitwise_identical_metrics(cold_start, tmp_path):
    cfg = cfg_for(cold_start, "train.n_minibatches=2", "replay.mode=r3")
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    a, b = train_rows(tmp_path / "a"), train_rows(tmp_path / "b")
    assert len(a) == 4 and strip_perf(a) == strip_perf(b)


def test_resume_after_sigkill_matches_an_uninterrupted_run(cold_start, tmp_path):
    cfg = cfg_for(cold_start, "train.steps=8", "train.n_minibatches=2", "eval.every=2")
    args = [sys.executable, "-m", "rl_core.train", "--out", str(tmp_path / "killed"),
            "--config-json", C.to_json(cfg)]
    env = {**os.environ, "RLCORE_KILL_AT_STEP": "6"}  # dies after logging step 6, before its checkpoint
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not (tmp_path / "killed" / "DONE").exists()
    assert max(r["step"] for r in train_rows(tmp_path / "killed")) == 6  # rows past the checkpoint (step 4)
    run(cfg, tmp_path / "killed")  # re-run: resumes from step 4
    run(cfg, tmp_path / "clean")
    resumed, clean = train_rows(tmp_path / "killed"), train_rows(tmp_path / "clean")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert strip_perf(resumed) == strip_perf(clean)
    evals = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval/score" in r] == [0, 2, 4, 6, 8]
    # the rollout samples past the checkpoint went with its metric rows: the file equals the clean run's
    samples = [S.read(tmp_path / d / "samples.jsonl") for d in ("killed", "clean")]
    assert samples[0] == samples[1] and {r["global_step"] for r in samples[0] if r["kind"] == "train"} == \
        {1, 2, 3, 4}


def test_changed_config_starts_fresh_instead_of_resuming(cold_start, tmp_path):
    run(cfg_for(cold_start), tmp_path / "r")
    run(cfg_for(cold_start, "loss.eps_high=0.3"), tmp_path / "r")
    assert [r["step"] for r in train_rows(tmp_path / "r")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["loss"]["eps_high"] == 0.3


def test_diverging_arm_is_a_result_not_a_crash(cold_start, tmp_path, capsys):
    cfg = cfg_for(cold_start, "train.lr=1e30", "train.grad_clip=0.0", "train.steps=8")
    assert main(["--out", str(tmp_path / "d"), "--config-json", C.to_json(cfg)]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] < 8
    assert (tmp_path / "d" / "DONE").exists()
    # every run records where its numbers came from (bitwise equality holds on one kernel path only)
    prov = summary["provenance"]
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and prov["cpu_model"]
    assert prov["torch"] == torch.__version__ and prov["device"] == "cpu" and "commit" in prov


def test_bad_init_fails_before_any_work(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "init=/nonexistent"]) == 2
    assert "init: '/nonexistent' is not a Hugging Face checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def eval_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/score" in r]


def test_step0_eval_reuses_the_cold_start_benchmark_only_when_its_fingerprint_matches(cold_start, tmp_path,
                                                                                     capsys):
    from pathlib import Path

    from rl_core.coldstart import benchmark

    cfg = cfg_for(cold_start)
    bench = tmp_path / "eval_sft.json"
    bench.write_text(json.dumps(benchmark(cfg, Path(cold_start))))
    run(cfg, tmp_path / "computed")
    run(cfg, tmp_path / "reused", step0_eval=bench)
    out = capsys.readouterr().out
    assert f"step-0 eval: reused {bench}" in out, [x for x in out.splitlines() if "step-0" in x]
    computed, reused = eval_rows(tmp_path / "computed"), eval_rows(tmp_path / "reused")
    assert computed[0]["step"] == 0 and strip_perf(computed) == strip_perf(reused)  # step 0 and the rest
    # Each eval row carries its own wall time; a reused step 0 costs only the fingerprint check.
    assert all(r["perf/eval_s"] > 0 for r in computed + reused)
    assert reused[0]["perf/eval_s"] < min(r["perf/eval_s"] for r in computed) / 2
    # A stored result that would differ: another eval.k is named and the step-0 eval is computed here.
    stored = json.loads(bench.read_text())
    stored["score"] = -1.0
    bench.write_text(json.dumps(stored))
    run(cfg_for(cold_start, "eval.k=3"), tmp_path / "k3", step0_eval=bench)
    assert f"step-0 eval: {bench} was made with different eval; computing it here" in capsys.readouterr().out
    assert eval_rows(tmp_path / "k3")[0]["eval/score"] >= 0.0
    # Other weights: the same settings from another checkpoint are not reused either.
    stored["fingerprint"]["weights_sha256"] = "0" * 64
    bench.write_text(json.dumps(stored))
    run(cfg, tmp_path / "other", step0_eval=bench)
    assert "was made with different weights_sha256; computing it here" in capsys.readouterr().out
    assert strip_perf(eval_rows(tmp_path / "other")) == strip_perf(computed)


def test_a_resumed_runs_wall_time_counts_the_processes_before_it(cold_start, tmp_path):
    run(cfg_for(cold_start), tmp_path / "r")
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    state = torch.load(tmp_path / "r" / "ckpt" / "state.pt", weights_only=False)
    run(cfg_for(cold_start), tmp_path / "r")  # resumes at the last checkpoint: no step left to run
    again = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert state["wall_s"] >= first["rl_wall_s"] > 0 and again["rl_wall_s"] == first["rl_wall_s"]
    assert again["wall_s"] > state["wall_s"]


def test_ess_fraction_by_hand():
    from rl_core.step import ess_fraction
    mask = torch.tensor([[True, True, False]])
    # equal weights: ESS = n, the fraction 1 (whatever the masked-out entry holds)
    assert ess_fraction(torch.tensor([[0.7, 0.7, 50.0]]), mask) == pytest.approx(1.0, abs=1e-12)
    # w = (1, 3): (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20 = 0.8
    log_w = torch.tensor([[0.0, float(torch.tensor(3.0).log())]])
    assert ess_fraction(log_w, mask[:, :2]) == pytest.approx(0.8)
    # one weight e^800 against 1: ESS -> 1 of 2 tokens, without overflow
    assert ess_fraction(torch.tensor([[800.0, 0.0]]), mask[:, :2]) == pytest.approx(0.5)
