"""Live tracking: one follower per grid tails every running arm's metrics.jsonl into MLflow.

    python -m rl_core.orchestration.live --grid-dir results/{grid} --grid NAME [--uri URI] [--pid PID]
    python -m rl_core.orchestration.live --grid-dir results/{grid} --grid NAME --run-dir RUN_DIR
        (one arm, by hand)

The workflow starts it when Snakemake starts executing (an ``onstart`` handler, workflow/rules/tracking.smk;
``--config live_tracking=false`` turns it off), beside Snakemake, with ``--pid`` = Snakemake's process: so
that whoever watches a long run sees its curves in ``mlflow ui`` as they grow. One process per grid, not
one per arm: MLflow's import and the store's opening (~2 s of CPU) are paid once per Snakemake invocation,
and each arm costs only its looks (~0.6 s of CPU for a 96-step mini arm, 0.7% of it). The trainer imports
no MLflow and never waits on a store. On a cluster it runs where Snakemake runs (the login node), reading
the run directories on the shared filesystem, so only one process writes the store.

What it writes: every ``--interval`` seconds it looks for run directories whose config.json a trainer
(re)wrote since the follower started. At the first, it opens the store (creating the grid's experiment and
parent run like rl_core.orchestration.tracking.mirror_parent, started when the follower started and
RUNNING until the follower ends, then FINISHED, or KILLED when an arm did not finish; not before: an
invocation that only re-mirrors or reports trains no arm, and its mirror job must be the only one to create
them); for each, a child run of the parent named ``{figure}/{arm}/{seed}`` with the run's params and tags
and ``live=1``, started when its trainer took the run directory's lock, status RUNNING, its id in
RUN_DIR/mlflow_live.json; then the complete rows appended to metrics.jsonl since the last look, as
rl_core.orchestration.tracking mirrors them (at their step and ``perf/time``). An arm's live run ends
FINISHED, after a last look, when its trainer writes DONE; the follower ends when the process ``--pid``
is gone (or, with ``--run-dir``, when that arm is done), leaving arms without DONE as KILLED.

The grid mirror stays the source of truth for the final state: ``rl_core.orchestration.tracking.mirror_run``
finds the live run by its tags, deletes it (its digest never matches) and mirrors the finished files afresh.
Rows a resumed arm drops (past its checkpoint) stay in the live run; the mirror's run has none of them.

Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from rl_core.cli import UsageError, guard
from rl_core.orchestration.watch import alive, mtime


def _complete_lines(path: Path) -> list[bytes]:
    """The lines of `path` that end in a newline (a row being written is left for the next look)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[:data.rfind(b"\n") + 1].splitlines()


class Store:
    """The grid's experiment and parent run in the tracking store, opened once."""

    def __init__(self, grid_dir: Path, grid: str, uri: str = "", start_s: float | None = None):
        from rl_core.orchestration import tracking as T

        # The grid run starts when the grid did (the follower starts with Snakemake) and runs until
        # finish(): RUNNING while its arms train, not FINISHED before its first child starts.
        start_ms = None if start_s is None else int(start_s * 1000)
        self.grid = grid
        self.parent = T.mirror_parent(grid_dir, grid, uri, start_ms=start_ms, running=True)  # under its lock
        self.client = T.open_client(self.parent["tracking_uri"])

    def finish(self, status: str) -> None:
        """End the grid run now (or at its latest child's end, if later)."""
        from rl_core.orchestration import tracking as T

        T.finish_parent(self.client, self.parent["experiment_id"], self.grid, status)


class ArmRun:
    """One arm's live MLflow run; :meth:`poll` logs what the trainer appended since the last call."""

    def __init__(self, store: Store, run_dir: Path):
        from mlflow.entities import Param

        from rl_core.config import flatten
        from rl_core.orchestration import tracking as T

        self.store, self.run_dir, self.logged = store, run_dir, 0
        self.config_mtime = mtime(run_dir / "config.json")
        parent, client = store.parent, store.client
        meta = T.run_meta(run_dir)
        tags = {**T.run_tags(meta, {"status": "running"}, parent["parent_run_id"]), "live": "1",
                "run_dir": str(run_dir)}
        name = f"{meta.get('figure')}/{meta.get('arm')}/{meta.get('seed')}"
        # The trainer's start: its lock (written as it starts) or, without one, its config.json.
        started = [t for t in (mtime(run_dir / ".lock"), self.config_mtime) if t is not None]
        start_ms = int(min(started) * 1000) if started else None
        run = T.retry(client.create_run, parent["experiment_id"], run_name=name, tags=tags,
                      start_time=start_ms)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in flatten(T.read_json(run_dir / "config.json")).items()]
        for chunk in T.chunks(params, T.MAX_PARAMS_PER_BATCH):
            T.retry(client.log_batch, self.run_id, params=chunk)
        T.write_json(run_dir / "mlflow_live.json", {
            "run_id": self.run_id, "experiment_id": parent["experiment_id"],
            "parent_run_id": parent["parent_run_id"], "tracking_uri": parent["tracking_uri"]})

    def poll(self) -> int:
        """Log the complete rows appended since the last poll; returns how many metrics it logged."""
        from rl_core.orchestration import tracking as T

        lines = _complete_lines(self.run_dir / "metrics.jsonl")
        rows = T.parse_rows(lines[min(self.logged, len(lines)):])  # fewer lines: a resumed trainer truncated
        n = 0
        if rows:
            now = time.time()
            stamps = [int(round(1000 * (T.finite_number(r.get("perf/time")) or now))) for r in rows]
            metrics = T.metric_entities(rows, {}, stamps, stamps[-1])
            for chunk in T.chunks(metrics, T.MAX_METRICS_PER_BATCH):
                T.retry(self.store.client.log_batch, self.run_id, metrics=chunk)
            n = len(metrics)
        self.logged = len(lines)  # after logging: a failed look is retried whole
        return n

    def finish(self, status: str) -> None:
        from rl_core.orchestration import tracking as T

        T.retry(self.store.client.set_terminated, self.run_id, status)

    def delete(self) -> None:
        from rl_core.orchestration import tracking as T

        with contextlib.suppress(Exception):
            T.retry(self.store.client.delete_run, self.run_id)


def _say(what: str, e: Exception) -> None:
    print(f"live: {what}: {e}", file=sys.stderr, flush=True)


class GridFollower:
    """Every arm of a grid whose trainer started after this follower did (or only `only`)."""

    def __init__(self, grid_dir: Path, grid: str, uri: str, t0: float, only: Path | None = None):
        self.grid_dir, self.grid, self.uri, self.t0, self.only = grid_dir, grid, uri, t0, only
        self.store: Store | None = None  # opened when the first arm starts (module docstring)
        self.arms: dict[Path, ArmRun] = {}
        self.done: dict[Path, float] = {}  # run dir -> config.json mtime of the arm that finished
        self.metrics = 0

    def _started(self) -> list[Path]:
        """Run dirs whose config.json a trainer wrote since t0 and that are not followed yet. One already
        DONE when first seen (an arm shorter than a look, or a run that links an identical run's files)
        gets no live run: there is nothing left to watch, and the mirror may already have run."""
        dirs = [self.only] if self.only else [p.parent for p in self.grid_dir.glob("runs/*/*/*/config.json")]
        out = []
        for d in dirs:
            m = mtime(d / "config.json")
            if m is None or m < self.t0 or d in self.arms or self.done.get(d) == m:
                continue
            if (mtime(d / "DONE") or 0) >= m:
                self.done[d] = m
            else:
                out.append(d)
        return out

    def look(self) -> None:
        """Start runs for new arms, log new rows, finish the arms whose DONE appeared."""
        started = self._started()
        if started and self.store is None:
            try:
                self.store = Store(self.grid_dir, self.grid, self.uri, self.t0)
            except Exception as e:  # noqa: BLE001 - said, tried again next look
                _say("cannot open the MLflow store", e)
                return
        for d in started:
            try:
                self.arms[d] = ArmRun(self.store, d)
            except Exception as e:  # noqa: BLE001 - a store error: said, tried again next look
                _say(f"cannot start the live run of {d}", e)
        for d, arm in list(self.arms.items()):
            done = (mtime(d / "DONE") or 0) >= (arm.config_mtime or 0)
            try:
                self.metrics += arm.poll()
                if done:
                    arm.finish("FINISHED")
            except Exception as e:  # noqa: BLE001 - the follower never stops an arm
                _say(f"cannot log {d}", e)
                if not done:
                    continue  # tried again next look; a done arm is not (the mirror has it)
            if done:
                self.done[d] = arm.config_mtime
                del self.arms[d]
                if (mtime(d / "mlflow_run.json") or 0) >= (arm.config_mtime or 0):
                    arm.delete()  # the mirror ran before this last look: its run is the final state

    def close(self) -> None:
        """The last look; arms still without DONE end KILLED (their job was cancelled or failed), and so
        does the grid run then (else FINISHED)."""
        self.look()
        for arm in self.arms.values():
            with contextlib.suppress(Exception):
                arm.finish("KILLED")
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.finish("KILLED" if self.arms else "FINISHED")


def follow(grid_dir: Path, grid: str, uri: str = "", interval: float = 5.0, pid: int | None = None,
           only: Path | None = None) -> dict:
    """Follow the grid's arms (or `only`) until process `pid` is gone (or `only` is done)."""
    t0 = time.time() - 1.0  # 1 s: coarse mtimes of a trainer started just before
    follower, next_look = GridFollower(grid_dir, grid, uri, t0, only), 0.0
    while pid is None or alive(pid):
        if time.time() >= next_look:
            follower.look()
            next_look = time.time() + interval
            if only is not None and only in follower.done:
                break
        time.sleep(0.2)
    follower.close()
    return {"arms": len(follower.done) + len(follower.arms), "finished": len(follower.done),
            "metrics": follower.metrics, "status": "ended"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_core.orchestration.live",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--grid-dir", required=True, type=Path, help="results/{grid}")
    ap.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    ap.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
    ap.add_argument("--pid", type=int, help="follow until this process is gone (default: the parent process)")
    ap.add_argument("--run-dir", type=Path, help="follow only this arm, until it is done")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between looks at metrics.jsonl")
    args = ap.parse_args(argv)
    if args.interval <= 0:
        raise UsageError(f"--interval: {args.interval} must be > 0")
    args.grid_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    only = args.run_dir.resolve() if args.run_dir else None
    record = follow(args.grid_dir.resolve(), args.grid, args.uri, args.interval,
                    args.pid if args.pid is not None else os.getppid(), only)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(guard(main))
