"""The analysis does not read faults in silence: a non-finite KL or loss is a break, a torn or short
metrics file is a warning in the runs table and the report."""

import json
import math

import numpy as np
import pandas as pd

from analysis.load import load_grid, load_run, torn_lines
from analysis.report import build_report
from analysis.stability import collapse, nonfinite_step, stability_runs

KL = "kl/train_infer_k1"


def long(rows):
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def test_nonfinite_step_is_the_first_logged_nan_or_inf_of_kl_or_loss():
    frame = long([(1, KL, 1e-3), (2, KL, 1e-3), (3, "loss/value", math.inf), (4, KL, math.nan),
                  (2, "eval/score", math.nan)])  # a NaN eval score is not a KL/loss break
    assert nonfinite_step(frame, (KL, "loss/value")) == 3.0
    assert math.isnan(nonfinite_step(long([(1, KL, 1e-3)]), (KL, "loss/value")))


def test_a_nonfinite_kl_collapses_a_run_that_said_completed():
    steps = np.arange(1, 21)
    kl = np.full(20, 1e-3)
    # _finite drops the NaN from the KL series, so the KL-break rule alone would never see it
    step, cause = collapse([0, 10, 20], [0.5, 0.5, 0.5], steps, kl, None, nonfinite=7.0)
    assert (step, cause) == (7.0, "non-finite")
    assert collapse([0, 10, 20], [0.5, 0.5, 0.5], steps, kl, 7, nonfinite=7.0) == (7.0, "diverged")
    assert collapse([0, 10, 20], [0.5, 0.5, 0.5], steps, kl, 9, nonfinite=7.0) == (7.0, "non-finite")


def write_run(root, arm, rows, steps=4, status="completed", tail=""):
    run_dir = root / "runs" / "fig" / arm / "seed0"
    run_dir.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (run_dir / "metrics.jsonl").write_text(text)
    (run_dir / "config.json").write_text(json.dumps({"train": {"steps": steps}}))
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "steps_done": steps}))
    (run_dir / "meta.json").write_text(json.dumps({"grid": "g", "figure": "fig", "arm": arm, "seed": 0}))
    (run_dir / "DONE").write_text("")
    return run_dir


def train_row(step, kl=1e-3, loss=0.1):
    return {"step": step, "minibatch": 1, KL: kl, "loss/value": loss, "reward/mean": 0.5}


def test_torn_and_short_metrics_files_are_reported(tmp_path):
    good = write_run(tmp_path, "good", [{"step": 0, "eval/score": 0.5}, *map(train_row, range(1, 5))])
    torn = write_run(tmp_path, "torn", [train_row(s) for s in range(1, 5)], tail='{"step": 5, "kl/tr')
    short = write_run(tmp_path, "short", [train_row(s) for s in range(1, 3)])
    assert torn_lines(torn / "metrics.jsonl") == 1 and torn_lines(good / "metrics.jsonl") == 0
    assert load_run(good)[0]["warning"] == ""
    assert load_run(torn)[0]["warning"] == "metrics.jsonl: 1 unreadable line(s) skipped (a torn write)"
    assert load_run(short)[0]["warning"] == "completed, but metrics.jsonl holds 2 of train.steps=4 step rows"


def test_a_nan_loss_breaks_and_the_report_lists_the_warnings(tmp_path):
    rows = [train_row(1), train_row(2, loss=math.nan), train_row(3), train_row(4)]
    write_run(tmp_path, "nan", rows)
    write_run(tmp_path, "short", [train_row(1)])
    tidy, runs = load_grid(tmp_path)
    per_run = stability_runs(tidy, runs).set_index("arm")
    assert per_run.loc["nan", "collapse_step"] == 2 and per_run.loc["nan", "collapse_cause"] == "non-finite"
    assert "1 of train.steps=4" in per_run.loc["short", "warning"]
    out = build_report(tmp_path, n_boot=10)
    md = (out.parent / "report.md").read_text()
    assert "## Warnings" in md and "`fig/short/seed0`: completed, but metrics.jsonl holds 1 of" in md
    assert "Warnings: runs whose files are short" in out.read_text()


def test_an_infinite_kl_is_the_max_kl_not_dropped(tmp_path):
    """+Inf KL was dropped from max_kl (the finite rows' max was reported; MLflow shows it as 1.8e308)."""
    rows = [train_row(1), train_row(2, kl=math.inf), train_row(3, kl=2e-3)]
    write_run(tmp_path, "a", [{"step": 0, "eval/score": 0.5}, *rows, {"step": 3, "eval/score": 0.5}], steps=3)
    tidy, runs = load_grid(tmp_path)
    stab = stability_runs(tidy, runs)
    row = stab.iloc[0]
    assert row["max_kl_k1"] == math.inf and row["mean_kl_k1"] == math.inf
