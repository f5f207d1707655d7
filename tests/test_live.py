"""Live tracking (rl_core.live): a running arm's metric rows are visible through MLflow's API before the arm
ends, and the grid's mirror replaces the live run with the finished one."""

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


def test_a_running_arms_metrics_reach_mlflow_before_it_ends(tmp_path):
    from mlflow.tracking import MlflowClient

    from rl_core import tracking as T

    init = build_checkpoint(tmp_path / "init")
    grid_dir = tmp_path / "results" / "live"
    run_dir = grid_dir / "runs" / "fig" / "arm" / "seed0"
    run_dir.mkdir(parents=True)
    T.mirror_parent(grid_dir, "live")  # a new sqlite store takes ~8 s to create: not what is tested here
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    live_cmd = ["-m", "rl_core.live", "--run-dir", str(run_dir), "--grid-dir", str(grid_dir),
                "--grid", "live", "--interval", "0.5", "--nice", "0"]  # 0: a loaded CI machine
    follower = subprocess.Popen([sys.executable, *live_cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    meta = {"grid": "live", "figure": "fig", "arm": "arm", "label": "Arm", "seed": 0}
    train_cmd = ["-m", "rl_core.train", "--out", str(run_dir), "--config-json",
                 json.dumps(_arm_config(init, 120)), "--meta-json", json.dumps(meta)]
    trainer = subprocess.Popen([sys.executable, *train_cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        seen, deadline = [], time.time() + 120
        while not seen and time.time() < deadline and trainer.poll() is None:
            time.sleep(0.5)
            live = run_dir / "mlflow_live.json"
            if live.is_file():
                record = json.loads(live.read_text())
                client = MlflowClient(tracking_uri=record["tracking_uri"])
                seen = client.get_metric_history(record["run_id"], "reward/mean")
        running = trainer.poll() is None and not (run_dir / "DONE").exists()
        assert seen and running, "no live metric before the arm ended"
        run = client.get_run(record["run_id"])
        assert run.info.status == "RUNNING" and run.data.tags["live"] == "1"
        assert run.data.tags["figure"] == "fig" and run.data.params["task.kind"] == "file"
        assert all(m.step >= 1 for m in seen)
    finally:
        trainer.wait(timeout=300)
        out, err = follower.communicate(timeout=60)
    assert trainer.returncode == 0 and follower.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "FINISHED"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    history = client.get_metric_history(record["run_id"], "reward/mean")
    assert len(history) == sum("reward/mean" in r for r in rows) == 120  # every row, once
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    # the grid's mirror is the source of truth: it replaces the live run with the finished files
    T.mirror_grid(grid_dir, "live", [run_dir])
    children = client.search_runs([record["experiment_id"]], "tags.role = 'run'")
    assert len(children) == 1 and "live" not in children[0].data.tags
    assert children[0].info.run_id != record["run_id"]
    assert client.get_run(record["run_id"]).info.lifecycle_stage == "deleted"


def test_a_follower_whose_arm_never_starts_stops_with_its_shell(tmp_path):
    """Started by a shell that then exits (a job that failed before its trainer wrote anything)."""
    run_dir = tmp_path / "run"
    cmd = (f"{sys.executable} -m rl_core.live --run-dir {run_dir} --grid-dir {tmp_path / 'g'} --grid g "
           f"--interval 0.2 > {tmp_path / 'live.out'} 2>&1 & sleep 1")
    subprocess.run(["bash", "-c", cmd], cwd=ROOT, check=True)
    deadline = time.time() + 60
    while time.time() < deadline and "not started" not in (tmp_path / "live.out").read_text():
        time.sleep(0.2)
    assert '"status": "not started"' in (tmp_path / "live.out").read_text()


@pytest.mark.parametrize("argv", [["--run-dir", "r", "--grid-dir", "g", "--grid", "x", "--interval", "0"]])
def test_bad_arguments_are_one_line(argv, tmp_path):
    res = subprocess.run([sys.executable, "-m", "rl_core.live", *argv], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 2 and res.stderr.strip() == "error: --interval: 0.0 must be > 0"
