"""MLflow mirror of synthetic run dirs: parent/child structure, params, tags, every metric row read back;
idempotent re-mirroring; two processes mirroring into one sqlite store at once lose no rows."""

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from rl_core.config import flatten
from rl_core.orchestration import tracking as T
from rl_core.orchestration.grid import load_grid

REPO = Path(__file__).resolve().parents[1]
KEYS = ("reward/mean", "kl/train_infer", "entropy")


def write_run(grid_dir, run, n_rows, status="completed"):
    """A finished run dir as rl_core.train writes it: one row per gradient step, eval every 10 steps."""
    d = Path(grid_dir) / run.run_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(run.config_json(init="results/x/models/chain"))
    (d / "meta.json").write_text(json.dumps(run.meta))
    with (d / "metrics.jsonl").open("w") as f:
        for step in range(n_rows):
            last_diverged = status == "diverged" and step == n_rows - 1
            row = {"step": step, "reward/mean": step / n_rows, "kl/train_infer": 1e-3 * (1 + step),
                   "entropy": math.nan if last_diverged else 1.0, "phase": "train"}
            if step % 10 == 0:
                row["eval/score"] = 0.5
            f.write(json.dumps(row) + "\n")
    summary = {"status": status, "steps_done": n_rows, "diverged_step": n_rows - 1 if status == "diverged"
               else None, "reason": "", "wall_s": 1.5}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "DONE").write_text("")
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One results dir with its embedded store and the smoke grid's parent run (the store is created
    once: MLflow's table migrations take seconds)."""
    results = tmp_path_factory.mktemp("results")
    grid = load_grid(REPO / "experiments" / "smoke.yaml")
    grid_dir = results / grid.name
    parent = T.mirror_parent(grid_dir, grid.name, out=grid_dir / "mlflow_parent.json")
    return results, grid, grid_dir, parent


def children(uri, exp_id, arm=None):
    mlflow.set_tracking_uri(uri)
    where = "tags.role = 'run'" + (f" and tags.arm = '{arm}'" if arm else "")
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=where)


def test_parent_child_params_tags_metrics_artifacts(store):
    results, grid, grid_dir, parent = store
    run = grid.run("off_policy_n2", "minirl_r2", 0)
    d = write_run(grid_dir, run, 57, status="diverged")
    rec = T.mirror_run(d, grid_dir / "mlflow_parent.json", out=d / "mlflow_run.json")
    assert parent["tracking_uri"] == f"sqlite:///{results.resolve()}/mlflow.db"
    assert json.loads((d / "mlflow_run.json").read_text())["run_id"] == rec["run_id"]
    assert (results / "mlartifacts" / grid.name).is_dir()

    client = MlflowClient(parent["tracking_uri"])
    exp = client.get_experiment_by_name(grid.name)
    assert exp.experiment_id == parent["experiment_id"]
    p = client.get_run(parent["parent_run_id"])
    assert p.data.tags["role"] == "grid" and p.data.tags["grid"] == "smoke"
    df = children(parent["tracking_uri"], exp.experiment_id, "minirl_r2")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["run_id"] == rec["run_id"] and row["tags.mlflow.parentRunId"] == parent["parent_run_id"]
    want_tags = {"grid": "smoke", "figure": "off_policy_n2", "arm": "minirl_r2", "label": "MiniRL + R2",
                 "seed": "0", "status": "diverged", "preset": "smoke", "config_hash": run.meta["config_hash"]}
    assert {k: row[f"tags.{k}"] for k in want_tags} == want_tags

    child = client.get_run(rec["run_id"])
    flat = flatten(json.loads((d / "config.json").read_text()))
    assert child.data.params == {k: str(v) for k, v in flat.items()}
    assert child.data.params["replay.mode"] == "r2" and child.data.params["train.n_minibatches"] == "2"
    for key in KEYS:
        history = client.get_metric_history(rec["run_id"], key)
        assert sorted(m.step for m in history) == list(range(57)), key
    assert len(client.get_metric_history(rec["run_id"], "eval/score")) == 6
    entropy = {m.step: m.value for m in client.get_metric_history(rec["run_id"], "entropy")}
    assert math.isnan(entropy[56]) and entropy[0] == 1.0
    assert "phase" not in child.data.metrics  # non-numeric fields are not metrics
    assert child.data.metrics["summary/steps_done"] == 57
    artifacts = {a.path for a in client.list_artifacts(rec["run_id"])}
    assert artifacts == {"config.json", "meta.json", "summary.json", "metrics.jsonl"}


def test_remirroring_is_idempotent_and_a_changed_run_replaces_its_child(store):
    results, grid, grid_dir, parent = store
    run = grid.run("on_policy", "minirl_r3", 0)
    d = write_run(grid_dir, run, 20)
    first = T.mirror_run(d, grid_dir / "mlflow_parent.json")
    again = T.mirror_run(d, grid_dir / "mlflow_parent.json")
    assert again["run_id"] == first["run_id"] and again["action"] == "unchanged"
    write_run(grid_dir, run, 30)  # the run was re-run: its files changed
    third = T.mirror_run(d, grid_dir / "mlflow_parent.json")
    assert third["action"] == "mirrored" and third["run_id"] != first["run_id"]
    df = children(parent["tracking_uri"], parent["experiment_id"], "minirl_r3")
    assert list(df["run_id"]) == [third["run_id"]]  # the old child was deleted
    client = MlflowClient(parent["tracking_uri"])
    assert len(client.get_metric_history(third["run_id"], "reward/mean")) == 30
    # the parent step is idempotent too
    assert T.mirror_parent(grid_dir, grid.name)["parent_run_id"] == parent["parent_run_id"]


def test_two_processes_mirroring_into_one_sqlite_store_lose_no_rows(store):
    """Two `python -m rl_core.orchestration.tracking run` at once into one sqlite file: every row arrives."""
    results, grid, grid_dir, parent = store
    n_rows = 3000  # per run: 3 keys x 3000 + 300 eval + summary = ~9,300 metrics, 10 log_batch calls
    runs = [grid.run("on_policy", "minirl", 0), grid.run("off_policy_n2", "minirl_r3", 0)]
    dirs = [write_run(grid_dir, r, n_rows) for r in runs]
    procs = [subprocess.Popen([sys.executable, "-m", "rl_core.orchestration.tracking", "run", "--run-dir",
                               str(d), "--parent-file", str(grid_dir / "mlflow_parent.json"), "--out",
                               str(d / "mlflow_run.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for d in dirs]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    client = MlflowClient(parent["tracking_uri"])
    found = {}
    for run, d in zip(runs, dirs, strict=True):
        run_id = json.loads((d / "mlflow_run.json").read_text())["run_id"]
        df = children(parent["tracking_uri"], parent["experiment_id"], run.arm)
        assert run_id in set(df["run_id"])
        found[run.arm] = sum(len(client.get_metric_history(run_id, k)) for k in KEYS)
        assert len(client.get_metric_history(run_id, "eval/score")) == n_rows // 10
    assert found == {"minirl": 3 * n_rows, "minirl_r3": 3 * n_rows}


def test_a_mirror_outwaits_a_writer_that_holds_the_store_past_sqlites_timeout(store):
    """sqlite gives up after 5 s; the mirror then backs off and retries instead of failing. The lock is
    held until the mirror reports its first retry, so the test does not depend on timing."""
    results, grid, grid_dir, parent = store
    d = write_run(grid_dir, grid.run("on_policy", "minirl", 0), 40)
    db = sqlite3.connect(results / "mlflow.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    lines: list[str] = []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rl_core.orchestration.tracking", "run", "--run-dir",
                                 str(d), "--parent-file", str(grid_dir / "mlflow_parent.json"), "--out",
                                 str(d / "mlflow_run.json")], stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.time() + 60
        while not any("mlflow store locked" in line for line in lines) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        db.execute("COMMIT")
        db.close()
    assert proc.wait(timeout=120) == 0, "".join(lines)
    reader.join(timeout=10)
    assert any("mlflow store locked" in line for line in lines)
    run_id = json.loads((d / "mlflow_run.json").read_text())["run_id"]
    assert len(MlflowClient(parent["tracking_uri"]).get_metric_history(run_id, "entropy")) == 40


def test_metric_rows_become_metrics_at_their_step():
    rows = [{"step": 4, "a": 1, "b": None, "ok": True, "name": "x", "perf/time": 10.0},
            {"step": 5, "a/b c": 2.5}]
    ms = T.metric_entities(rows, {"status": "completed", "steps_done": 6, "wall_s": 2}, [1000, 1500], 2000)
    got = {(m.key, m.step): m.value for m in ms}
    assert got[("a", 4)] == 1.0 and math.isnan(got[("b", 4)]) and got[("ok", 4)] == 1.0
    assert got[("a/b c", 5)] == 2.5 and got[("summary/wall_s", 6)] == 2.0
    assert not any(k in ("name", "step", "perf/time") for k, _ in got)
    assert {m.key: m.timestamp for m in ms if m.step == 5} == {"a/b c": 1500}
    assert {m.timestamp for m in ms if m.key.startswith("summary/")} == {2000}
    assert T.metric_key("loss/pg*") == "loss/pg_"


def test_run_times_come_from_the_rows_and_the_summary_wall_time():
    # Rows stamped at 100.0, 101.5, 103.0 s; wall 5.25 s (start-up before the first row included):
    # end = the last row's time, start = end - wall.
    rows = [{"step": i, "perf/time": 100.0 + 1.5 * i} for i in range(3)]
    start, end, stamps = T.run_times(rows, {"wall_s": 5.25}, fallback_end_s=999.0)
    assert (start, end, stamps) == (97_750, 103_000, [100_000, 101_500, 103_000])
    # Rows without perf/time (older runs): end = the fallback (summary.json's mtime), rows spread evenly.
    start, end, stamps = T.run_times([{"step": 0}, {"step": 1}], {"wall_s": 4.0}, fallback_end_s=50.0)
    assert (start, end, stamps) == (46_000, 50_000, [48_000, 50_000])


def test_retry_backs_off_while_locked_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert T.retry(flaky, delay=0.001) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        T.retry(lambda: (_ for _ in ()).throw(ValueError("other")), delay=0.001)


def test_importing_tracking_leaves_torch_out():
    code = "import sys, rl_core.orchestration.tracking; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_grid_command_mirrors_the_parent_and_every_run_in_one_process_then_keeps_them(store):
    """`python -m rl_core.orchestration.tracking grid` (the workflow's one mirror job): every run gets a child
    and its mlflow_run.json; a second call, nothing having changed, rewrites no run."""
    results, grid, grid_dir, parent = store
    runs = [grid.run("on_policy", "minirl_r3", 0), grid.run("off_policy_n2", "minirl_r2", 0)]
    dirs = [write_run(grid_dir, r, 12) for r in runs]
    cmd = [sys.executable, "-m", "rl_core.orchestration.tracking", "grid", "--grid-dir", str(grid_dir),
           "--grid", grid.name, *map(str, dirs)]
    first = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    again = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert (first["runs"], first["mirrored"], again["mirrored"], again["unchanged"]) == (2, 2, 0, 2)
    written = json.loads((grid_dir / "mlflow_parent.json").read_text())
    assert written["parent_run_id"] == parent["parent_run_id"]
    for run, d in zip(runs, dirs, strict=True):
        df = children(parent["tracking_uri"], parent["experiment_id"], run.arm)
        df = df[df["tags.figure"] == run.figure]
        assert list(df["run_id"]) == [json.loads((d / "mlflow_run.json").read_text())["run_id"]]


def test_child_duration_is_the_run_wall_time_and_metrics_carry_training_timestamps(store):
    """Acceptance: MLflow shows the run's training time, not the time it was copied in."""
    results, grid, grid_dir, parent = store
    run = grid.run("on_policy", "minirl", 0)
    d = write_run(grid_dir, run, 10)
    t0 = 1_700_000_000.0  # the run trained long before this mirror
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    (d / "metrics.jsonl").write_text("".join(json.dumps({**r, "perf/time": t0 + 2.5 * i}) + "\n"
                                             for i, r in enumerate(rows)))
    summary = {**json.loads((d / "summary.json").read_text()), "wall_s": 31.234}
    (d / "summary.json").write_text(json.dumps(summary))
    rec = T.mirror_run(d, grid_dir / "mlflow_parent.json")

    info = MlflowClient(parent["tracking_uri"]).get_run(rec["run_id"]).info
    assert info.run_name == "on_policy/minirl/0"
    assert info.end_time == int((t0 + 2.5 * 9) * 1000)  # the last row's time
    assert (info.end_time - info.start_time) / 1000 == pytest.approx(summary["wall_s"], abs=1e-3)
    history = MlflowClient(parent["tracking_uri"]).get_metric_history(rec["run_id"], "reward/mean")
    assert sorted(m.timestamp for m in history) == [int((t0 + 2.5 * i) * 1000) for i in range(10)]
    exp = MlflowClient(parent["tracking_uri"]).get_experiment(parent["experiment_id"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    record = json.loads((grid_dir / "mlflow_parent.json").read_text())
    assert record["ui_path"] == f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def test_the_report_is_logged_into_the_parent_run(store, tmp_path):
    results, grid, grid_dir, parent = store
    for name in ("report.html", "report.md", "stability.csv", "fig_on_policy.png"):
        (tmp_path / name).write_text(name)
    out = subprocess.run([sys.executable, "-m", "rl_core.orchestration.tracking", "report", "--parent-file",
                          str(grid_dir / "mlflow_parent.json"), "--report-dir", str(tmp_path)],
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out)["parent_run_id"] == parent["parent_run_id"]
    logged = {a.path for a in MlflowClient(parent["tracking_uri"]).list_artifacts(parent["parent_run_id"],
                                                                                   "report")}
    assert logged == {"report/report.html", "report/report.md", "report/stability.csv",
                      "report/fig_on_policy.png"}


def _parent(client, exp_id):
    return client.search_runs([exp_id], "tags.role = 'grid'")[0]


def test_the_grid_run_spans_its_children_running_while_they_run_and_after(tmp_path):
    """The grid (parent) run starts when the grid did (the live follower's start), is RUNNING while an arm
    trains, and ends FINISHED no earlier than its last child; each child carries its metric file and its
    rollout samples as tables."""
    from rl_core.orchestration.live import GridFollower

    grid = load_grid(REPO / "experiments" / "smoke.yaml")
    grid_dir = tmp_path / "results" / grid.name
    follower = GridFollower(grid_dir, grid.name, "", time.time() - 1.0)
    d = write_run(grid_dir, grid.run("on_policy", "minirl", 0), 6)
    for name in ("summary.json", "DONE"):  # still training
        (d / name).unlink()
    follower.look()
    record = json.loads((d / "mlflow_live.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    parent, child = _parent(client, record["experiment_id"]), client.get_run(record["run_id"])
    assert (parent.info.status, child.info.status) == ("RUNNING", "RUNNING")
    assert parent.info.start_time <= child.info.start_time

    (d / "samples.jsonl").write_text(
        json.dumps({"kind": "train", "step": 1, "global_step": 1, "prompt": "Q:1+2=", "response": "3",
                    "reward": 1.0, "tokens": ["3", "<eos>"], "log_ratio": [0.5, -2.0],
                    "is_weight": [1.0, 1.0], "clipped": [0, 1], "masked": [0, 0]}) + "\n"
        + json.dumps({"kind": "eval", "step": 0, "problem": 0, "prompt": "Q:2+2=", "response": "4",
                      "reward": 1.0}) + "\n")
    (d / "summary.json").write_text(json.dumps({"status": "completed", "steps_done": 6, "wall_s": 1.5}))
    (d / "DONE").write_text("")
    follower.look()
    T.mirror_grid(grid_dir, grid.name, [d])
    follower.close()
    kid = client.get_run(json.loads((d / "mlflow_run.json").read_text())["run_id"])
    parent = _parent(client, record["experiment_id"])
    assert parent.info.status == "FINISHED" and kid.info.status == "FINISHED"
    assert parent.info.start_time <= kid.info.start_time <= kid.info.end_time <= parent.info.end_time
    artifacts = {a.path for a in client.list_artifacts(kid.info.run_id)} | \
        {a.path for a in client.list_artifacts(kid.info.run_id, "samples")}
    assert {"metrics.jsonl", "samples.jsonl", "samples/train.json", "samples/eval.json"} <= artifacts
    table = json.loads(Path(client.download_artifacts(kid.info.run_id, "samples/train.json", str(tmp_path)))
                       .read_text())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert (row["response"], row["max_abs_log_ratio"], row["clipped_frac"]) == ("3", 2.0, 0.5)


def test_a_grid_run_made_after_its_runs_is_replaced_by_one_that_starts_with_them(tmp_path):
    """A store rebuilt after the runs trained (a deleted mlflow.db, a follower started later): the grid run
    the follower made starts after the runs, so the mirror replaces it; the children move to the new one."""
    grid = load_grid(REPO / "experiments" / "smoke.yaml")
    grid_dir = tmp_path / "results" / grid.name
    late = T.mirror_parent(grid_dir, grid.name, running=True)
    d = write_run(grid_dir, grid.run("on_policy", "minirl", 0), 4)
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    (d / "metrics.jsonl").write_text("".join(json.dumps({**r, "perf/time": 1_700_000_000.0 + i}) + "\n"
                                             for i, r in enumerate(rows)))
    T.mirror_grid(grid_dir, grid.name, [d])
    client = MlflowClient(late["tracking_uri"])
    parent = _parent(client, late["experiment_id"])
    kid = client.get_run(json.loads((d / "mlflow_run.json").read_text())["run_id"])
    assert parent.info.run_id != late["parent_run_id"]
    assert client.get_run(late["parent_run_id"]).info.lifecycle_stage == "deleted"
    assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert json.loads((grid_dir / "mlflow_parent.json").read_text())["parent_run_id"] == parent.info.run_id
    assert parent.info.start_time <= kid.info.start_time <= kid.info.end_time <= parent.info.end_time
    assert parent.info.status == "FINISHED"
def test_a_torn_metrics_line_is_named_not_dropped_silently(tmp_path, capsys):
    """A torn metrics.jsonl mirrored 5 of 8 rows to MLflow with no warning."""
    from rl_core.orchestration.tracking import read_rows

    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": s, "loss/value": 0.1}) for s in range(1, 9)]
    good[3] = good[3][:12]  # torn in the middle (a crash, a full disk)
    path.write_text("\n".join(good) + "\n")
    assert [r["step"] for r in read_rows(path)] == [1, 2, 3, 5, 6, 7, 8]
    err = capsys.readouterr().err
    assert f"warning: {path} line 4: not a JSON object" in err and "not mirrored" in err


def test_a_store_that_is_a_directory_is_named_before_mlflow_opens_it(tmp_path, capsys):
    """mlflow.db as a directory: sqlite's "unable to open database file" after a minute of retries, with a
    traceback; now one line naming the file, at once, exit code 2."""
    from rl_core.cli import guard

    (tmp_path / "mlflow.db").mkdir()
    (tmp_path / "g").mkdir()
    argv = ["parent", "--grid-dir", str(tmp_path / "g"), "--grid", "g", "--out", str(tmp_path / "p.json")]
    assert guard(T.main, argv, errors=(json.JSONDecodeError, KeyError)) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mlflow.db'}: the MLflow store is a directory" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_a_read_only_store_is_named_before_mlflow_opens_it(tmp_path, monkeypatch):
    # As root a chmod does not make a file read-only, so the condition is constructed: the OS reports the
    # store file as not writable (a read-only mount or another owner's file under a normal user).
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    real_access = T.os.access
    monkeypatch.setattr(T.os, "access", lambda p, mode: False if Path(p) == db else real_access(p, mode))
    with pytest.raises(T.UsageError, match=r"mlflow\.db: the MLflow store cannot be written \(.*read-only\)"):
        T.open_client(f"sqlite:///{db}")
