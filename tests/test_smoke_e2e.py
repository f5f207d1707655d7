"""The smoke grid end to end through real Snakemake: pretrain -> SFT -> RL arms -> MLflow -> report.

Checks the run files, reads the MLflow store back with mlflow.search_runs, and opens the report.
"""

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
ARMS = {("on_policy", "minirl"), ("on_policy", "minirl_r3"), ("off_policy_n2", "minirl_r2"),
        ("off_policy_n2", "minirl_r3"), ("precision", "minirl-precision=fp8"),
        ("precision", "minirl-precision=bf16")}
SHARED = {("precision", "minirl-precision=fp8"): ("on_policy", "minirl")}  # same resolved config and seed


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    wd = tmp_path_factory.mktemp("smoke")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "2", "--configfile", str(REPO / "experiments" / "smoke.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return wd / "results"


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_arm_wrote_its_run_files(smoke_results):
    for figure, arm in ARMS:
        run_dir = smoke_results / "smoke" / "runs" / figure / arm / "seed0"
        assert (run_dir / "DONE").exists()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged")
        meta = json.loads((run_dir / "meta.json").read_text())
        assert (meta["figure"], meta["arm"], meta["seed"]) == (figure, arm, 0)
        train = [r for r in rows_of(run_dir) if "minibatch" in r]
        assert [r["step"] for r in train] == list(range(1, summary["steps_done"] + 1))
        config = json.loads((run_dir / "config.json").read_text())
        assert config["replay"]["mode"] == ("none" if arm.startswith("minirl-") else
                                            {"minirl": "none"}.get(arm, arm[-2:]))


def test_every_trained_arm_takes_its_cold_starts_benchmark_as_its_step0_eval(smoke_results):
    grid = smoke_results / "smoke"
    for figure, arm in ARMS.difference(SHARED):
        log = (grid / "logs" / "runs" / figure / arm / "seed0.log").read_text()
        config = json.loads((grid / "runs" / figure / arm / "seed0" / "config.json").read_text())
        bench = grid / "models" / f"eval_{config['cold_start']}.json"
        assert f"step-0 eval: reused {bench.relative_to(grid.parent.parent)}" in log
        stored, step0 = json.loads(bench.read_text()), rows_of(grid / "runs" / figure / arm / "seed0")[0]
        assert (step0["step"], step0["eval/score"]) == (0, stored["score"])


def test_a_run_the_grid_repeats_is_trained_once_and_shared(smoke_results):
    for (figure, arm), (src_figure, src_arm) in SHARED.items():
        run_dir = smoke_results / "smoke" / "runs" / figure / arm / "seed0"
        source = smoke_results / "smoke" / "runs" / src_figure / src_arm / "seed0"
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["trained_by"] == f"runs/{src_figure}/{src_arm}/seed0" and meta["arm"] == arm
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            assert (run_dir / name).is_symlink()
            assert (run_dir / name).read_bytes() == (source / name).read_bytes()
        assert not (run_dir / "ckpt").exists()   # never trained here
    report = (smoke_results / "smoke" / "report" / "report.html").read_text()
    assert "across rollout formats" in report   # the precision figure's dose panel


def test_mlflow_holds_a_parent_and_every_metric_row(smoke_results):
    mlflow.set_tracking_uri(f"sqlite:///{smoke_results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parent = runs[runs["tags.role"] == "grid"]
    children = runs[runs["tags.role"] == "run"]
    assert len(parent) == 1 and len(children) == len(ARMS)
    assert set(zip(children["tags.figure"], children["tags.arm"], strict=True)) == ARMS
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    client = MlflowClient()
    for _, child in children.iterrows():
        run_dir = smoke_results / "smoke" / "runs" / child["tags.figure"] / child["tags.arm"] / "seed0"
        rows = rows_of(run_dir)
        expected = sum(1 for r in rows if math.isfinite(r.get("reward/mean", math.nan)))
        history = client.get_metric_history(child["run_id"], "reward/mean")
        assert len(history) == expected > 0
        config = json.loads((run_dir / "config.json").read_text())
        assert child["params.replay.mode"] == config["replay"]["mode"]
        assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == child["run_id"]


def test_report_and_index_are_written(smoke_results):
    report = (smoke_results / "smoke" / "report" / "report.html").read_text()
    for title in ("On-policy (N=1)", "Off-policy (N=2)"):
        assert title in report
    assert report.count('src="data:image/png;base64,') >= 2
    assert "R3 lowers the train-inference KL" in report and "MiniRL + R2" in report
    assert (smoke_results / "smoke" / "report" / "stability.csv").exists()
    assert "smoke" in (smoke_results / "index.html").read_text()


def test_every_arm_learns_something(smoke_results):
    """The smoke cold start earns reward, so groups have mixed rewards: loss and gradient are not all 0."""
    for figure, arm in ARMS:
        rows = rows_of(smoke_results / "smoke" / "runs" / figure / arm / "seed0")
        train = [r for r in rows if "minibatch" in r]
        assert any(r["reward/mean"] > 0 for r in train), (figure, arm)
        assert any(abs(r["loss/value"]) > 1e-6 for r in train), (figure, arm)
        assert any(r["grad/norm"] > 1e-6 for r in train), (figure, arm)


def test_a_deleted_mlflow_store_is_rebuilt_with_every_run(smoke_results):
    (smoke_results / "mlflow.db").unlink()
    wd = smoke_results.parent
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "2", "--configfile", str(REPO / "experiments" / "smoke.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mlflow.db is gone" in proc.stderr and "rule rl_run" not in proc.stdout + proc.stderr
    # Read the new store with sqlite3: this process's MLflow caches a connection to the deleted file.
    with sqlite3.connect(smoke_results / "mlflow.db") as db:
        roles = dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = 'role'").fetchall())
    assert sorted(roles.values()) == ["grid"] + ["run"] * len(ARMS)
    for figure, arm in ARMS:
        record = json.loads((smoke_results / "smoke" / "runs" / figure / arm / "seed0" / "mlflow_run.json")
                            .read_text())
        assert roles[record["run_id"]] == "run"
