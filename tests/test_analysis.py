"""analysis/ on synthetic curves and run folders that follow the trainer's file contract (known answers)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.findings import CENSORED, FindingError, evaluate_findings, validate_findings
from analysis.index import build_index
from analysis.load import load_grid, run_wide
from analysis.report import build_report, main, parse_rule
from analysis.stability import (
    CollapseRule,
    bootstrap_ci,
    collapse,
    iqm,
    kl_break_step,
    score_drop_step,
    stability_arms,
    stability_runs,
)

ROOT = Path(__file__).resolve().parents[1]
EVAL_EVERY = 10



def rising_scores(steps: np.ndarray, rng, noise: float = 0.015) -> np.ndarray:
    """A saturating rise from 0.2 towards 0.6 with measurement noise."""
    return 0.2 + 0.4 * (1 - np.exp(-steps / 80.0)) + rng.normal(0, noise, len(steps))


def steady_kl(n: int, rng, level: float = 1e-3) -> np.ndarray:
    """A noisy but steady per-step KL estimate around `level` (sometimes negative, as k1 can be)."""
    return level + rng.normal(0, level, n)


def make_run(steps: int, rng, collapse_at: int | None = None, kl_break_at: int | None = None,
             base: float = 0.0) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run following the metrics.jsonl contract."""
    t = np.arange(1, steps + 1)
    kl = steady_kl(steps, rng)
    if kl_break_at:
        kl[t >= kl_break_at] = 0.05 * np.exp((t[t >= kl_break_at] - kl_break_at) / 20)
    reward = np.clip(rising_scores(t, rng) + base, 0, 1)
    entropy = 1.5 - 0.3 * t / steps + rng.normal(0, 0.01, steps)
    train = [{"step": int(s), "global_step": int(s), "minibatch": 0, "reward/mean": float(r),
              "entropy/mean": float(e), "kl/train_infer_k1": float(k), "kl/train_infer_k3": abs(float(k)),
              "clip/frac": 0.0} for s, r, e, k in zip(t, reward, entropy, kl, strict=True)]
    eval_steps = np.unique(np.r_[np.arange(0, steps + 1, EVAL_EVERY), steps])
    scores = np.clip(rising_scores(eval_steps, rng) + base, 0, 1)
    if collapse_at is not None:
        scores[eval_steps >= collapse_at] = 0.05
    evals = [{"step": int(s), "eval/score": float(v), "eval/response_length": 40.0 * (1 + 2 * base) + s / 10}
             for s, v in zip(eval_steps, scores, strict=True)]
    return train, evals


def write_run(grid_dir: Path, figure: str, arm: str, seed: int, train: list[dict], evals: list[dict], *,
              label: str | None = None, status: str = "completed", diverged_step: int | None = None,
              done: bool = True, mlflow: str | None = "run-id") -> Path:
    """A run folder exactly as the trainer writes it."""
    run_dir = grid_dir / "runs" / figure / arm / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"model": {}, "task": {}, "rollout": {"precision": "bf16"},
              "train": {"steps": 100, "seed": seed}, "loss": {"objective": "minirl"},
              "replay": {"mode": "none"}, "eval": {"every": EVAL_EVERY},
              "pipeline": {}, "cold_start": "chain", "init": "", "checkpoint_every": 20}
    (run_dir / "config.json").write_text(json.dumps(config))
    meta = {"grid": grid_dir.name, "figure": figure, "figure_title": f"Title of {figure}", "arm": arm,
            "label": label or arm.upper(), "seed": seed, "preset": "smoke", "config_hash": "abc123"}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    rows = sorted(train + evals, key=lambda r: r["step"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": status, "steps_done": max(r["step"] for r in train), "diverged_step": diverged_step,
               "reason": "nan loss" if status == "diverged" else "", "wall_s": 1.5}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if mlflow:  # written by the workflow's MLflow mirror (rl_core.orchestration.tracking)
        (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": mlflow}))
    if done:
        (run_dir / "DONE").write_text("")
    return run_dir


def diverged_run(steps: int, at: int, rng) -> tuple[list[dict], list[dict]]:
    """A run that went NaN at step `at` and stopped there."""
    train, evals = make_run(steps, rng)
    train = [r for r in train if r["step"] <= at]
    for key in ("reward/mean", "entropy/mean", "kl/train_infer_k1"):
        train[-1][key] = math.nan
    return train, [e for e in evals if e["step"] < at]



def test_score_drop_planted_at_step_is_found_at_that_step():
    rng = np.random.default_rng(0)
    for planted in (40, 70, 120):
        steps = np.arange(0, 201, EVAL_EVERY)
        scores = rising_scores(steps, rng)
        after = steps >= planted
        scores[after] = 0.1 + rng.normal(0, 0.015, after.sum())  # falls and stays down
        assert score_drop_step(steps, scores) == planted


def test_noisy_rising_curves_are_not_flagged():
    rng = np.random.default_rng(1)
    for _ in range(50):
        train, evals = make_run(200, rng)
        eval_steps = [e["step"] for e in evals]
        step, cause = collapse(eval_steps, [e["eval/score"] for e in evals], [r["step"] for r in train],
                               [r["kl/train_infer_k1"] for r in train], None)
        assert math.isnan(step) and cause == ""


def test_a_dip_that_recovers_and_a_single_low_last_point_are_not_collapses():
    steps = np.arange(0, 101, 10)
    dip = np.array([0.2, 0.3, 0.4, 0.2, 0.2, 0.38, 0.42, 0.44, 0.45, 0.46, 0.47])
    assert math.isnan(score_drop_step(steps, dip))
    last_low = np.array([0.2, 0.3, 0.4, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.48, 0.2])
    assert math.isnan(score_drop_step(steps, last_low))
    assert score_drop_step(steps, last_low, min_drop_evals=1) == 100


def test_kl_break_is_found_and_spikes_or_steady_high_kl_are_not():
    rng = np.random.default_rng(2)
    steps = np.arange(1, 201)
    kl = steady_kl(200, rng)
    kl[steps >= 77] = 0.05
    assert kl_break_step(steps, kl) == 77
    spike = steady_kl(200, rng)
    spike[[50, 120]] = 0.3
    assert math.isnan(kl_break_step(steps, spike))
    high = steady_kl(200, rng, level=0.03)  # large but steady discrepancy: not a break
    assert math.isnan(kl_break_step(steps, high))


def test_earliest_cause_wins_and_ties_are_named():
    steps = np.arange(0, 101, 10)
    scores = np.r_[np.linspace(0.2, 0.5, 6), [0.1] * 5]  # drop at 60
    kl_steps = np.arange(1, 101)
    kl = np.where(kl_steps >= 40, 0.1, 1e-3)
    assert collapse(steps, scores, kl_steps, kl, None) == (40.0, "kl-break")
    assert collapse(steps, scores, kl_steps, np.full(100, 1e-3), 60) == (60.0, "score-drop+diverged")
    assert collapse(steps, scores, kl_steps, kl, 30) == (30.0, "diverged")
    rule = parse_rule(["score_margin=0.1", "kl_persist=5"])  # the report's --rule overrides
    assert rule == CollapseRule(score_margin=0.1, kl_persist=5)
    assert rule.describe().startswith("score-drop-or-kl-break (score_margin=0.1, ")



def test_iqm_hand_values():
    assert iqm([1, 2, 3, 4]) == 2.5  # drop 1 each end of 4: mean(2, 3)
    assert iqm([100, 1, 3, 2, 4]) == 3.0  # n=5 drops floor(5/4)=1 each end: mean(2, 3, 4)
    assert iqm(np.arange(8)) == 3.5  # drop 2 each end: mean(2, 3, 4, 5)
    assert iqm([1, 5]) == 3.0 and iqm([7]) == 7.0  # n < 4: plain mean
    np.testing.assert_allclose(iqm(np.array([[1, 2, 3, 4], [0, 0, 0, 40]]), axis=1), [2.5, 0.0])


def test_bootstrap_fallbacks_for_few_seeds():
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4, 1, "single seed")
    assert bootstrap_ci([0.2, 0.6, math.nan]) == (pytest.approx(0.4), 0.2, 0.6, 2, "min-max of 2")
    assert bootstrap_ci([]).method == "no data"
    ci = bootstrap_ci([0.1, 0.2, 0.3, 0.4, 0.5])
    assert ci.method == "bootstrap 95%" and ci.lo <= ci.point <= ci.hi


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    # 200 samples of 20 seeds from N(0.3, 0.1); IQM is unbiased for the centre of a symmetric law.
    # Coverage ~ Binomial(200, 0.95)/200 has sd 0.0154; a percentile bootstrap with n=20 under-covers
    # by ~1-2 points, so accept the 3.3-sd band around 0.95 shifted by that: [0.88, 1.0].
    rng = np.random.default_rng(123)
    hits = 0
    for rep in range(200):
        ci = bootstrap_ci(rng.normal(0.3, 0.1, 20), n_boot=1000, seed=rep)
        hits += ci.lo <= 0.3 <= ci.hi
    assert 0.88 <= hits / 200 <= 1.0



def per_run_table(arms: dict[str, list[float]], metric: str = "final_score",
                  figure: str = "fig") -> pd.DataFrame:
    rows = []
    for arm, values in arms.items():
        for seed, v in enumerate(values):
            rows.append({"figure": figure, "arm": arm, "label": arm, "seed": seed, "status": "completed",
                         "steps_done": 200, "planned_steps": 200.0, metric: v, "collapse_step": np.nan,
                         "survival_step": 200.0})
    return pd.DataFrame(rows)


def verdict(item: dict, per_run: pd.DataFrame) -> str:
    item = {"id": "x", "claim": "c", "figure": "fig", **item}
    return evaluate_findings([item], per_run, n_boot=500)["verdict"].iloc[0]


def test_better_verdicts_clear_win_reversed_and_overlapping():
    table = per_run_table({"a": [0.50, 0.51, 0.49, 0.52, 0.50], "b": [0.30, 0.31, 0.29, 0.30, 0.32],
                           "c": [0.22, 0.40, 0.31, 0.35, 0.27]})
    better = {"kind": "better", "metric": "final_score"}
    assert verdict({**better, "better": "a", "worse": "b"}, table) == "agrees"
    assert verdict({**better, "better": "b", "worse": "a"}, table) == "disagrees"
    assert verdict({**better, "better": "c", "worse": "b"}, table) == "inconclusive: CIs overlap"
    assert verdict({**better, "better": "a", "worse": ["b", "c"]}, table) == "agrees"
    assert verdict({**better, "better": "a", "worse": "zzz"}, table) == "inconclusive: missing arms/runs"
    kl = per_run_table({"r3": [1e-3, 1.1e-3, 0.9e-3], "plain": [2e-3, 2.1e-3, 1.9e-3]}, "mean_kl_k3")
    assert verdict({"kind": "better", "metric": "mean_kl", "better": "r3", "worse": "plain"}, kl) == "agrees"
    near = per_run_table({"a": [0.50, 0.51, 0.49], "b": [0.46, 0.47, 0.45]})  # apart, by less than 0.05
    assert verdict({**better, "better": "a", "worse": "b"}, near) == \
        "inconclusive: CIs apart by less than the tolerance"


def test_collapse_order_is_undecided_when_nothing_collapsed():
    """Censored alike (every run at its last step): "later collapse" has no order to find; one collapse
    (the control) makes it an ordinary comparison again."""
    table = per_run_table({"a": [0.5] * 3, "b": [0.5] * 3})
    later = {"kind": "better", "metric": "collapse_step", "better": "a", "worse": "b"}
    assert verdict(later, table) == CENSORED == \
        "inconclusive: no run collapsed (every collapse step is its run's last step)"
    table.loc[table["arm"] == "b", ["collapse_step", "survival_step"]] = 40.0
    assert verdict(later, table) == "agrees"


def test_better_with_one_seed_needs_a_gap_beyond_the_tolerance():
    # One seed per arm: intervals are points, so only a gap larger than the metric's tolerance (0.05 for
    # scores) is an effect; 0.746 vs 0.752 is evaluation noise.
    table = per_run_table({"a": [0.746], "b": [0.752], "c": [0.66]})
    better = {"kind": "better", "metric": "final_score"}
    assert verdict({**better, "better": "a", "worse": "b"}, table) == \
        "inconclusive: one seed per arm (a point, no interval): gap within tolerance"
    assert verdict({**better, "better": "b", "worse": "c"}, table) == "agrees"
    assert verdict({**better, "better": "c", "worse": "a"}, table) == "disagrees"
    wide = {**better, "better": "b", "worse": "c", "tolerance": 0.1}
    assert verdict(wide, table).startswith("inconclusive: one seed per arm")


def test_similar_and_different_verdicts():
    table = per_run_table({"a": [0.50, 0.51, 0.49], "b": [0.51, 0.52, 0.50], "c": [0.30, 0.31, 0.29]})
    similar = {"kind": "similar", "metric": "final_score"}
    different = {**similar, "kind": "different"}
    assert verdict({**similar, "arms": ["a", "b"]}, table) == "agrees"
    assert verdict({**similar, "arms": ["a", "b", "c"]}, table) == "disagrees"
    assert verdict({**different, "arms": ["a", "c"]}, table) == "agrees"
    assert verdict({**different, "arms": ["a", "b"]}, table) == "disagrees"


def test_collapse_votes_and_cross_figure_arms():
    table = per_run_table({"bad": [0, 0, 0], "good": [0, 0, 0], "split": [0, 0]})
    table.loc[table["arm"] == "bad", "collapse_step"] = [40.0, 60.0, 150.0]
    table.loc[(table["arm"] == "split") & (table["seed"] == 0), "collapse_step"] = 80.0
    assert verdict({"kind": "collapses", "arm": "bad"}, table) == "agrees"
    assert verdict({"kind": "stable", "arm": "bad"}, table) == "disagrees"
    assert verdict({"kind": "stable", "arm": "good"}, table) == "agrees"
    assert verdict({"kind": "collapses", "arm": "split"}, table) == "inconclusive: seeds split"
    early = {"kind": "collapses", "arm": "bad", "by_frac": 0.25}
    assert verdict(early, table) == "inconclusive: seeds split"  # 1 of 3 within 50 steps
    table.loc[table["arm"] == "bad", "collapse_step"] = [40.0, np.nan, 150.0]
    assert verdict({"kind": "collapses", "arm": "bad"}, table) == "inconclusive: seeds split"  # 2 of 3
    other = per_run_table({"a": [0.50, 0.51, 0.49]}, figure="fig2")
    both = pd.concat([per_run_table({"a": [0.50, 0.52, 0.49]}), other], ignore_index=True)
    assert verdict({"kind": "similar", "metric": "final_score", "arms": ["a", "fig2/a"]}, both) == "agrees"


def test_a_run_without_done_makes_its_findings_inconclusive():
    table = per_run_table({"a": [0.50, 0.51, 0.49], "b": [0.30, 0.31, 0.29]})
    better = {"kind": "better", "metric": "final_score", "better": "a", "worse": "b"}
    assert verdict(better, table) == "agrees"
    assert verdict({"kind": "stable", "arm": "b"}, table) == "agrees"
    table.loc[(table["arm"] == "b") & (table["seed"] == 2), "status"] = "incomplete"  # still training
    assert verdict(better, table) == "inconclusive: runs not finished (1 of 6)"
    assert verdict({"kind": "stable", "arm": "b"}, table) == "inconclusive: runs not finished (1 of 3)"
    assert verdict({"kind": "stable", "arm": "a"}, table) == "agrees"  # its own runs are all done
    # The grid's seeds: an arm with a seed not run yet is not finished either.
    item = {"id": "x", "claim": "c", "figure": "fig", "kind": "stable", "arm": "a"}
    seeds = evaluate_findings([item], table, n_boot=100, seeds=[0, 1, 2, 3])["verdict"].iloc[0]
    assert seeds == "inconclusive: runs not finished (1 of 4)"


def test_validation_names_the_problem():
    good = {"id": "x", "claim": "c", "figure": "fig", "kind": "stable", "arm": "a"}
    validate_findings([good], {"fig": {"arms": {"a": {}}}})
    for bad, words in [({**good, "kind": "wins"}, "kind"),
                       ({**good, "metric": "peak"}, "unknown key 'metric'"),
                       ({"id": "x", "claim": "c", "figure": "fig", "kind": "better", "metric": "nope",
                         "better": "a", "worse": "a"}, "metric 'nope'"), ([good, good], "duplicate")]:
        with pytest.raises(FindingError, match=words):
            validate_findings(bad if isinstance(bad, list) else [bad])
    with pytest.raises(FindingError, match="fig/zz"):
        validate_findings([{**good, "arm": "zz"}], {"fig": {"arms": {"a": {}}}})


FIG1 = "minirl minirl_length_norm minirl_no_is minirl_r3 minirl_r3_length_norm minirl_r3_no_is".split()
OFF_POLICY = ["minirl_no_clip", "minirl_r2_no_clip", "minirl_r2", "minirl_r3"]
PAPER_ARMS = {"fig1_on_policy": FIG1, "fig1c_on_policy_fp32": FIG1, "fig2_off_policy_n2": OFF_POLICY,
              "fig3_off_policy_n4": OFF_POLICY, "fig4_off_policy_n8": OFF_POLICY[1:],
              "fig5_cold_start": ["cold_terse", "cold_chain", "cold_scratchpad"],
              "fig6_precision_dose": [f"{a}-precision={p}" for a in ("minirl", "minirl_no_is")
                                      for p in ("fp32", "bf16", "fp8_w8a16", "fp8", "mxfp4")]}


def test_paper_findings_are_valid_for_the_paper_grid():
    from rl_core.orchestration.grid import load_grid

    grid = load_grid(ROOT / "experiments" / "paper.yaml")  # validates the findings against the arms as run
    findings = grid.data["findings"]
    assert len(findings) >= 20  # every conclusion of docs/objective.md §11 is stated
    validate_findings(findings, {f: {"arms": dict.fromkeys(arms)} for f, arms in grid.figures.items()})


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory) -> Path:
    """Two figures x two arms x two seeds; `bad` diverges in one seed, `cold` has one incomplete run."""
    grid_dir = tmp_path_factory.mktemp("results") / "toy"
    rng = np.random.default_rng(7)
    for seed in (0, 1):
        write_run(grid_dir, "fig_main", "good", seed, *make_run(100, rng, base=0.1), label="MiniRL",
                  mlflow=f"mlf-good-{seed}")
        if seed == 0:
            write_run(grid_dir, "fig_main", "bad", 0, *diverged_run(100, 55, rng), label="MiniRL - IS",
                      status="diverged", diverged_step=55)
        else:
            write_run(grid_dir, "fig_main", "bad", 1, *make_run(100, rng, collapse_at=40, kl_break_at=35),
                      label="MiniRL - IS", mlflow=None)
        write_run(grid_dir, "fig_cold_start", "cold_a", seed, *make_run(100, rng), label="Cold A")
        write_run(grid_dir, "fig_cold_start", "cold_b", seed, *make_run(100, rng, base=0.3), label="Cold B",
                  done=seed == 0)
    grid = {"name": "toy", "preset": "smoke", "seeds": [0, 1], "base": {},
            "figures": {
                "fig_main": {"title": "Main figure", "arms": {
                    "good": {"label": "MiniRL", "config": {}},
                    "bad": {"label": "MiniRL - IS", "config": {}}}},
                "fig_cold_start": {"title": "Cold starts", "arms": {
                    "cold_a": {"label": "Cold A", "config": {}},
                    "cold_b": {"label": "Cold B", "config": {}}}}},
            "findings": [
                {"id": "is_needed", "claim": "Without IS it collapses", "figure": "fig_main",
                 "kind": "collapses", "arm": "bad"},
                {"id": "good_stable", "claim": "MiniRL is stable", "figure": "fig_main", "kind": "stable",
                 "arm": "good"},
                {"id": "good_outlasts", "claim": "MiniRL outlasts", "figure": "fig_main", "kind": "better",
                 "metric": "collapse_step", "better": "good", "worse": "bad"},
                {"id": "lengths_differ", "claim": "Lengths do not converge", "figure": "fig_cold_start",
                 "kind": "different", "metric": "final_length", "arms": ["cold_a", "cold_b"]},
                {"id": "not_run_yet", "claim": "An arm nobody ran", "figure": "fig_later", "kind": "stable",
                 "arm": "new_arm"}]}
    grid["figures"]["fig_later"] = {"title": "Later figure",
                                    "arms": {"new_arm": {"label": "New", "config": {}}}}
    (grid_dir.parent / "toy.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return grid_dir


def test_load_grid_merges_steps_keeps_nan_and_marks_status(small_grid, tmp_path):
    tidy, runs = load_grid(small_grid)
    assert list(tidy.columns) == ["grid", "figure", "arm", "label", "seed", "step", "metric", "value"]
    assert len(runs) == 8 and set(runs["status"]) == {"completed", "diverged", "incomplete"}
    assert runs.set_index(["arm", "seed"]).loc[("cold_b", 1), "status"] == "incomplete"
    wide = run_wide(tidy, "fig_main", "good", 0)
    assert {"eval/score", "reward/mean"} <= set(wide.columns)
    assert np.isfinite(wide.loc[10, ["eval/score", "reward/mean"]].astype(float)).all()  # merged by step
    bad = run_wide(tidy, "fig_main", "bad", 0)
    assert math.isnan(bad.loc[55, "kl/train_infer_k1"])  # NaN kept, not dropped
    # a truncated last line (run killed mid-write) and a missing meta.json are tolerated
    copy = tmp_path / "g" / "runs" / "f" / "a" / "seed3"
    copy.mkdir(parents=True)
    (copy / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "rew')
    tidy2, runs2 = load_grid(tmp_path / "g")
    assert runs2.iloc[0][["figure", "arm", "seed", "status"]].tolist() == ["f", "a", 3, "incomplete"]
    assert tidy2["step"].tolist() == [1]


def test_diverged_run_counts_as_collapse_at_its_step(small_grid):
    tidy, runs = load_grid(small_grid)
    per_run = stability_runs(tidy, runs).set_index(["arm", "seed"])
    assert per_run.loc[("bad", 0), ["collapse_step", "collapse_cause"]].tolist() == [55, "diverged"]
    assert per_run.loc[("bad", 1), "collapse_step"] == 35  # KL broke before the score fell at 40
    assert per_run.loc[("good", 0), ["collapse_step"]].isna().all()
    arms = stability_arms(per_run.reset_index(), n_boot=200).set_index("arm")
    assert arms.loc["bad", "n_collapsed"] == 2 and arms.loc["bad", "ci_method"] == "min-max of 2"


def test_report_renders_figures_tables_and_findings(small_grid):
    out = small_grid / "report"
    main(["--grid-dir", str(small_grid), "--grid-file", str(small_grid.parent / "toy.yaml"),
          "--out", str(out), "--n-boot", "200"])
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    for text in ("Main figure", "Cold starts", "Peak score", "Max KL", "MiniRL - IS",
                 "Without IS it collapses", "mlf-good-1", 'href="../runs/fig_main/good/seed0/config.json"',
                 "1 incomplete", "diverged"):
        assert text in page, text
    findings = pd.read_csv(out / "findings.csv").set_index("id")["verdict"].to_dict()
    assert findings == {"is_needed": "agrees", "good_stable": "agrees", "good_outlasts": "agrees",
                        "lengths_differ": "inconclusive: runs not finished (1 of 4)",
                        "not_run_yet": "inconclusive: missing arms/runs"}
    assert "No runs of this figure yet" in page and "no runs of new_arm" in page
    assert '<tr class="agree">' in page and "s0@55 (diverged)" in page
    stab = pd.read_csv(out / "stability.csv")
    assert set(stab["arm"]) == {"good", "bad", "cold_a", "cold_b"}
    md = (out / "report.md").read_text()
    assert "![Main figure](fig_fig_main.png)" in md and "| is_needed |" in md
    assert (out / "fig_fig_main.png").stat().st_size > 10_000 and (out / "fig_fig_cold_start.png").exists()
    index = build_index(small_grid.parent, small_grid.parent / "index.html").read_text()
    assert 'href="toy/report/report.html"' in index and "3 agrees, 0 disagrees, 2 inconclusive" in index


def test_report_without_grid_file_and_with_a_single_arm(tmp_path):
    rng = np.random.default_rng(3)
    write_run(tmp_path / "solo", "only_fig", "lonely", 0, *make_run(30, rng))
    starting = tmp_path / "solo" / "runs" / "only_fig" / "lonely" / "seed1"  # just started: no metrics yet
    starting.mkdir()
    (starting / "metrics.jsonl").write_text("")
    html = build_report(tmp_path / "solo", n_boot=50).read_text()
    assert "Title of only_fig" in html and "LONELY" in html and "No findings defined" in html


def test_panel_clips_nonpositive_kl_at_the_floor_and_marks_collapses(small_grid):
    from matplotlib.figure import Figure

    from analysis.plots import KL_FLOOR, PANELS, plot_panel

    tidy, runs = load_grid(small_grid)
    ax = Figure().subplots()
    plot_panel(ax, tidy, "fig_main", PANELS["kl"], ["good", "bad"], {"good": "C0", "bad": "C1"},
               {"good": "MiniRL"}, collapses={"bad": {0: 55.0, 1: 35.0}})
    lines = ax.get_lines()
    assert ax.get_yscale() == "log" and min(line.get_ydata().min() for line in lines) >= KL_FLOOR
    assert sum(line.get_marker() == "x" for line in lines) == 2
    assert ax.get_xlabel() == "gradient step"


def test_analysis_does_not_import_torch():
    code = "import sys, analysis.report, analysis.index; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_a_kl_finding_compares_k3_and_names_its_estimator():
    """k3 (never negative) is the KL every table shows; findings' mean_kl is k3 and says so, and k1 (whose
    means can be negative) is compared only under its own name."""
    from analysis.findings import evaluate_findings

    per_run = per_run_table({"r3": [1e-3, 1.1e-3, 0.9e-3], "plain": [2e-3, 2.1e-3, 1.9e-3]}, "mean_kl_k3")
    per_run["mean_kl_k1"] = [-2e-3, 1e-3, -1e-3, 3e-3, -4e-3, 2e-3]
    items = [{"id": m, "claim": "c", "figure": "fig", "kind": "better", "metric": m, "better": "r3",
              "worse": "plain"} for m in ("mean_kl", "mean_kl_k1")]
    rows = evaluate_findings(items, per_run, n_boot=200).set_index("id")
    assert rows.loc["mean_kl", "test"] == "mean_kl (k3): r3 < plain"
    assert not re.search(r"[[ ]-\d", rows.loc["mean_kl", "numbers"])  # no negative bound
    assert rows.loc["mean_kl", "verdict"] == "agrees"
    assert rows.loc["mean_kl_k1", "test"].startswith("mean_kl_k1: ")
