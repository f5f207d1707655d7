"""What a grid costs before it runs: a cost model of the RL step, fitted by `make bench`, in plain Python.

    python -m rl_core.orchestration.grid experiments/paper.yaml --estimate [--cores 2] [--seeds 0,1,2]
        [--preset mini]

Imports no torch (docs/conventions.md §8): rl_core.orchestration.grid calls it while Snakemake builds the
DAG. Seconds are CPU seconds of one thread on the machine `make bench` ran on, i.e. wall seconds of a job
that has a core to itself; on a machine shared with other jobs the wall is longer by the load. The model
(d0 = the width it was measured at, x = d / d0):

    rollout, M rows, up to L new tokens, mean length R:  (L r_step + M R r_row) x^a_roll f_roll[format]
    update, one mini-batch of m rows of P + R tokens:   (u_fixed + m (P + R) u_tok) x^a_train f_train[prec]
    pi_old pass of one mini-batch (mini-batches 2..N):   old_frac x update
    global step (N mini-batches of B x G):              rollout(N B G) + N update + (N - 1) old pass
    eval (fp32 engine, n_problems x k rows):            rollout(n_problems k)
    arm: steps / N global steps + its evals + arm_fixed_s (process start, imports, load, checkpoints, mirror)
    cold start: pretrain_steps + sft_steps per teacher steps of an LM update (x batch_size / cs_batch),
                then an eval of the base and of each cold start

A decode step costs r_step whatever the batch (per-op overhead: the engine is overhead-bound) plus r_row per
live row; R = resp_frac L is the mean response length the bench's cold start samples (the rows that finish
early leave the batch); P is the arithmetic task's mean prompt (a ``task.kind: file`` task's prompts and
vocabulary are not modelled: its estimate is a lower bound). The grid's wall: pretraining (one job, the
other cores idle), the SFTs spread over the cores, then the arms and cold-start evals list-scheduled longest
first onto whichever core frees first (Snakemake's order differs; the report's rendering, a few seconds, is
left out). Jobs that share the machine run slower than the bench's one process (caches and memory bandwidth
are shared): with more than one core, every job after pretraining takes ``busy`` times its modelled time,
``busy`` measured on a whole grid (:data:`DEFAULTS`; `make bench` does not measure it).

An arm of W ranks (``train.world_size``, rl_core.training.distributed) takes W cores for its whole wall time
(the workflow's rule asks for W x train.threads): rank 0 samples and evaluates alone while the others
wait, and the updates and pi_old passes are split W ways. So its wall is rollout + evals + (N updates +
(N - 1) pi_old passes) / W (the gradient all-reduce, sharding and the process start of the extra ranks
are not modelled: a lower bound), and the schedule places it on the W cores that free first, all W busy
until it ends (its core-seconds are W x its wall).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rl_core.paths import REPO

BENCH_JSON = REPO / "results" / "bench" / "bench.json"

#: Committed defaults: `make bench` on this repository's 2-core machine (Intel Xeon with AMX-BF16, 1 thread
#: per job), 2026-11-30 07:03-07:08 UTC, load average 2.7-3.0 from other jobs, the cold start of
#: max_new_tokens 80 (responses 0.61 of it); a newer results/bench/bench.json replaces them.
DEFAULTS = {
    "source": "committed defaults (make bench, 2026-11-30, this machine)",
    "d0": 128, "r_step": 2.00e-3, "r_row": 3.9e-5, "a_roll": 1.38,
    "u_fixed": 0.010, "u_tok": 9.0e-5, "a_train": 1.43, "old_frac": 0.31,
    "f_roll": {"fp32": 1.0, "bf16": 1.31, "fp8_w8a16": 1.30, "fp8": 1.86, "mxfp4": 1.27},
    "f_train": {"fp32": 1.0, "bf16": 1.25},
    "resp_frac": 0.61, "prompt_tokens": 9.1, "arm_fixed_s": 1.7,
    "cs_batch": 32, "pretrain_step_s": 0.137, "sft_step_s": 0.122,
    # The arms' summed wall time (summary.json wall_s, one thread each, two jobs on the two cores) over
    # this model's time for the same arms: a fresh clone's `make reproduce` of the paper grid at commit
    # ee0051f, 2026-11-30 11:43-13:49 UTC, the machine otherwise idle: 1.31 (docs/results.md, "A fresh
    # clone's make reproduce").
    "busy": 1.31,
}


# ------------------------------------------------------------------------------------------- fitting


def _lsq(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares coefficients of ys on the columns of rows (normal equations, Gauss-Jordan)."""
    n = len(rows[0])
    pairs = list(zip(rows, ys, strict=True))
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] + [sum(r[i] * y for r, y in pairs)]
         for i in range(n)]
    for i in range(n):
        p = max(range(i, n), key=lambda k: abs(a[k][i]))
        a[i], a[p] = a[p], a[i]
        for k in range(n):
            if k != i:
                f = a[k][i] / a[i][i]
                a[k] = [x - f * y for x, y in zip(a[k], a[i], strict=True)]
    return [a[i][n] / a[i][i] for i in range(n)]


def _slope_through_origin(xs: list[float], ys: list[float]) -> float:
    """The exponent a of y = x^a fitted in log-log (both already relative to the reference point)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    return sum(a * b for a, b in zip(lx, ly, strict=True)) / sum(a * a for a in lx)


def rollout_part(c: dict, rows: float, L: float, R: float) -> float:
    return L * c["r_step"] + rows * R * c["r_row"]


def update_part(c: dict, rows: float, tokens_per_row: float) -> float:
    return c["u_fixed"] + rows * tokens_per_row * c["u_tok"]


def fit(scaling: dict, rl_step: dict | None = None, arm: dict | None = None) -> dict:
    """Coefficients from bench/scaling.py's result (plus rl_step's old-pass share and response length, and
    the arm's time outside RL steps, where given); DEFAULTS fill what is missing."""
    pts = scaling["points"]
    d0 = pts[0]["d"]
    c = {**DEFAULTS, "source": "make bench", "d0": d0}
    same = [p for p in pts if p["d"] == d0]
    rows_of = lambda p: p["N"] * p["B"] * p["G"]  # noqa: E731
    if len({(p["B"], p["L"]) for p in same}) >= 2:  # two unknowns each: two shapes at least
        c["r_step"], c["r_row"] = _lsq([[p["L"], rows_of(p) * p["L"]] for p in same],
                                       [p["rollout_s"] for p in same])
        upd = [(p["step_s"] - p["rollout_s"]) / p["N"] for p in same]
        toks = [p["B"] * p["G"] * (p["prompt_tokens"] + p["L"]) for p in same]
        c["u_fixed"], c["u_tok"] = _lsq([[1.0, x] for x in toks], upd)
        if c["u_fixed"] < 0:  # no negative fixed cost: through the origin instead
            c["u_fixed"], c["u_tok"] = 0.0, _lsq([[x] for x in toks], upd)[0]
    c["prompt_tokens"] = sum(p["prompt_tokens"] for p in pts) / len(pts)
    wide = [p for p in pts if p["d"] != d0]
    if wide:
        xs = [p["d"] / d0 for p in wide]
        c["a_roll"] = _slope_through_origin(xs, [p["rollout_s"] / rollout_part(c, rows_of(p), p["L"], p["L"])
                                                 for p in wide])
        c["a_train"] = _slope_through_origin(xs, [
            (p["step_s"] - p["rollout_s"]) / p["N"]
            / update_part(c, p["B"] * p["G"], c["prompt_tokens"] + p["L"]) for p in wide])
    fmts = scaling.get("formats") or {}
    if "fp32" in fmts:
        c["f_roll"] = {k: v / fmts["fp32"] for k, v in fmts.items()}
    st, base = scaling.get("stress"), pts[0]
    if st:
        bf16 = (st["step_s"] - st["rollout_s"]) / (base["step_s"] - base["rollout_s"])
        c["f_train"] = {"fp32": 1.0, "bf16": bf16}
    cs = scaling.get("coldstart")
    if cs:
        c.update(cs_batch=cs["batch_size"], pretrain_step_s=cs["pretrain_step_s"],
                 sft_step_s=cs["sft_step_s"])
    ours = [r for r in (rl_step or {}).get("ours", []) if "error" not in r]
    bf16 = [r for r in (rl_step or {}).get("ours_bf16", []) if "error" not in r]
    if ours and bf16:  # more steps than the stress point: the trainer's bf16 factor from these
        c["f_train"] = {"fp32": 1.0, "bf16": _outside_rollout(bf16) / _outside_rollout(ours)}
    if ours:
        spec = rl_step["spec"]
        N, M = spec["N"], spec["N"] * spec["B"] * spec["G"]
        c["resp_frac"] = sum(r["response_tokens_per_step"] for r in ours) / len(ours) / (M * spec["L"])
        if N > 1:
            c["old_frac"] = sum(r["old_logp_s"] / (N - 1) / (r["update_s"] / N) for r in ours) / len(ours)
    if arm and "error" not in arm:
        c["arm_fixed_s"] = (arm["train_wall_s"] - arm["rl_wall_s"] - arm["eval_s_total"]
                            + arm["mirror_share_s"])
    return c


def _outside_rollout(results: list[dict]) -> float:
    """Mean CPU s per global step outside the rollout (its share of the wall split by the step's own
    perf counters) over bench/rl_step_ours.py results."""
    return sum(sum(r["cpus"]) / len(r["cpus"]) * (1 - r["rollout_s"] / r["s_per_global_step"])
               for r in results) / len(results)


def load(path: Path = BENCH_JSON) -> dict:
    """The coefficients `make bench` last wrote to bench.json, else :data:`DEFAULTS`."""
    try:
        fitted = json.loads(Path(path).read_text()).get("cost_model")
    except (OSError, ValueError):
        fitted = None
    return {**DEFAULTS, **fitted} if fitted else dict(DEFAULTS)


# ------------------------------------------------------------------------------------------ predicting


def _width(c: dict, d: int, key: str) -> float:
    return (d / c["d0"]) ** c[key]


def rollout_seconds(c: dict, d: int, rows: int, L: int, fmt: str = "fp32") -> float:
    return rollout_part(c, rows, L, c["resp_frac"] * L) * _width(c, d, "a_roll") * c["f_roll"].get(fmt, 1.0)


def step_seconds(c: dict, d: int, N: int, B: int, G: int, L: int, rollout: str = "fp32",
                 train: str = "fp32", world: int = 1) -> float:
    """One global step: rollout of N x B x G, N updates, N - 1 pi_old passes (see the module docstring),
    the updates and passes split over ``world`` ranks."""
    update = update_part(c, B * G // world, c["prompt_tokens"] + c["resp_frac"] * L) \
        * _width(c, d, "a_train") * c["f_train"].get(train, 1.0)
    return rollout_seconds(c, d, N * B * G, L, rollout) + update * (N + (N - 1) * c["old_frac"])


def n_evals(steps: int, every: int, N: int) -> int:
    """Eval rows an arm writes: step 0, each global step crossing a multiple of `every`, the last
    (rl_core.train.due)."""
    return 1 + sum(1 for s in range(N, steps + 1, N) if s % every < N or s >= steps)


def arm_seconds(c: dict, cfg, busy: float = 1.0) -> dict:
    """cfg: a RunConfig. Global steps, evals and seconds of one arm (times ``busy``: module docstring)."""
    t, r, d = cfg.train, cfg.rollout, cfg.model.hidden_size
    N, L = t.n_minibatches, r.max_new_tokens
    global_steps = t.steps // N
    rl = global_steps * step_seconds(c, d, N, t.batch_prompts, r.group_size, L, r.precision, t.precision,
                                     t.world_size)
    evals = n_evals(t.steps, cfg.eval.every, N)
    # An arm from a grid's cold start (no `init` of its own) takes the cold start's benchmark as its step 0.
    ev = (evals - (0 if cfg.init else 1)) * rollout_seconds(c, d, cfg.eval.n_problems * cfg.eval.k, L)
    rl, ev = rl * busy, ev * busy
    total = rl + ev + c["arm_fixed_s"] * busy
    return {"global_steps": global_steps, "grad_steps": t.steps, "evals": evals, "rl_s": rl, "eval_s": ev,
            "total_s": total, "world_size": t.world_size, "core_s": total * t.world_size}


def _schedule(jobs: list[float], cores: int, load: list[float] | None = None,
              widths: list[int] | None = None) -> list[float]:
    """Each worker's busy time after `jobs` are list-scheduled longest first onto `cores` workers (busy for
    `load` already); a job of width w (default 1) takes the w workers that free first, all of them from
    the latest of their free times to its end. A job wider than the cores is given them all."""
    load = list(load or [0.0] * max(1, cores))
    widths = widths or [1] * len(jobs)
    for j, w in sorted(zip(jobs, widths, strict=True), key=lambda jw: jw[0], reverse=True):
        take = sorted(range(len(load)), key=load.__getitem__)[:min(w, len(load))]
        end = max(load[i] for i in take) + j
        for i in take:
            load[i] = end
    return load


def grid_estimate(grid, cores: int = 2, c: dict | None = None) -> dict:
    """grid: an rl_core.orchestration.grid.Grid. Seconds per stage and the whole grid's wall on `cores`
    cores."""
    c = c or load()
    base = grid.base_config
    d, p = base.model.hidden_size, base.pipeline
    lm_step = p.batch_size / c["cs_batch"] * _width(c, d, "a_train")
    teachers = grid.cold_starts
    pretrain = p.pretrain_steps * c["pretrain_step_s"] * lm_step
    sft = p.sft_steps * c["sft_step_s"] * lm_step
    busy = c.get("busy", 1.0) if cores > 1 else 1.0  # jobs side by side contend for caches and memory
    sft *= busy if len(teachers) > 1 else 1.0
    cs_eval = rollout_seconds(c, d, base.eval.n_problems * base.eval.k, base.rollout.max_new_tokens) * busy
    arms = [(r, arm_seconds(c, r.config, busy)) for r in grid.trained_runs]  # a shared run costs nothing
    # The SFTs first, then the arms and evals onto whichever core frees first (an arm waits for its own
    # cold start only; Snakemake starts it as soon as a core is free).
    after_sft = _schedule([sft] * len(teachers), cores)
    sft_wall = min(after_sft) if teachers else 0.0
    tail_jobs = [a["total_s"] for _, a in arms] + [cs_eval] * (len(teachers) + 1)
    widths = [a["world_size"] for _, a in arms] + [1] * (len(teachers) + 1)
    rl_wall = max(_schedule(tail_jobs, cores, after_sft, widths)) - sft_wall
    return {
        "grid": grid.name, "preset": grid.preset, "runs": len(arms), "seeds": len(grid.seeds), "cores": cores,
        "teachers": teachers, "pretrain_s": pretrain, "sft_s": sft, "sft_wall_s": sft_wall,
        "coldstart_eval_s": cs_eval, "arms": arms, "rl_cpu_s": sum(a["core_s"] for _, a in arms),
        "rl_wall_s": rl_wall, "wall_s": pretrain + sft_wall + rl_wall, "source": c["source"], "busy": busy,
    }


def _clock(s: float) -> str:
    """h:mm:ss, or m:ss below an hour (a minute-long grid is not "0:00")."""
    from rl_core.orchestration.progress import clock

    return f"{clock(s)} {'h:mm:ss' if s >= 3599.5 else 'm:ss'}"


def format_estimate(e: dict) -> str:
    """The --estimate report: per figure, then the stages and the total."""
    lines, by_fig = [], {}
    for r, a in e["arms"]:
        f = by_fig.setdefault(r.figure, {"runs": 0, "steps": 0, "evals": 0, "s": 0.0})
        f["runs"] += 1
        f["steps"] += a["grad_steps"]
        f["evals"] += a["evals"]
        f["s"] += a["core_s"]
    lines.append(f"{'figure':24s} {'runs':>4s} {'grad steps':>10s} {'evals':>5s} {'CPU min':>8s}")
    for name, f in by_fig.items():
        lines.append(f"{name:24s} {f['runs']:4d} {f['steps']:10d} {f['evals']:5d} {f['s'] / 60:8.1f}")
    lines.append(f"cold start: pretrain {e['pretrain_s'] / 60:.1f} min, SFT {e['sft_s'] / 60:.1f} min x "
                 f"{len(e['teachers'])} teacher(s) (first core free after {e['sft_wall_s'] / 60:.1f} min), "
                 f"{len(e['teachers']) + 1} evals {e['coldstart_eval_s']:.1f} s each")
    lines.append(f"RL: {e['runs']} runs ({e['seeds']} seed(s)), {e['rl_cpu_s'] / 60:.0f} CPU min -> "
                 f"{e['rl_wall_s'] / 60:.0f} min on {e['cores']} cores")
    if wide := [a["world_size"] for _, a in e["arms"] if a["world_size"] > 1]:
        lines.append(f"{len(wide)} run(s) of several ranks (train.world_size up to {max(wide)}): each takes "
                     f"that many cores for its wall; CPU min count every rank (communication not modelled)")
    if compiled := sum(r.config.train.compile for r, _ in e["arms"]):
        lines.append(f"{compiled} run(s) with train.compile: estimated as eager (not modelled: faster "
                     f"updates, tens of CPU seconds of compiling per process; docs/results.md, 'make bench')")
    busy = f", jobs {e['busy']:.2f}x slower side by side" if e["busy"] != 1.0 else ""
    lines.append(f"{e['grid']} (preset {e['preset']}): about {_clock(e['wall_s'])} wall on {e['cores']} "
                 f"unloaded cores [coefficients: {e['source']}{busy}]")
    return "\n".join(lines)


__all__ = ["DEFAULTS", "fit", "load", "rollout_seconds", "step_seconds", "n_evals", "arm_seconds",
           "grid_estimate", "format_estimate"]
