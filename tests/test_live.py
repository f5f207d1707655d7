"""Live tracking (rl_core.orchestration.live): a running arm's metric rows are visible through MLflow's API
before the arm ends, and the grid's mirror replaces the live run with the finished one."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hf_checkpoint import DATA, MODEL, build_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _arm_config(init: Path, steps: int) -> dict:
    return {"init": str(init), "model": MODEL,
            "task": {"kind": "file", "train_file": str(DATA / "math_train.jsonl"),
                     "bench_file": str(DATA / "math_bench.jsonl"), "max_prompt_tokens": 64, "n_bench": 16,
                     "prompt_template": "{prompt} Put your final answer within \\boxed{}."},
            "rollout": {"max_new_tokens": 24, "group_size": 4}, "train": {"batch_prompts": 4, "steps": steps},
            "eval": {"every": 10, "k": 1, "n_problems": 8}}


def test_running_arms_metrics_reach_mlflow_before_they_end(tmp_path):
    """One follower for the grid, as the workflow starts it (--pid: Snakemake's process; here a sleep), and
    two arms training at once: both are readable through MLflow's API while their trainers still run."""
    from mlflow.tracking import MlflowClient

    from rl_core.orchestration import tracking as T

    init = build_checkpoint(tmp_path / "init")
    grid_dir = tmp_path / "results" / "live"
    T.mirror_parent(grid_dir, "live")  # a new sqlite store takes ~8 s to create: not what is tested here
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    snakemake = subprocess.Popen(["sleep", "600"])
    follower = subprocess.Popen([sys.executable, "-m", "rl_core.orchestration.live", "--grid-dir",
                                 str(grid_dir), "--grid", "live", "--interval", "0.5", "--pid",
                                 str(snakemake.pid)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainers, run_dirs = [], []
    for arm in ("a", "b"):
        run_dirs.append(grid_dir / "runs" / "fig" / arm / "seed0")
        meta = {"grid": "live", "figure": "fig", "arm": arm, "label": arm.upper(), "seed": 0}
        cmd = ["-m", "rl_core.train", "--out", str(run_dirs[-1]), "--config-json",
               json.dumps(_arm_config(init, 120)), "--meta-json", json.dumps(meta)]
        trainers.append(subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        seen, deadline = {}, time.time() + 180
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.5)
            for trainer, run_dir in zip(trainers, run_dirs, strict=True):
                live = run_dir / "mlflow_live.json"
                if run_dir in seen or not live.is_file():
                    continue
                record = json.loads(live.read_text())
                client = MlflowClient(tracking_uri=record["tracking_uri"])
                history = client.get_metric_history(record["run_id"], "reward/mean")
                if history:  # visible: was the arm still running?
                    seen[run_dir] = (record, trainer.poll() is None and not (run_dir / "DONE").exists())
        assert len(seen) == 2 and all(running for _, running in seen.values()), seen
        for record, _ in seen.values():
            run = client.get_run(record["run_id"])
            assert run.data.tags["live"] == "1" and run.data.params["task.kind"] == "file"
    finally:
        for trainer in trainers:
            trainer.wait(timeout=300)
        deadline = time.time() + 60  # the follower finishes each arm right after its DONE
        while time.time() < deadline and any(
                client.get_run(r["run_id"]).info.status != "FINISHED" for r, _ in seen.values()):
            time.sleep(0.5)
        snakemake.kill()  # not reaped yet: a zombie, which the follower must see as gone
        out, err = follower.communicate(timeout=60)
    assert all(t.returncode == 0 for t in trainers) and follower.returncode == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert (record["arms"], record["finished"], record["status"]) == (2, 2, "ended") and record["metrics"]
    for run_dir, (record, _) in seen.items():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        history = client.get_metric_history(record["run_id"], "reward/mean")
        assert len(history) == sum("reward/mean" in r for r in rows) == 120  # every row, once
        assert client.get_run(record["run_id"]).info.status == "FINISHED"
    # the grid's mirror is the source of truth: it replaces the live runs with the finished files
    T.mirror_grid(grid_dir, "live", run_dirs)
    experiment = next(iter(seen.values()))[0]["experiment_id"]
    children = client.search_runs([experiment], "tags.role = 'run'")
    assert len(children) == 2 and not any("live" in c.data.tags for c in children)
    assert all(client.get_run(r["run_id"]).info.lifecycle_stage == "deleted" for r, _ in seen.values())


def test_a_follower_ends_with_the_process_it_follows(tmp_path):
    """Snakemake gone (finished, failed or cancelled): the follower ends too, with nothing to follow."""
    sleeper = subprocess.Popen(["sleep", "2"])
    res = subprocess.run([sys.executable, "-m", "rl_core.orchestration.live", "--grid-dir",
                          str(tmp_path / "g"), "--grid", "g", "--interval", "0.2", "--pid", str(sleeper.pid)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    sleeper.wait()
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"arms": 0, "finished": 0, "metrics": 0,
                                                              "status": "ended"}


@pytest.mark.parametrize("argv", [["--grid-dir", "g", "--grid", "x", "--interval", "0"]])
def test_bad_arguments_are_one_line(argv, tmp_path):
    res = subprocess.run([sys.executable, "-m", "rl_core.orchestration.live", *argv], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == "error: --interval: 0.0 must be > 0"
