"""Early warning: which logged diagnostic crosses its threshold first, and how many steps before a collapse.

Pure functions on analysis.load's tidy frame and analysis.margins' stress runs. Definitions (the grid file's
``margins:`` rules, analysis.margins.MarginRules, give the numbers):

* **per-step collapse time t_c** of a run that collapsed by analysis.stability's rule: the first gradient
  step at which the trailing mean of ``reward/mean`` over ``reward_window`` steps (full windows only) is
  more than ``reward_margin`` below its running peak. Evaluations every 8 steps are too coarse to time a
  warning against; the training reward is logged every step. When the rule found a collapse but the reward
  never falls that far (a KL break with the reward holding), t_c is the rule's collapse step and the run
  is flagged (``t_c_source = "rule"``). Resolution: one gradient step.
* **diagnostics** with the direction in which they warn (:data:`DIAGNOSTICS`); one a run never logged is
  skipped.
* **threshold** per (figure, diagnostic), fixed by the runs that define "normal": the
  ``warning_percentile`` percentile (numpy's linear interpolation), over the figure's runs at its LOWEST
  stress level that survived, of each run's most extreme value (its max for "high", its min for "low").
* **crossing**: the first step whose value is above the threshold ("high") or below it ("low").
  **lead time** = t_c - crossing step, in gradient steps: positive = warned before the collapse.
* A diagnostic that is part of the collapse rule cannot warn of it: for a run whose collapse cause includes
  the KL break, the train-inference KL diagnostics (``kl/train_infer_*``) are excluded.
* per diagnostic (:func:`warning_table`): collapses it could judge, ``flagged`` (crossed before t_c),
  ``late`` (first crossed at or after t_c), ``never`` (never crossed), ``missed`` = late + never,
  ``excluded`` (KL rule); the median and interquartile range of the lead over the collapses in which it
  crossed at all (signed: a negative median lags the collapse); and ``false_flags``: surviving runs at
  the levels above the lowest in which it crossed, out of ``surviving_checked``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import wide_by_run
from analysis.margins import MarginRules

REWARD = "reward/mean"
#: (metric, direction): "high" warns when the value rises past its threshold, "low" when it falls below.
DIAGNOSTICS = (("kl/train_infer_k3", "high"), ("kl/staleness_k3", "high"),
               ("ratio/discrepancy_max_abs_log", "high"), ("ratio/staleness_max_abs_log", "high"),
               ("is/ess_frac", "low"), ("clip/frac", "high"), ("grad/norm", "high"),
               ("entropy/mean", "high"), ("response/length_mean", "high"))
#: Diagnostics that measure what the collapse rule's KL break measures.
KL_RULE_PREFIX = "kl/train_infer"


def _finite(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if column not in frame:
        return np.array([]), np.array([])
    s = frame[column].dropna()
    s = s[np.isfinite(s.to_numpy(dtype=float))]
    return s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)


def reward_collapse_step(steps, reward, window: int = 4, margin: float = 0.15) -> float:
    """First step at which the trailing `window`-step mean of the reward is more than `margin` below its
    running peak (NaN when never)."""
    s, r = np.asarray(steps, dtype=float), np.asarray(reward, dtype=float)
    if len(r) < window:
        return np.nan
    mean = np.convolve(r, np.ones(window) / window, mode="valid")  # mean[i] ends at step s[i + window - 1]
    fired = np.flatnonzero(mean < np.maximum.accumulate(mean) - margin)
    return float(s[fired[0] + window - 1]) if len(fired) else np.nan


def extreme(values, direction: str) -> float:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.nan
    return float(values.max() if direction == "high" else values.min())


def first_crossing(steps, values, threshold: float, direction: str) -> float:
    """First step whose value is past `threshold` in `direction` (NaN when never)."""
    v = np.asarray(values, dtype=float)
    past = v > threshold if direction == "high" else v < threshold
    hits = np.flatnonzero(past)
    return float(np.asarray(steps, dtype=float)[hits[0]]) if len(hits) else np.nan


def thresholds(frames: dict, runs: pd.DataFrame, percentile: float = 99.0) -> pd.DataFrame:
    """Per (figure, diagnostic): the threshold from the figure's surviving runs at its lowest level."""
    rows = []
    for fig_key, group in runs.groupby("figure", sort=False):
        ref = group[(group["level_index"] == group["level_index"].min()) & group["collapse_step"].isna()]
        for metric, direction in DIAGNOSTICS:
            ext = [extreme(_finite(frames.get((fig_key, r.arm, int(r.seed)), pd.DataFrame()), metric)[1],
                           direction) for r in ref.itertuples(index=False)]
            ext = np.array([e for e in ext if np.isfinite(e)])
            if len(ext):
                rows.append({"figure": fig_key, "diagnostic": metric, "direction": direction,
                             "threshold": float(np.percentile(ext, percentile)), "n_reference": len(ext)})
    return pd.DataFrame(rows, columns=["figure", "diagnostic", "direction", "threshold", "n_reference"])


def collapse_times(frames: dict, runs: pd.DataFrame, rules: MarginRules | None = None) -> pd.DataFrame:
    """t_c (and its source, "reward" or "rule") of every run the collapse rule found collapsed."""
    rules, rows = rules or MarginRules(), []
    for r in runs[runs["collapse_step"].notna()].itertuples(index=False):
        steps, reward = _finite(frames.get((r.figure, r.arm, int(r.seed)), pd.DataFrame()), REWARD)
        t_c = reward_collapse_step(steps, reward, rules.reward_window, rules.reward_margin)
        source = "reward" if np.isfinite(t_c) else "rule"
        rows.append({"figure": r.figure, "arm": r.arm, "seed": int(r.seed), "base_arm": r.base_arm,
                     "level": r.level, "collapse_cause": r.collapse_cause, "rule_step": r.collapse_step,
                     "t_c": t_c if np.isfinite(t_c) else float(r.collapse_step), "t_c_source": source})
    return pd.DataFrame(rows, columns=["figure", "arm", "seed", "base_arm", "level", "collapse_cause",
                                       "rule_step", "t_c", "t_c_source"])


def lead_times(frames: dict, collapses: pd.DataFrame, limits: pd.DataFrame) -> pd.DataFrame:
    """One row per (collapsed run, diagnostic with a threshold in its figure): crossing step, lead, outcome
    ("flagged" / "late" / "never" / "excluded")."""
    rows = []
    for c in collapses.itertuples(index=False):
        frame = frames.get((c.figure, c.arm, int(c.seed)), pd.DataFrame())
        for lim in limits[limits["figure"] == c.figure].itertuples(index=False):
            steps, values = _finite(frame, lim.diagnostic)
            if len(values) == 0:
                continue
            cross = first_crossing(steps, values, lim.threshold, lim.direction)
            lead = c.t_c - cross
            if lim.diagnostic.startswith(KL_RULE_PREFIX) and "kl-break" in str(c.collapse_cause):
                outcome = "excluded"
            else:
                outcome = "never" if not np.isfinite(cross) else ("flagged" if lead > 0 else "late")
            rows.append({"figure": c.figure, "arm": c.arm, "seed": c.seed, "diagnostic": lim.diagnostic,
                         "t_c": c.t_c, "t_c_source": c.t_c_source, "cross_step": cross, "lead": lead,
                         "outcome": outcome})
    return pd.DataFrame(rows, columns=["figure", "arm", "seed", "diagnostic", "t_c", "t_c_source",
                                       "cross_step", "lead", "outcome"])


def false_flags(frames: dict, runs: pd.DataFrame, limits: pd.DataFrame) -> pd.DataFrame:
    """Per (figure, diagnostic): surviving runs above the lowest level checked, and those that crossed."""
    rows = []
    for lim in limits.itertuples(index=False):
        group = runs[runs["figure"] == lim.figure]
        alive = group[(group["level_index"] > group["level_index"].min()) & group["collapse_step"].isna()]
        checked = crossed = 0
        for r in alive.itertuples(index=False):
            frame = frames.get((r.figure, r.arm, int(r.seed)), pd.DataFrame())
            steps, values = _finite(frame, lim.diagnostic)
            if len(values):
                checked += 1
                crossed += bool(np.isfinite(first_crossing(steps, values, lim.threshold, lim.direction)))
        rows.append({"figure": lim.figure, "diagnostic": lim.diagnostic, "surviving_checked": checked,
                     "false_flags": crossed})
    return pd.DataFrame(rows, columns=["figure", "diagnostic", "surviving_checked", "false_flags"])


def warning_table(leads: pd.DataFrame, limits: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """One row per (figure, diagnostic): the counts and lead statistics of the module docstring."""
    rows = []
    for lim in limits.itertuples(index=False):
        sel = leads[(leads["figure"] == lim.figure) & (leads["diagnostic"] == lim.diagnostic)]
        count = sel["outcome"].value_counts()
        judged = sel[sel["outcome"] != "excluded"]
        crossed = judged.loc[np.isfinite(judged["cross_step"].to_numpy(dtype=float)), "lead"].to_numpy(float)
        q1, med, q3 = np.percentile(crossed, [25, 50, 75]) if len(crossed) else (np.nan,) * 3
        ff = flags[(flags["figure"] == lim.figure) & (flags["diagnostic"] == lim.diagnostic)]
        rows.append({"figure": lim.figure, "diagnostic": lim.diagnostic, "direction": lim.direction,
                     "threshold": lim.threshold, "n_reference": lim.n_reference, "collapses": len(judged),
                     "flagged": int(count.get("flagged", 0)), "late": int(count.get("late", 0)),
                     "never": int(count.get("never", 0)),
                     "missed": int(count.get("late", 0) + count.get("never", 0)),
                     "excluded": int(count.get("excluded", 0)), "lead_median": med, "lead_q1": q1,
                     "lead_q3": q3,
                     "false_flags": int(ff["false_flags"].sum()) if len(ff) else 0,
                     "surviving_checked": int(ff["surviving_checked"].sum()) if len(ff) else 0})
    return pd.DataFrame(rows)


def early_warning(tidy: pd.DataFrame, runs: pd.DataFrame,
                  rules: MarginRules | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per collapsed run and diagnostic lead times, per figure and diagnostic table) of the stress runs
    `runs` (analysis.margins.stress_runs) with their metrics in `tidy`."""
    rules = rules or MarginRules()
    keys = set(zip(runs["figure"], runs["arm"], runs["seed"].astype(int), strict=True))
    frames = wide_by_run(tidy[tidy["figure"].isin(set(runs["figure"]))])
    frames = {k: v for k, v in frames.items() if k in keys}
    limits = thresholds(frames, runs, rules.warning_percentile)
    leads = lead_times(frames, collapse_times(frames, runs, rules), limits)
    return leads, warning_table(leads, limits, false_flags(frames, runs, limits))
