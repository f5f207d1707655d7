"""The grid's progress line: runs done and running, CPU time spent and left, and an ETA that learns.

    python -m rl_core.orchestration.progress --plan results/{grid}/logs/plan.json [--pid PID] [--interval 20]

The workflow writes the plan when Snakemake starts executing (``onstart``, workflow/rules/tracking.smk):
every run it trains, its run directory and its estimate from the cost model
(rl_core.orchestration.cost.arm_seconds, the numbers of ``python -m rl_core.orchestration.grid --estimate``),
the cold start's estimate and the cores. This follower
then prints one line on Snakemake's terminal whenever it changes (at most every ``--interval`` seconds)
and ends with Snakemake (``--pid``):

    [smoke] 3/4 runs done, 1 running | CPU 2:10 spent, ~0:41 left (measured 1.12x the estimate) | ETA 0:41

Spent: the wall time of the runs this invocation finished (summary.json's wall_s; one thread each) plus
the time the running ones have run. Left: each pending run's estimate and each running run's estimate
less its progress (its last metric row's step of train.steps), both times the ratio of measured to
estimated time over the runs finished so far, so the ETA corrects itself as runs finish; the cold start's
estimate is added while its checkpoints are missing. ETA: the time left spread over the cores, never less
than the longest run still to go. Reads files only; imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rl_core.cli import guard
from rl_core.orchestration.watch import alive, mtime


def clock(seconds: float) -> str:
    """m:ss below an hour, h:mm:ss above: a grid of a minute is not "0:00"."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_step(path: Path) -> int:
    """The step of the last complete row of a metrics.jsonl (0 without one)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().split(b"\n")[:-1]
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            continue
    return 0


def status(plan: dict, t0: float, now: float) -> dict:
    """The grid's state from its run directories (module docstring); t0: when this invocation started."""
    done = running = 0
    spent = measured = estimated = 0.0
    pending: list[float] = []
    going: list[tuple[float, float, float]] = []  # (estimate, elapsed, fraction done)
    for run in plan["runs"]:
        d, est = Path(run["dir"]), float(run["est_s"])
        config, finished = mtime(d / "config.json"), mtime(d / "DONE")
        if finished is not None and (config is None or finished >= config):
            done += 1
            if finished >= t0 and (wall := _read(d / "summary.json").get("wall_s")):
                spent += float(wall)
                measured, estimated = measured + float(wall), estimated + est
        elif config is not None and config >= t0:
            running += 1
            start = min(t for t in (mtime(d / ".lock"), config) if t is not None)
            frac = min(_last_step(d / "metrics.jsonl") / max(int(run.get("steps", 1)), 1), 1.0)
            going.append((est, now - start, frac))
            spent += now - start
        else:
            pending.append(est)
    ratio = measured / estimated if estimated > 0 else 1.0
    models = [Path(p) for p in plan.get("coldstart_files", [])]
    coldstart = 0.0 if all(p.exists() for p in models) else float(plan.get("coldstart_s", 0.0)) * ratio
    runs_left = [e * ratio for e in pending] + [max(e * ratio * (1 - f), e * ratio - el, 0.0)
                                                for e, el, f in going]
    left = sum(runs_left) + coldstart
    eta = max(left / max(int(plan.get("cores", 1)), 1), max(runs_left, default=0.0) + coldstart)
    return {"runs": len(plan["runs"]), "done": done, "running": running, "spent_s": spent, "left_s": left,
            "ratio": ratio, "measured": estimated > 0, "eta_s": eta}


def line(plan: dict, s: dict) -> str:
    learnt = f" (measured {s['ratio']:.2f}x the estimate)" if s["measured"] else " (the estimate)"
    return (f"[{plan['grid']}] {s['done']}/{s['runs']} runs done, {s['running']} running | CPU "
            f"{clock(s['spent_s'])} spent, ~{clock(s['left_s'])} left{learnt} | ETA {clock(s['eta_s'])}")


def follow(plan: dict, pid: int | None, interval: float, out=sys.stdout) -> None:
    """Print the line when it changes (looking every `interval` s) until process `pid` is gone."""
    t0, last, said = time.time() - 1.0, "", 0.0
    while pid is None or alive(pid):
        text = line(plan, status(plan, t0, time.time()))
        counts = text.split(" | ")[0]
        if counts != last or time.time() - said >= 10 * interval:  # a change, or a reminder now and then
            print(text, file=out, flush=True)
            last, said = counts, time.time()
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_core.orchestration.progress",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--plan", required=True, type=Path, help="the plan the workflow wrote (logs/plan.json)")
    ap.add_argument("--pid", type=int, help="follow until this process is gone (default: forever)")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between looks")
    args = ap.parse_args(argv)
    follow(json.loads(args.plan.read_text()), args.pid, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(guard(main))
