"""The `make bench` harness (bench/driver.py): its pure pieces, on synthetic results. Nothing here is
timed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rl_core import config as C
from rl_core.paths import REPO
from rl_core.policy.model import hf_config

sys.path.insert(0, str(REPO / "bench"))
import driver as bench  # noqa: E402


def test_flops_per_token_of_the_default_model_matches_a_hand_count():
    cfg = hf_config(C.ModelConfig(), vocab_size=24, eos_token_id=1, pad_token_id=0)
    # Per layer: q 128*128 + k, v 2 * 128*(2*32) + o 128*128 = 49,152; router 128*8 = 1,024;
    # 2 active experts x 3 matrices x 128*128 = 98,304 -> 148,480; x 4 layers = 593,920; lm_head 128*24.
    assert bench.active_params(cfg) == 593_920 + 3_072
    # 6 x 596,992 + attention 12 x 4 layers x T=64 x (4 heads x 32) = 3,581,952 + 393,216.
    assert bench.train_flops_per_token(cfg, 64) == 3_975_168


def test_parse_result_takes_the_last_marked_line_and_rejects_none():
    out = "noise\nBENCH_JSON {\"a\": 1}\nmore\nBENCH_JSON {\"a\": 2}\n"
    assert bench.parse_result(out) == {"a": 2}
    with pytest.raises(ValueError):
        bench.parse_result("no result here")


def test_a_missing_interpreter_is_reported_not_raised(tmp_path):
    res = bench.run_helper(tmp_path / "nope" / "python", "rl_step_trl.py", {}, threads=1)
    assert res["error"] == "not installed"


def test_overhead_share_excludes_evals_and_counts_the_mirror():
    arm = {"train_wall_s": 20.0, "rl_wall_s": 12.0, "eval_s_total": 3.0, "mirror_share_s": 1.0}
    # outside = 20 - 12 - 3 + 1 = 6; share = 6 / (6 + 12) = 1/3; with 3x the RL steps 6 / (6 + 36).
    assert bench.overhead(arm) == pytest.approx(1 / 3)
    assert bench.overhead(arm, steps_scale=3.0) == pytest.approx(6 / 42)


def synthetic_results(vllm: dict) -> dict:
    rate = lambda r: {"tokens_per_s": r}  # noqa: E731
    return {
        "rl_step": {"ours_s": 1.0, "trl_s": 6.0, "ours": [{}], "bound_flops": 20e9},
        "rollout": {"main": {"ours-fp32": rate(300.0), "ours-bf16": rate(200.0), "hf": rate(250.0)},
                    "main_after": {"ours-fp32": rate(100.0), "ours-bf16": rate(200.0)}, "vllm": vllm},
        "mfu": {"achieved_flops": 30e9, "peak_flops": 80e9},
        "arm": {"train_wall_s": 20.0, "rl_wall_s": 12.0, "eval_s_total": 3.0, "mirror_share_s": 1.0,
                "import_train_s": 1.2, "peak_rss_mb": 900.0, "mini_steps": 48},
    }


def test_table_ratios_and_goals():
    rows = bench.table(synthetic_results({"vllm": "0.x", "results": {"float32": {"tokens_per_s": 100.0}},
                                          "errors": {"bfloat16": "ValueError: no bf16"}}))
    by = {r["measurement"].split(",")[0]: r for r in rows}
    assert by["RL global step"]["ratio"] == 6.0 and by["RL global step"]["met"] is True
    # the limit: 20 GFLOP at an 80 GFLOP/s peak = 0.25 s; ours 1 s is 4x above it, TRL 6 s is 24x
    limit = [r for r in rows if "limit" in r["measurement"]]
    assert [r["peer"] for r in limit] == [0.25, 0.25] and [r["ratio"] for r in limit] == [4.0, 24.0]
    assert limit[1]["met"] is True
    over = [r for r in rows if r["measurement"].startswith("orchestration")]
    # outside = 20 - 12 - 3 + 1 = 6: 6 / 18 for the 16-step arm, 6 / (6 + 36) at 48 steps
    assert [r["ours"] for r in over] == [pytest.approx(1 / 3), pytest.approx(6 / 42)]
    hf = [r for r in rows if "HF generate" in r["measurement"]]
    assert [r["ratio"] for r in hf] == [1.2, 0.8] and [r["met"] for r in hf] == [True, False]
    vllm = [r for r in rows if "vLLM" in r["measurement"]]
    assert vllm[0]["ours"] == 200.0 and vllm[0]["ratio"] == 2.0  # the median of the runs before and after
    assert vllm[1]["peer"].startswith("vllm: {'bfloat16'") and vllm[1]["met"] is None
    assert by["train fwd+bwd GFLOP/s vs fp32 matmul peak"]["ratio"] == pytest.approx(0.375)
    assert by["train fwd+bwd GFLOP/s vs fp32 matmul peak"]["met"] is False
    text = bench.format_table(rows)
    assert text.splitlines()[0].startswith("| measurement") and "6.00x" in text and "NO" in text


def test_missing_peers_are_named_in_the_table():
    res = synthetic_results({"error": "not installed"})
    res["rl_step"]["trl_s"] = None
    rows = bench.table(res)
    assert rows[0]["peer"] == "trl: not installed" and rows[0]["met"] is False
    assert sum(r["peer"] == "vllm: not installed" for r in rows) == 2


def test_step_bound_counts_weight_flops_of_rollout_old_pass_and_updates():
    cfg = hf_config(C.ModelConfig(), vocab_size=24, eos_token_id=1, pad_token_id=0)
    # 100 tokens: rollout 2, pi_old pass on 3 of 4 mini-batches 2 * 3/4, updates 6 -> 9.5 per weight.
    assert bench.step_bound(cfg, 40, 60, 4) == pytest.approx(596_992 * 100 * 9.5)
    assert bench.step_bound(cfg, 40, 60, 1) == pytest.approx(596_992 * 100 * 8)  # N = 1: no pass


def test_arm_config_is_the_mini_scale_at_eight_minibatches(tmp_path):
    cfg = C.from_dict(bench.arm_config(tmp_path / "ckpt", threads=1))
    mini = C.yaml_load((bench.REPO / "experiments" / "presets.yaml").read_text())["mini"]
    assert cfg.train.batch_prompts == mini["train"]["batch_prompts"] and cfg.train.n_minibatches == 8
    assert cfg.rollout.group_size == mini["rollout"]["group_size"]
    assert cfg.train.steps == bench.ARM_STEPS and cfg.rollout.max_new_tokens == 80
    assert cfg.model == C.ModelConfig()
    assert bench.mini_steps() == mini["train"]["steps"]


def test_helper_scripts_exist_and_share_the_marker():
    sys.path.insert(0, str(bench.REPO / "bench"))
    import common

    assert common.MARK == bench.MARK
    for name in ("rl_step_ours.py", "rl_step_trl.py", "rollout.py", "rollout_vllm.py", "mfu.py", "arm.py",
                 "scaling.py"):
        assert Path(bench.REPO / "bench" / name).is_file(), name


def test_regime_table_measures_the_gap_a_format_makes_and_not_one_without(tmp_path):
    """bench/regime_table.py on a tiny cold start: with the same format on both sides (fp32 rollout, fp32
    trainer) the KL is zero up to summation order; fp8 rollouts open a gap; entropy and lengths are real."""
    from test_train import TINY
    from tiny import build_cold_start

    sys.path.insert(0, str(bench.REPO / "bench"))
    import regime_table

    ckpt = build_cold_start(tmp_path, TINY)
    rows = {p: regime_table.measure(ckpt, C.resolve(TINY, {"rollout": {"precision": p}, "init": str(ckpt)}),
                                    n_prompts=8, seed=0) for p in ("fp32", "fp8")}
    assert rows["fp32"]["k3"] < 1e-7 < 1e-5 < rows["fp8"]["k3"]  # fp32: KV-cache decoding vs one forward
    for r in rows.values():
        assert r["responses"] == 8 * TINY["rollout"]["group_size"] and 0 <= r["score"] <= 1
        assert 0.01 < r["entropy"] < 3.0 and 1 <= r["length"] <= TINY["rollout"]["max_new_tokens"]
    table = regime_table.markdown(list(rows.values())).splitlines()
    assert [line.split(" | ")[0] for line in table[2:4]] == ["| sft", "| sft"]  # rows named by cold start


def test_eval_se_measures_the_workflows_benchmark_its_first_seed_is_the_step0_score(tmp_path, capsys):
    """bench/eval_se.py samples as rl_core.tasks.evaluate does, with the paper grid's task and response
    limit: its first seed's score is the benchmark the workflow records for the same checkpoint."""
    import json

    import torch
    from test_train import TINY
    from tiny import build_cold_start

    from rl_core.orchestration.grid import load_grid
    from rl_core.policy.model import load_pretrained
    from rl_core.rollout.embedded import EmbeddedRolloutEngine
    from rl_core.tasks import EVAL_SEED, evaluate, make_task

    sys.path.insert(0, str(bench.REPO / "bench"))
    import eval_se

    ckpt = build_cold_start(tmp_path, TINY)
    capsys.readouterr()
    assert eval_se.main([str(ckpt), "--seeds", "2", "--n-problems", "16", "--k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    base = load_grid(eval_se.PAPER).base_config
    task = make_task(base.task)
    workflow = evaluate(EmbeddedRolloutEngine.from_model(load_pretrained(ckpt), "fp32"), task,
                        task.bench_problems[:16], 2, 1.0, base.rollout.max_new_tokens,
                        torch.Generator().manual_seed(EVAL_SEED))
    assert out["scores"][0] == workflow["score"] and len(out["scores"]) == 2
    assert out["se_measured"] >= 0 and 0 <= out["se_predicted"] <= 0.5 / (16 * 2) ** 0.5


@pytest.mark.parametrize("first", ["common", "eval_se", "rollout_quick"])
def test_helpers_import_this_checkouts_rl_core_not_another_install(tmp_path, first):
    """A helper runs as a script, so sys.path[0] is bench/; an rl_core found later on the path (here a decoy
    on PYTHONPATH, in life the venv's editable install of another clone) must not be the one benched."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "rl_core").mkdir()
    (tmp_path / "rl_core" / "__init__.py").write_text("")
    probe = ("import sys; sys.path.insert(0, {b!r}); sys.argv = ['x', '--help']\n"
             "try:\n    import {m}\nexcept SystemExit:\n    pass\n"
             "import rl_core; print(rl_core.__file__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def where(module: str) -> Path:
        code = probe.format(b=str(repo / "bench"), m=module)
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path.parent, env=env, check=True,
                             capture_output=True, text=True).stdout
        return Path(out.split()[-1]).parent

    assert where("json") == tmp_path / "rl_core"  # control: without the helper's own import, the decoy
    assert where(first) == repo / "rl_core"


def test_compiled_steps_are_compared_with_their_eager_twin_and_with_trl():
    res = synthetic_results({"error": "not installed"})
    res["rl_step"].update(ours_bf16_s=2.0, ours_compiled_s=0.8, ours_bf16_compiled_s=1.0,
                          ours_first_step_cpu_s=1.1, ours_compiled_first_step_cpu_s=20.0,
                          ours_bf16_first_step_cpu_s=2.1, ours_bf16_compiled_first_step_cpu_s=60.0)
    by = {r["measurement"]: r for r in bench.table(res)}
    fp32, bf16 = (by[f"RL global step, s: ours train.compile {p} (peer: eager)"] for p in ("fp32", "bf16"))
    assert (fp32["ours"], fp32["peer"], fp32["ratio"]) == (0.8, 1.0, 1.25) and bf16["ratio"] == 2.0
    first = by["first global step (compiles), CPU s: train.compile bf16 (peer: eager)"]
    assert (first["ours"], first["peer"]) == (60.0, 2.1)
    trl = by["RL global step, s: ours train.compile fp32 vs TRL"]  # TRL 6 s in synthetic_results
    assert trl["ratio"] == 7.5 and trl["met"] is True
    assert by["RL global step, s: ours train.compile bf16 vs TRL"]["ratio"] == 6.0
