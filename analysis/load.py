"""Run files -> tidy frames (pure functions; no torch, no MLflow).

A grid's results live in ``results/{grid}/runs/{figure}/{arm}/seed{seed}/`` and each run directory holds
``config.json``, ``meta.json``, ``metrics.jsonl``, ``summary.json`` and a ``DONE`` marker when finished
(the trainer's file contract). :func:`load_grid` turns them into two frames:

* ``tidy``: one row per (run, step, metric) with columns :data:`TIDY_COLUMNS`. A training row and an eval
  row of the same step are merged by step (their keys differ). A value logged as NaN / Infinity / null
  (a diverged step) is kept as NaN; a key that was never logged has no row.
* ``runs``: one row per run with the meta fields, ``status`` ("completed" | "diverged" | "incomplete"),
  the summary fields, ``run_dir`` and the resolved ``config`` (a dict).

A run whose files are short is reported, not read short in silence: ``warning`` says when metrics.jsonl
has lines that are not valid JSON (a torn write) or when a run that says it completed has fewer training
step rows than its ``train.steps``.

A run without ``DONE`` is loaded and marked ``status="incomplete"`` (``summary_status`` keeps what its
summary said, if anything). Missing meta fields are inferred from the directory names, so a run whose
``meta.json`` was never written still shows up.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TIDY_COLUMNS = ["grid", "figure", "arm", "label", "seed", "step", "metric", "value"]
RUN_COLUMNS = ["grid", "figure", "figure_title", "arm", "label", "seed", "preset", "config_hash", "status",
               "summary_status", "done", "steps_done", "diverged_step", "reason", "wall_s", "mlflow_run_id",
               "n_metric_rows", "warning", "run_dir", "config"]
#: Keys of a metrics row that index it rather than measure something.
INDEX_KEYS = ("step", "global_step", "minibatch")
_SEED_DIR = re.compile(r"^seed(\d+)$")


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when the file is missing or unreadable (a run being written)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _as_float(value: Any) -> float | None:
    """A metric value as float (None/NaN -> NaN); None for values that are not numbers (skipped)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def read_metrics(path: Path) -> pd.DataFrame:
    """Long metrics of one run: columns step, metric, value (one row per step and key).

    Malformed lines (a run killed mid-write) and rows without a step are skipped (:func:`torn_lines`
    counts them, and load_run reports them); when a (step, metric) pair appears twice the later row wins.
    """
    records: list[tuple[int, str, float]] = []
    for line in _lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        step = _as_float(row.get("step")) if isinstance(row, dict) else None
        if step is None or not math.isfinite(step):
            continue
        step = int(step)
        for key, raw in row.items():
            value = None if key in INDEX_KEYS else _as_float(raw)
            if value is not None:
                records.append((step, key, value))
    frame = pd.DataFrame(records, columns=["step", "metric", "value"])
    frame = frame.drop_duplicates(["step", "metric"], keep="last")
    return frame.astype({"step": "int64", "value": "float64"}).reset_index(drop=True)


def _lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []


def torn_lines(path: Path) -> int:
    """Lines of a metrics file that are not a JSON object (a torn or garbled write); blank lines aside."""
    bad = 0
    for line in _lines(path):
        try:
            bad += line.strip() != "" and not isinstance(json.loads(line), dict)
        except ValueError:
            bad += 1
    return bad


def run_warning(metrics: pd.DataFrame, torn: int, done: bool, summary: dict, config: dict) -> str:
    """What is short about a run's files ("" when nothing): torn lines, missing step rows."""
    out = []
    if torn:
        out.append(f"metrics.jsonl: {torn} unreadable line(s) skipped (a torn write)")
    planned = (config.get("train") or {}).get("steps") if isinstance(config, dict) else None
    if done and summary.get("status") == "completed" and isinstance(planned, int):
        train_steps = metrics.loc[~metrics["metric"].str.startswith("eval/"), "step"].drop_duplicates()
        have = int((train_steps > 0).sum())
        if have < planned:
            out.append(f"completed, but metrics.jsonl holds {have} of train.steps={planned} step rows")
    return "; ".join(out)


def meta_from_path(run_dir: Path) -> dict:
    """Meta fields implied by ``.../{grid}/runs/{figure}/{arm}/seed{seed}``."""
    run_dir = Path(run_dir)
    match = _SEED_DIR.match(run_dir.name)
    return {"grid": run_dir.parents[3].name if len(run_dir.parents) > 3 else "",
            "figure": run_dir.parents[1].name, "arm": run_dir.parent.name,
            "seed": int(match.group(1)) if match else -1}


def _status(done: bool, summary_status: str | None) -> str:
    if not done:
        return "incomplete"
    return summary_status if summary_status in ("completed", "diverged") else "completed"


def load_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """One run directory -> (its row of the runs table, its long metrics frame)."""
    run_dir = Path(run_dir)
    meta = {**meta_from_path(run_dir), **(read_json(run_dir / "meta.json") or {})}
    summary = read_json(run_dir / "summary.json") or {}
    metrics = read_metrics(run_dir / "metrics.jsonl")
    done = (run_dir / "DONE").exists()
    train_steps = metrics.loc[~metrics["metric"].str.startswith("eval/"), "step"]
    steps_done = summary.get("steps_done")
    if steps_done is None:
        steps_done = int(train_steps.max()) if len(train_steps) else 0
    row = {
        "grid": str(meta.get("grid", "")), "figure": str(meta["figure"]),
        "figure_title": str(meta.get("figure_title") or meta["figure"]),
        "arm": str(meta["arm"]), "label": str(meta.get("label") or meta["arm"]), "seed": int(meta["seed"]),
        "preset": meta.get("preset"), "config_hash": meta.get("config_hash"),
        "status": _status(done, summary.get("status")), "summary_status": summary.get("status"),
        "done": done, "steps_done": int(steps_done), "diverged_step": summary.get("diverged_step"),
        "reason": summary.get("reason", ""), "wall_s": summary.get("wall_s", np.nan),
        "mlflow_run_id": (read_json(run_dir / "mlflow_run.json") or {}).get("run_id"),
        "n_metric_rows": len(metrics),
        "warning": run_warning(metrics, torn_lines(run_dir / "metrics.jsonl"), done, summary,
                               read_json(run_dir / "config.json") or {}),
        "run_dir": str(run_dir), "config": read_json(run_dir / "config.json") or {},
    }
    return row, metrics


def find_run_dirs(grid_dir: Path) -> list[Path]:
    """Run directories ``runs/{figure}/{arm}/seed{n}`` under `grid_dir`, sorted."""
    runs_root = Path(grid_dir) / "runs"
    if not runs_root.is_dir():
        return []
    return sorted(p for p in runs_root.glob("*/*/seed*") if p.is_dir() and _SEED_DIR.match(p.name))


def load_grid(grid_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All runs of a grid -> ``(tidy, runs)`` (see the module docstring for the columns)."""
    rows, parts = [], []
    for run_dir in find_run_dirs(grid_dir):
        row, metrics = load_run(run_dir)
        if not row["grid"]:
            row["grid"] = Path(grid_dir).name
        rows.append(row)
        if len(metrics):
            parts.append(metrics.assign(**{k: row[k] for k in ("grid", "figure", "arm", "label", "seed")}))
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if parts:
        tidy = pd.concat(parts, ignore_index=True)[TIDY_COLUMNS]
    else:
        tidy = pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object")
                             for c in TIDY_COLUMNS})
    runs = runs.astype({"seed": "int64", "steps_done": "int64"})
    return tidy, runs.sort_values(["figure", "arm", "seed"], ignore_index=True)


def run_wide(tidy: pd.DataFrame, figure: str, arm: str, seed: int) -> pd.DataFrame:
    """One run's metrics as a wide frame: index step (sorted), one column per metric."""
    sel = tidy[(tidy["figure"] == figure) & (tidy["arm"] == arm) & (tidy["seed"] == seed)]
    return wide(sel)


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """Long (step, metric, value) rows of ONE run -> wide frame indexed by step."""
    if long.empty:
        return pd.DataFrame(index=pd.Index([], name="step", dtype="int64"))
    frame = long.drop_duplicates(["step", "metric"], keep="last").pivot(
        index="step", columns="metric", values="value")
    frame.columns.name = None
    return frame.sort_index()


def wide_by_run(tidy: pd.DataFrame) -> dict[tuple[str, str, int], pd.DataFrame]:
    """``{(figure, arm, seed): wide frame}`` for every run with metrics."""
    return {(f, a, int(s)): wide(g) for (f, a, s), g in tidy.groupby(["figure", "arm", "seed"], sort=True)}
