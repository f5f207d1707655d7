"""Stability margins (analysis.margins, analysis.early_warning, the more_stable finding) on synthetic data
with hand-derived answers, and the report of a tiny stress grid."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from test_analysis import make_run, write_run

from analysis.early_warning import early_warning, reward_collapse_step
from analysis.findings import FindingError, evaluate_findings, validate_findings
from analysis.margins import (
    MarginRules,
    arm_margin,
    compare_margins,
    counts_line,
    critical_x,
    kaplan_meier,
    level_x,
    main,
    margins_table,
    membership,
    sensitivity,
    stress_runs,
)
from analysis.report import build_report, expanded_figures
from rl_core.orchestration.grid import load_grid as load_grid_file

LEVELS = [1.0, 2.0, 4.0, 8.0, 16.0]


# ------------------------------------------------------------------------------------ s*


def test_critical_stress_interpolates_in_log_level():
    # fractions 1, 1, 1/3, 0 on levels 1, 2, 4, 8: first below 1/2 at level 4 (index 2). On the fraction,
    # the line from (log 2, 1) to (log 4, 1/3) reaches 1/2 at t = (1 - 1/2) / (1 - 1/3) = 3/4, so
    # log s* = log 2 + 3/4 (log 4 - log 2) = 1.75 log 2: s* = 2^1.75.
    x, censored = critical_x(np.array([1, 1, 1 / 3, 0]), level_x([1, 2, 4, 8]))
    assert censored == "" and math.exp(x) == pytest.approx(2 ** 1.75, rel=1e-12)
    # never below 1/2: censored above, at the top level; below at once: censored below, at the lowest
    x, censored = critical_x(np.array([1, 1, 2 / 3, 2 / 3]), level_x([1, 2, 4, 8]))
    assert censored == "above" and math.exp(x) == pytest.approx(8)
    x, censored = critical_x(np.array([1 / 3, 1, 1, 1]), level_x([1, 2, 4, 8]))
    assert censored == "below" and math.exp(x) == pytest.approx(1)
    # only the first crossing counts: 1, 0, 1, 0 -> halfway between levels 1 and 2 in log: sqrt(2)
    x, _ = critical_x(np.array([1, 0, 1, 0]), level_x([1, 2, 4, 8]))
    assert math.exp(x) == pytest.approx(math.sqrt(2))
    # a non-numeric stress interpolates on the index: 1, 2/3, 0 -> t = (2/3 - 1/2) / (2/3) = 1/4: x = 1.25
    x, censored = critical_x(np.array([1, 2 / 3, 0]), level_x(["bf16", "fp8", "mxfp4"]))
    assert censored == "" and x == pytest.approx(1.25)
    # a level with no run is skipped: 1, NaN, 0 on 1, 2, 4 -> halfway between 1 and 4 in log: 2
    x, _ = critical_x(np.array([1, np.nan, 0]), level_x([1, 2, 4]))
    assert math.exp(x) == pytest.approx(2)


def test_bootstrap_over_seeds_degenerate_and_covering():
    # every seed survives levels 1, 2, 4 and collapses from 8: every draw is the same, so the interval is
    # the point, s* = sqrt(4 * 8) (halfway in log between 4 and 8, fraction 1 -> 0).
    same = np.tile([1, 1, 1, 0, 0], (3, 1)).astype(float)
    m = arm_margin(same, same, LEVELS)
    assert m["s_star"] == pytest.approx(math.sqrt(32)) and m["s_star_lo"] == m["s_star_hi"] == m["s_star"]
    assert m["s_star_censored"] == "" and not m["lo_censored"] and not m["hi_censored"]
    # seeds break at 4, 8 and 16: fractions 1, 1, 2/3, 1/3, 0 -> s* = sqrt(4 * 8) again (t = 1/2). A draw
    # of seed 0 alone (probability 1/27 = 3.7% > 2.5%) gives sqrt(2 * 4); of seed 2 alone sqrt(8 * 16):
    # those are the interval's ends, and no draw lies outside them.
    staggered = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=float)
    m = arm_margin(staggered, staggered, LEVELS)
    assert m["s_star"] == pytest.approx(math.sqrt(32))
    assert m["s_star_lo"] == pytest.approx(math.sqrt(8)) and m["s_star_hi"] == pytest.approx(math.sqrt(128))
    # two seeds never collapse, one collapses at every level: fraction 2/3 everywhere, censored above; a
    # draw with two or three copies of the third seed (7/27 = 26% of draws) has 1/3 or 0 everywhere,
    # censored below: both ends of the interval are censored.
    split = np.array([[1] * 5, [1] * 5, [0] * 5], dtype=float)
    m = arm_margin(split, split, LEVELS)
    assert m["s_star_censored"] == "above" and m["s_star"] == 16
    assert m["lo_censored"] and m["s_star_lo"] == pytest.approx(1) and m["hi_censored"]


def test_lr_sensitivity_by_hand():
    # final scores, seeds x levels: seed 0 (0.5, 0.6, 0.1), seed 1 (0.5, 0.4, no eval score -> 0): means
    # 0.5, 0.5, 0.05; best 0.5; sensitivity = (0 + 0 + 0.45) / 3 = 0.15.
    runs = pd.DataFrame({
        "figure": "f", "base_arm": "a", "seed": [0, 0, 0, 1, 1, 1], "level_index": [0, 1, 2] * 2,
        "collapse_step": [np.nan, np.nan, 5.0, np.nan, np.nan, 3.0],
        "final_score": [0.5, 0.6, 0.1, 0.5, 0.4, np.nan], "status": "completed"})
    grid = {"figures": {"f": {"stress": {"train.lr": [1e-4, 2e-4, 4e-4]}, "arms": {"a": {}}}}}
    row = margins_table(runs, grid).iloc[0]
    assert row["sensitivity"] == pytest.approx(0.15, abs=1e-12)
    assert row["sensitivity_lo"] <= 0.15 + 1e-12 <= row["sensitivity_hi"] + 2e-12
    assert row["survival"] == "2/2 2/2 0/2"
    # s*: fractions 1, 1, 0 -> halfway between 2e-4 and 4e-4 in log
    assert row["s_star"] == pytest.approx(math.sqrt(8e-8)) and row["rank"] == 1
    assert sensitivity(np.array([0.3, 0.3, 0.3])) == 0


def test_an_unfinished_run_that_has_not_collapsed_is_not_a_survivor():
    # level 2 of seed 1 is still running with no collapse so far: unknown, so the level counts 0 of 1
    # (seed 0's collapse), not 1 of 2; a running run that already collapsed counts as collapsed.
    runs = pd.DataFrame({
        "figure": "f", "base_arm": "a", "seed": [0, 0, 0, 1, 1, 1], "level_index": [0, 1, 2] * 2,
        "collapse_step": [np.nan, np.nan, 5.0, np.nan, 8.0, np.nan],
        "final_score": [0.5, 0.6, 0.1, 0.5, 0.2, 0.4],
        "status": ["completed"] * 4 + ["incomplete", "incomplete"]})
    grid = {"figures": {"f": {"stress": {"train.lr": [1e-4, 2e-4, 4e-4]}, "arms": {"a": {}}}}}
    assert margins_table(runs, grid).iloc[0]["survival"] == "2/2 1/2 0/1"


def test_ranks_are_shared_when_intervals_overlap():
    def row(arm, point, lo, hi, censored="", sens=(0.1, 0.2)):
        return {"figure": "f", "arm": arm, "s_star": point, "s_star_lo": lo, "s_star_hi": hi,
                "s_star_censored": censored, "sensitivity_lo": sens[0], "sensitivity_hi": sens[1]}

    from analysis.margins import rank_arms
    ranked = rank_arms(pd.DataFrame([row("c", 1, 0.5, 1.5, sens=(0.05, 0.09)), row("a", 8, 8, 8, "above"),
                                     row("b", 4, 1.2, 8, sens=(0.3, 0.4))]))
    # a's interval [8, 8] lies above c's [0.5, 1.5] only; b overlaps both; c has a above it -> rank 2
    assert list(ranked["arm"]) == ["a", "b", "c"] and list(ranked["rank"]) == [1, 1, 2]
    assert list(ranked["rank_shared"]) == [True, True, False]
    # lower sensitivity is more stable: c [0.05, 0.09] lies below a [0.1, 0.2], which lies below b [0.3, 0.4]
    assert list(ranked["sens_rank"]) == [2, 3, 1] and not ranked["sens_rank_shared"].any()


# --------------------------------------------------------------------------------- Kaplan-Meier


def test_kaplan_meier_by_hand():
    # times 5, 10, 10, 20, 20 with events T, T, F, F, T: at 5, 5 at risk, 1 event -> 0.8; at 10, 4 at risk,
    # 1 event (the censored run still at risk) -> 0.8 * 3/4 = 0.6; at 20, 2 at risk, 1 event -> 0.3.
    km = kaplan_meier([5, 10, 10, 20, 20], [True, True, False, False, True])
    assert list(km["step"]) == [0, 5, 10, 20] and list(km["at_risk"]) == [5, 5, 4, 2]
    assert km["survival"].to_numpy() == pytest.approx([1, 0.8, 0.6, 0.3])
    assert list(km["censored"]) == [0, 0, 1, 1]


# ------------------------------------------------------------------------------- early warning


def test_reward_collapse_step_by_hand():
    # reward 0.5 for steps 1-6, 0.1 after: 4-step means end at 4..6 with 0.5, at 7 with 0.4, at 8 with 0.3,
    # the first more than 0.15 below the peak 0.5 -> step 8.
    steps = np.arange(1, 11)
    reward = np.r_[[0.5] * 6, [0.1] * 4]
    assert reward_collapse_step(steps, reward, 4, 0.15) == 8
    assert math.isnan(reward_collapse_step(steps, np.full(10, 0.5), 4, 0.15))


def _tidy(rows: dict) -> pd.DataFrame:
    """{(arm, seed): {metric: values over steps 1..n}} -> a tidy frame of figure 'f'."""
    parts = []
    for (arm, seed), metrics in rows.items():
        for metric, values in metrics.items():
            parts.append(pd.DataFrame({"figure": "f", "arm": arm, "seed": seed, "metric": metric,
                                       "step": np.arange(1, len(values) + 1), "value": values}))
    return pd.concat(parts, ignore_index=True)


def test_early_warning_lead_times_false_flags_and_the_kl_exclusion():
    n = 10
    flat, fall = np.full(n, 0.5), np.r_[[0.5] * 6, [0.1] * 4]  # fall: t_c = 8 (test above)
    low = {"reward/mean": flat, "grad/norm": np.r_[np.full(n - 1, 1.0), 2.0],
           "kl/train_infer_k3": np.full(n, 1e-3), "is/ess_frac": np.full(n, 0.9)}
    rows = {
        ("a-lr=1", 0): low,  # the reference runs (lowest level, survived): max grad norm 2 and 1
        ("a-lr=1", 1): {**low, "grad/norm": np.full(n, 1.0)},
        # collapsed by a score drop: grad norm past 1.5 at step 3 (lead 8 - 3 = 5); the ESS (warns low)
        # under its threshold 0.9 at step 9 (late: -1); KL never past 1e-3
        ("a-lr=2", 0): {"reward/mean": fall, "grad/norm": np.r_[1, 1, [3.0] * 8],
                        "kl/train_infer_k3": np.full(n, 1e-3), "is/ess_frac": np.r_[[0.95] * 8, 0.5, 0.5]},
        # collapsed by a KL break, the reward never falls: t_c = the rule's step 6; KL past at step 4 but
        # excluded (part of the rule); grad norm never past
        ("a-lr=2", 1): {"reward/mean": flat, "grad/norm": np.ones(n), "is/ess_frac": np.full(n, 0.95),
                        "kl/train_infer_k3": np.r_[[1e-3] * 3, [5e-2] * 7]},
        # survivor above the lowest level whose grad norm crosses: one false flag of two checked
        ("a-lr=2", 2): {"reward/mean": flat, "grad/norm": np.r_[1, 5.0, [1] * 8]},
        ("a-lr=4", 0): {"reward/mean": flat, "grad/norm": np.ones(n)},
    }
    runs = pd.DataFrame({
        "figure": "f", "arm": [k[0] for k in rows], "seed": [k[1] for k in rows], "base_arm": "a",
        "level": [1, 1, 2, 2, 2, 4], "level_index": [0, 0, 1, 1, 1, 2],
        "collapse_step": [np.nan, np.nan, 16.0, 6.0, np.nan, np.nan],
        "collapse_cause": ["", "", "score-drop", "kl-break", "", ""]})
    leads, table = early_warning(_tidy(rows), runs, MarginRules(warning_percentile=50))
    by = table.set_index("diagnostic")
    # grad norm: threshold = median of the reference maxima (2, 1) = 1.5
    g = by.loc["grad/norm"]
    assert g["threshold"] == 1.5 and g["n_reference"] == 2
    assert (g["collapses"], g["flagged"], g["never"], g["missed"]) == (2, 1, 1, 1)
    assert g["lead_median"] == 5 and (g["false_flags"], g["surviving_checked"]) == (1, 2)
    kl = by.loc["kl/train_infer_k3"]
    assert (kl["excluded"], kl["collapses"], kl["never"], kl["flagged"]) == (1, 1, 1, 0)
    ess = by.loc["is/ess_frac"]
    assert ess["direction"] == "low" and ess["threshold"] == 0.9
    assert (ess["late"], ess["lead_median"]) == (1, -1)
    assert ess["false_flags"] == 0 and ess["surviving_checked"] == 0  # the survivors never logged the ESS
    kl_run = leads[(leads["arm"] == "a-lr=2") & (leads["seed"] == 1)].iloc[0]
    assert kl_run["t_c"] == 6 and kl_run["t_c_source"] == "rule"
    assert "clip/frac" not in set(table["diagnostic"])  # not logged: skipped


# ---------------------------------------------------------------------------------- replication


def _margins(rows):
    return pd.DataFrame([{"figure": f, "arm": a, "s_star": p, "s_star_lo": lo, "s_star_hi": hi,
                          "s_star_censored": c} for f, a, p, lo, hi, c in rows])


def test_compare_counts_kept_lost_and_flipped(tmp_path, capsys):
    a = _margins([("f", "x", 5.5, 5, 6, ""), ("f", "y", 1.5, 1, 2, ""), ("f", "z", 3, 1.5, 5.5, ""),
                  ("g", "p", 8, 7, 8, "above"), ("g", "q", 2, 1, 3, ""), ("g", "r", 2, 1, 3, "")])
    # separated in A: x > y (5 > 2), p > q and p > r (7 > 3); x-z, z-y and q-r overlap
    b = _margins([("f", "x", 5.5, 5, 6, ""), ("f", "y", 1.5, 1, 2, ""), ("f", "z", 3, 1, 6, ""),
                  ("g", "p", 2, 1, 3, ""), ("g", "q", 4, 3.5, 5, ""), ("g", "r", 2, 1, 3, "")])
    table, counts = compare_margins(a, b)
    # in B: x > y still separated; p < q with separation (flipped); p = r (2 vs 2, overlapping): order lost
    assert dict(zip(zip(table["higher"], table["lower"], strict=True), table["outcome"], strict=True)) == {
        ("x", "y"): "kept, separated", ("p", "q"): "flipped", ("p", "r"): "kept order, not separated"}
    assert counts_line(counts) == ("pairs separated in A: 3; in B: 1 kept the order with separation, 1 kept "
                                   "the order without separation, 1 flipped")
    for name, frame in (("a.csv", a), ("b.csv", b)):
        frame.to_csv(tmp_path / name, index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                 "--out", str(tmp_path / "c.md")]) == 0
    assert "1 flipped" in capsys.readouterr().out
    assert "| s* | g | p | q | flipped |" in (tmp_path / "c.md").read_text()


def test_compare_counts_lr_sensitivity_orderings_too():
    # LR sensitivity: lower is more stable. In A, x (0.10 [0.09, 0.11]) is separated from y (0.20 [0.18,
    # 0.22]); their s* intervals overlap. In B the sensitivity order flips with separation.
    rows = [("f", "x", 3, 1, 5, ""), ("f", "y", 3, 1, 5, "")]
    a = _margins(rows).assign(sensitivity=[0.10, 0.20], sensitivity_lo=[0.09, 0.18],
                              sensitivity_hi=[0.11, 0.22])
    b = _margins(rows).assign(sensitivity=[0.25, 0.12], sensitivity_lo=[0.24, 0.11],
                              sensitivity_hi=[0.26, 0.13])
    table, counts = compare_margins(a, b)
    assert table.to_dict("records") == [{"margin": "LR sensitivity", "figure": "f", "higher": "x",
                                         "lower": "y", "outcome": "flipped"}]
    assert counts["flipped"] == 1 and sum(counts.values()) == 1


# ------------------------------------------------------------------------------- more_stable


def test_more_stable_verdicts():
    margins = pd.DataFrame([
        {"figure": "f", "arm": a, "s_star": p, "s_star_lo": lo, "s_star_hi": hi, "s_star_censored": c,
         "lo_censored": False, "hi_censored": c == "above", "n_seeds": 3, "numeric": True,
         "levels": "1 2 4 8"}
        for a, p, lo, hi, c in [("hi", 8, 8, 8, "above"), ("mid", 3, 2.5, 3.5, ""), ("wide", 3, 1, 8, ""),
                                ("low", 1.5, 1.2, 2, ""), ("hi2", 8, 8, 8, "above")]])
    per_run = pd.DataFrame([{"figure": "f", "arm": f"{a}-lr={lv}", "base_arm": a, "seed": s,
                             "status": "completed"} for a in margins["arm"] for lv in (1, 2, 4, 8)
                            for s in (0, 1, 2)])

    def verdict(more, less):
        item = {"id": "x", "claim": "c", "figure": "f", "kind": "more_stable", "more": more, "less": less}
        return evaluate_findings([item], per_run, seeds=[0, 1, 2], margins=margins).iloc[0]

    assert verdict("hi", "mid")["verdict"] == "agrees"  # [8, 8] (censored above the top) vs [2.5, 3.5]
    assert verdict("low", "mid")["verdict"] == "disagrees"
    assert verdict("wide", "mid")["verdict"] == "inconclusive: CIs overlap"
    assert verdict("hi", "hi2")["verdict"] == "inconclusive: no arm broke within the stress levels"
    row = verdict("hi", "mid")
    assert row["test"] == "critical stress: hi > mid" and "> 8.00e+00" in row["numbers"]
    assert evaluate_findings([{"id": "x", "claim": "c", "figure": "f", "kind": "more_stable", "more": "hi",
                               "less": "mid"}], per_run, margins=None).iloc[0]["verdict"].startswith(
        "inconclusive: missing")
    unfinished = per_run[~((per_run["base_arm"] == "mid") & (per_run["arm"] == "mid-lr=8")
                           & (per_run["seed"] == 2))]
    item = {"id": "x", "claim": "c", "figure": "f", "kind": "more_stable", "more": "hi", "less": "mid"}
    assert evaluate_findings([item], unfinished, seeds=[0, 1, 2], margins=margins).iloc[0]["verdict"] == \
        "inconclusive: runs not finished (1 of 24)"


def test_more_stable_names_base_arms_of_stress_figures():
    grid = {"figures": {"s": {"stress": {"train.lr": [1e-4, 2e-4]}, "arms": {"a": {"label": "A"},
                                                                           "b": {"label": "B"}}},
                        "plain": {"arms": {"a": {"label": "A"}}}}}
    figures = expanded_figures(grid)
    assert set(figures["s"]["arms"]) == {"a-lr=0.0001", "a-lr=0.0002", "b-lr=0.0001", "b-lr=0.0002"}
    ok = {"id": "m", "claim": "c", "figure": "s", "kind": "more_stable", "more": "a", "less": "b"}
    validate_findings([ok], figures)
    with pytest.raises(FindingError, match="without the stress level"):
        validate_findings([{**ok, "more": "a-lr=0.0001"}], figures)
    with pytest.raises(FindingError, match="has none"):
        validate_findings([{**ok, "figure": "plain", "more": "a", "less": "a"}], figures)
    stress = load_grid_file("experiments/stress.yaml")  # the committed findings validate in the grid loader
    kinds = {f["id"]: f["kind"] for f in stress.data["findings"]}
    assert kinds["s2_r3_over_r2_n4"] == "more_stable" and len(kinds) == 4


@pytest.mark.parametrize("path", ["experiments/stress_more.yaml", "experiments/stress_corrections.yaml"])
def test_more_stress_grids_share_the_levels_and_rules(path):
    main_grid = yaml.safe_load(open("experiments/stress.yaml"))
    grid = load_grid_file(path)
    assert grid.data["margins"] == main_grid["margins"]
    assert grid.data["base"]["eval"] == main_grid["base"]["eval"]
    lr = main_grid["figures"]["s1_is_weight_lr"]["stress"]["train.lr"]
    for fig in grid.data["figures"].values():
        assert fig["stress"].get("train.lr", lr) == lr


# ------------------------------------------------------------------------------------- membership


def test_membership_reads_levels_from_the_grid_and_the_configs():
    grid = {"figures": {"s": {"stress": {"train.lr": [1e-4, 2e-4]},
                              "axes": {"rollout.precision": ["bf16"]}, "arms": {"a": {"label": "A"}}}}}
    runs = pd.DataFrame([
        {"figure": "s", "arm": "a-precision=bf16-lr=0.0001", "seed": 0, "config": {"train": {"lr": 1e-4}}},
        {"figure": "s", "arm": "a-precision=bf16-lr=0.0002", "seed": 0, "config": {}},  # the plan's level
        {"figure": "s", "arm": "a-precision=bf16-lr=0.0002", "seed": 1, "config": {"train": {"lr": 3e-4}}},
        {"figure": "s", "arm": "stale", "seed": 0, "config": {}}])
    members = membership(runs, grid)
    assert list(members["base_arm"]) == ["a-precision=bf16"] * 2 and list(members["level_index"]) == [0, 1]
    assert list(members["seed"]) == [0, 0]
    per_run = runs[["figure", "arm", "seed"]].assign(collapse_step=np.nan)
    assert len(stress_runs(per_run, members)) == 2


# -------------------------------------------------------------------------------------- report


def test_report_of_a_tiny_stress_grid(tmp_path):
    """Two base arms x three learning rates x two seeds: `fragile` collapses from the middle level."""
    grid_dir = tmp_path / "tiny_stress"
    rng = np.random.default_rng(3)
    levels = [1e-4, 2e-4, 4e-4]
    for arm in ("sturdy", "fragile"):
        for i, lr in enumerate(levels):
            for seed in (0, 1):
                collapse = arm == "fragile" and i >= 1
                run = write_run(grid_dir, "s1", f"{arm}-lr={lr:g}", seed,
                                *make_run(60, rng, collapse_at=30 if collapse else None,
                                          kl_break_at=25 if collapse else None), label=arm)
                cfg = (run / "config.json").read_text().replace('"steps": 100', f'"steps": 60, "lr": {lr}')
                (run / "config.json").write_text(cfg)
    grid = {"name": "tiny_stress", "preset": "smoke", "seeds": [0, 1], "base": {},
            "margins": {"survival_threshold": 0.5, "warning_percentile": 99, "reward_window": 4,
                        "reward_margin": 0.15},
            "figures": {"s1": {"title": "Stress figure", "stress": {"train.lr": levels},
                               "arms": {"sturdy": {"label": "Sturdy"}, "fragile": {"label": "Fragile"}}}},
            "findings": [{"id": "sturdier", "claim": "sturdy outlasts fragile", "figure": "s1",
                          "kind": "more_stable", "more": "sturdy", "less": "fragile"}]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    out = build_report(grid_dir, tmp_path / "grid.yaml", tmp_path / "report", n_boot=200).parent
    margins = pd.read_csv(out / "margins.csv").set_index("arm")
    # fragile: fractions 1, 0, 0 -> halfway in log between 1e-4 and 2e-4; sturdy never breaks
    assert margins.loc["fragile", "s_star"] == pytest.approx(math.sqrt(2e-8))
    assert margins.loc["sturdy", "s_star_censored"] == "above"
    assert pd.read_csv(out / "findings.csv").iloc[0]["verdict"] == "agrees"
    page = (out / "report.html").read_text()
    for text in ("Stability margins", "Critical stress", "Early warning", "LR sensitivity"):
        assert text in page, text
    assert (out / "fig_s1_margins.png").stat().st_size > 10_000
    assert "fig_s1_margins.png" in (out / "report.md").read_text()
