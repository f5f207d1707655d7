"""One arm end to end: orchestration overhead (wall time outside RL steps) and peak RSS.

    .venv/bin/python bench/arm.py SPEC_JSON      (run by bench/driver.py; prints BENCH_JSON {...})

SPEC: config (a RunConfig tree, `init` included), threads, workdir, grid_runs. Measures, in this order:

1. `python -m rl_core.train --out RUN --config-json CONFIG --meta-json META` as a child process: its wall
   time (process start, imports, model load, evals, RL steps, checkpoints, run files) and its peak RSS
   and CPU seconds (resource.getrusage(RUSAGE_CHILDREN): this process's only child so far); summary.json's
   rl_wall_s is the time inside global steps.
2. The benchmark evals, listed separately: the wall time of each, as the arm's own eval rows record it
   (perf/eval_s).
3. The MLflow mirror of that run as the workflow does it (`python -m rl_core.orchestration.tracking grid`, one
   process per grid) into a fresh sqlite store: the run's own part (runs_s) plus the process's fixed part
   (start, imports, store, parent) shared by the `grid_runs` runs of the grid (SPEC; paper.yaml has 26).
4. Interpreter start (`python -c pass`) and `import rl_core.train` (child wall minus interpreter start).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    py, work = sys.executable, Path(s["workdir"])
    shutil.rmtree(work, ignore_errors=True)  # a finished run would only resume (no steps): start clean
    work.mkdir(parents=True)
    run_dir = work / "runs" / "bench" / "arm" / "seed0"
    meta = {"grid": "bench", "figure": "bench", "arm": "arm", "label": "bench arm", "seed": 0}
    cmd = [py, "-m", "rl_core.train", "--out", str(run_dir), "--config-json", json.dumps(s["config"]),
           "--meta-json", json.dumps(meta)]
    train_wall = wall(cmd)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # this process's only child so far
    peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    train_cpu_s = usage.ru_utime + usage.ru_stime
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval_s = [r["perf/eval_s"] for r in rows if "eval/score" in r]
    ckpt = run_dir / "ckpt" / "state.pt"
    ckpt_bytes = ckpt.stat().st_size if ckpt.exists() else 0

    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    t0 = time.perf_counter()
    proc = subprocess.run([py, "-m", "rl_core.orchestration.tracking", "grid", "--grid-dir",
                           str(work / "runs"), "--grid", "bench", "--uri", uri, str(run_dir)], check=True,
                          capture_output=True, text=True)
    mirror_wall_s = time.perf_counter() - t0
    mirror = json.loads(proc.stdout.splitlines()[-1])
    mirror_share_s = mirror["runs_s"] + (mirror_wall_s - mirror["runs_s"]) / s["grid_runs"]
    python_start_s = min(wall([py, "-c", "pass"]) for _ in range(3))
    import_train_s = min(wall([py, "-c", "import rl_core.train"]) for _ in range(3)) - python_start_s
    emit({
        "train_wall_s": train_wall, "train_cpu_s": train_cpu_s, "rl_wall_s": summary["rl_wall_s"],
        "status": summary["status"],
        "steps": summary["steps_done"], "n_evals": len(eval_s), "eval_s_each": eval_s,
        "eval_s_total": sum(eval_s), "mirror_wall_s": mirror_wall_s, "mirror_run_s": mirror["runs_s"],
        "mirror_share_s": mirror_share_s, "grid_runs": s["grid_runs"],
        "python_start_s": python_start_s, "import_train_s": import_train_s, "peak_rss_mb": peak_rss_mb,
        "checkpoint_mb": ckpt_bytes / 2**20,
    })


if __name__ == "__main__":
    main()
