"""Live tracking: a follower that tails one arm's metrics.jsonl into MLflow while the arm runs.

    python -m rl_core.live --run-dir RUN_DIR --grid-dir results/{grid} --grid NAME [--uri URI]

The workflow starts it beside every arm (``rl_run``; ``--config live_tracking=false`` turns it off), so
that whoever watches a long run sees its curves in ``mlflow ui`` as they grow. It costs an arm about 2.5 s
of CPU in all (importing MLflow ~1.2 s, opening the store and creating the run ~0.6 s, the looks ~0.5 s
for a 96-step arm), whatever its length. It runs at the trainer's priority: the job waits for it at the
end anyway, and a lower one only delayed the first curves (by ~60 s at nice 10 on a saturated machine).
It is a separate process, not a thread of the trainer: the trainer imports no MLflow, holds no store
connection and never waits on one; a follower that fails says so in its log and the arm goes on.

What it writes: it opens the store at once (while the trainer loads its model); once the trainer has
(re)written config.json, a child run of the grid's parent
(rl_core.tracking.mirror_parent finds or creates both) named ``{figure}/{arm}/{seed}`` with the run's
params and tags and ``live=1``, status RUNNING; then every ``--interval`` seconds the complete rows appended
to metrics.jsonl since the last look, as rl_core.tracking mirrors them (at their step and ``perf/time``).
Its run id goes to RUN_DIR/mlflow_live.json. It stops, after a last look, when the trainer writes DONE
(the run FINISHED) or when the shell that started it is gone (the job failed or was cancelled: KILLED).

The grid mirror stays the source of truth for the final state: ``rl_core.tracking.mirror_run`` finds
the live run by its tags, deletes it (its digest never matches) and mirrors the finished files afresh.
Rows a resumed arm drops (past its checkpoint) stay in the live run; the mirror's run has none of them.

Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from rl_core.cli import UsageError, guard


def _complete_lines(path: Path) -> list[bytes]:
    """The lines of `path` that end in a newline (a row being written is left for the next look)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[:data.rfind(b"\n") + 1].splitlines()


def _rows(lines: list[bytes]) -> list[dict]:
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@contextlib.contextmanager
def _store_lock(uri: str):
    """Held while a follower opens the store: the first opening of a new sqlite store migrates its schema,
    and two arms starting together must not migrate it at the same time (a server needs no lock)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Follower:
    """One arm's live MLflow run; :meth:`poll` logs what the trainer appended since the last call."""

    def __init__(self, run_dir: Path, grid_dir: Path, grid: str, uri: str = ""):
        self.run_dir, self.grid_dir, self.grid, self.uri = run_dir, grid_dir, grid, uri
        self.run_id: str | None = None
        self.logged = 0  # rows of metrics.jsonl already logged
        self.client = None
        self.parent: dict = {}

    def open(self) -> None:
        """Open the store and find (or create) the grid's experiment and parent run."""
        from rl_core import tracking as T

        with _store_lock(self.uri or T.default_uri(self.grid_dir.parent)):
            self.parent = T.mirror_parent(self.grid_dir, self.grid, self.uri)
        self.client = T.retry(T.MlflowClient, tracking_uri=self.parent["tracking_uri"])

    def start(self) -> str:
        """Create the live child run (params, tags); returns its id."""
        from mlflow.entities import Param

        from rl_core import tracking as T
        from rl_core.config import flatten

        parent = self.parent
        meta = T.run_meta(self.run_dir)
        tags = {**T.run_tags(meta, {"status": "running"}, parent["parent_run_id"]), "live": "1",
                "run_dir": str(self.run_dir)}
        name = f"{meta.get('figure')}/{meta.get('arm')}/{meta.get('seed')}"
        run = T.retry(self.client.create_run, parent["experiment_id"], run_name=name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in flatten(T._read(self.run_dir / "config.json")).items()]
        for chunk in T._chunks(params, T.MAX_PARAMS_PER_BATCH):
            T.retry(self.client.log_batch, self.run_id, params=chunk)
        T._write_json(self.run_dir / "mlflow_live.json", {
            "run_id": self.run_id, "experiment_id": parent["experiment_id"],
            "parent_run_id": parent["parent_run_id"], "tracking_uri": parent["tracking_uri"]})
        return self.run_id

    def poll(self) -> int:
        """Log the complete rows appended since the last poll; returns how many metrics it logged."""
        from rl_core import tracking as T

        lines = _complete_lines(self.run_dir / "metrics.jsonl")
        rows = _rows(lines[min(self.logged, len(lines)):])  # fewer lines: a resumed trainer truncated
        if rows:
            now = time.time()
            stamps = [int(round(1000 * (T._finite(r.get("perf/time")) or now))) for r in rows]
            metrics = T.metric_entities(rows, {}, stamps, stamps[-1])
            for chunk in T._chunks(metrics, T.MAX_METRICS_PER_BATCH):
                T.retry(self.client.log_batch, self.run_id, metrics=chunk)
        self.logged = len(lines)  # after logging: a failed look is retried whole
        return len(metrics) if rows else 0

    def finish(self, status: str) -> None:
        from rl_core import tracking as T

        T.retry(self.client.set_terminated, self.run_id, status)


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _attempts(fn, what: str, n: int = 5) -> bool:
    """fn() until it succeeds, at most n times; every failure is said (a store error never stops the arm)."""
    for attempt in range(n):
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - any store error: say it, retry, then give up quietly
            print(f"live: cannot {what} ({e}); attempt {attempt + 1} of {n}", file=sys.stderr)
            time.sleep(1.0 + attempt)
    return False


def _safe(poll) -> int:
    """A look that fails (a store hiccup) is said and skipped: its rows go with the next look."""
    try:
        return poll()
    except Exception as e:  # noqa: BLE001 - the follower never stops the arm
        print(f"live: {e}", file=sys.stderr)
        return 0


def follow(run_dir: Path, grid_dir: Path, grid: str, uri: str = "", interval: float = 5.0,
           watch_ppid: bool = True) -> dict:
    """Follow one arm until DONE (written after this follower started) or until its parent shell is gone.
    Returns {run_id, metrics, status}."""
    t0, ppid = time.time() - 1.0, os.getppid()  # 1 s: coarse mtimes of a trainer started just before

    def over() -> bool:
        return _fresh(run_dir / "DONE", t0) or (watch_ppid and os.getppid() != ppid)

    follower, n = Follower(run_dir, grid_dir, grid, uri), 0
    # The store first, while the trainer loads its model (a new sqlite store takes seconds to create).
    if not _attempts(follower.open, "open the MLflow store"):
        return {"run_id": None, "metrics": 0, "status": "no store"}
    while not _fresh(run_dir / "config.json", t0):  # the trainer writes it once it has started
        if over():
            return {"run_id": None, "metrics": 0, "status": "not started"}
        time.sleep(min(interval, 0.5))
    for _ in range(20):  # meta.json follows config.json at once (when the workflow gives one)
        if _fresh(run_dir / "meta.json", t0):
            break
        time.sleep(0.1)
    if not _attempts(follower.start, "start the MLflow run"):
        return {"run_id": None, "metrics": 0, "status": "no store"}
    next_look = 0.0
    while not over():  # DONE is checked often, so the arm's job ends right after its trainer
        if time.time() >= next_look:
            n += _safe(follower.poll)
            next_look = time.time() + interval
        time.sleep(0.2)
    n += _safe(follower.poll)
    status = "FINISHED" if (run_dir / "DONE").exists() else "KILLED"
    follower.finish(status)
    return {"run_id": follower.run_id, "metrics": n, "status": status}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_core.live", description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path, help="the arm's run directory")
    ap.add_argument("--grid-dir", required=True, type=Path, help="results/{grid}")
    ap.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    ap.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between looks at metrics.jsonl")
    ap.add_argument("--nice", type=int, default=0, help="added niceness (default 0: the trainer's priority; "
                    "a higher one delays the first curves on a busy machine and saves no CPU)")
    args = ap.parse_args(argv)
    if args.interval <= 0:
        raise UsageError(f"--interval: {args.interval} must be > 0")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.grid_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        os.nice(args.nice)
    except OSError:
        pass
    record = follow(args.run_dir.resolve(), args.grid_dir.resolve(), args.grid, args.uri, args.interval)
    print(json.dumps(record), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(guard(main))
