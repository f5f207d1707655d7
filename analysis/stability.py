"""Stability metrics per run, and per-arm aggregates with bootstrap intervals (pure numpy / pandas).

Per run (:func:`run_stability`): ``peak_score`` (and ``peak_step``) and ``final_score`` (the last finite
eval score; a run that diverged keeps the last score it had, and counts as collapsed), the collapse step by
the named rule below, ``max_kl_k1`` / ``mean_kl_k1`` of the train-inference KL over all logged steps (the k1
estimator, the default rule's ``kl_metric``) and ``max_kl_k3`` / ``mean_kl_k3`` (the k3 estimator, what
reports show and what findings' ``max_kl`` / ``mean_kl`` compare),
``entropy_max_rel`` / ``entropy_min_rel`` (max and min entropy over the initial entropy, the median of
the first ``kl_baseline_steps`` values: > 1 explodes, < 1 crashes), ``final_reward`` (mean of the last
FINAL_REWARD_WINDOW logged rewards) and ``final_length`` (the last eval response length).

Collapse rule ``score-drop-or-kl-break`` (:class:`CollapseRule`; thresholds are fields with defaults):

* **score drop**: collapse at the first eval step from which the score stays more than ``score_margin``
  (absolute, score units 0..1) below its running peak for every later eval, for at least
  ``min_drop_evals`` evals (so a dip that recovers, or a single low point at the very end, is not a
  collapse). Once below, the running peak cannot rise, so "never recovers above peak - margin" is the
  same test.
* **KL break**: collapse at the first training step from which the train-inference KL (``kl_metric``)
  stays above ``max(kl_threshold, kl_factor * early median)`` for ``kl_persist`` consecutive logged
  steps; the early median is over the first ``kl_baseline_steps`` finite values. The paper sees
  collapses turn the KL sharply upward, usually past ~1e-2; the relative factor keeps a run whose KL is
  high from the start (a large but steady discrepancy) from being flagged.
* **divergence**: a run whose summary says ``diverged`` collapses at its ``diverged_step``.
* **non-finite**: the first step that logged a NaN or infinite train-inference KL (``kl_metric``) or loss
  (``loss/value``) collapses, whatever the summary says (a value logged as NaN is a break; a key that a
  row does not log, as eval rows, is not).

The collapse step is the earliest of the three; ``collapse_cause`` names which (ties joined by "+").
``survival_step`` is the collapse step, or the last step reached when the run never collapsed (censored):
it is what findings compare as ``collapse_step`` (higher = more stable).

Per arm (:func:`stability_arms`): the interquartile mean (IQM, rliable's aggregate: the mean of the middle
50% of seeds, i.e. 25% trimmed from each end; it equals the plain mean below 4 seeds) with a 95%
percentile-bootstrap interval over seeds. With 2 seeds the bootstrap is degenerate, so the interval is
the min-max range of the two; with 1 seed it is the point itself. ``ci_method`` says which was used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.load import wide_by_run

SCORE = "eval/score"
REWARD = "reward/mean"
ENTROPY = "entropy/mean"
LENGTH = "eval/response_length"
LOSS = "loss/value"
#: Per-run columns aggregated per arm (point = IQM, with _lo/_hi interval columns).
FINAL_REWARD_WINDOW = 5  # last logged training steps averaged into final_reward (the reward is noisy)
ARM_METRICS = ("peak_score", "final_score", "survival_step", "max_kl_k1", "mean_kl_k1", "max_kl_k3",
               "mean_kl_k3", "final_reward", "final_length", "entropy_max_rel", "entropy_min_rel")
#: The low-variance, never-negative KL estimator (mean of r - 1 - log r): what reports show; the rule's
#: kl_metric (k1, unbiased but noisy, negative at times) stays the collapse rule's input.
KL_K3 = "kl/train_infer_k3"
#: The unbiased, noisy estimator (mean of -log r; a mean can be negative): shown only with its name.
KL_K1 = "kl/train_infer_k1"


@dataclass(frozen=True)
class CollapseRule:
    """Parameters of the collapse rule ``score-drop-or-kl-break`` (see the module docstring)."""

    score_margin: float = 0.05  # absolute drop below the running peak, in score units (0..1)
    min_drop_evals: int = 2  # evals the drop must cover (it must also last to the end of the run)
    kl_metric: str = "kl/train_infer_k1"  # mean(logp_behavior - logp_old), D_KL(mu_old || pi_old)
    kl_threshold: float = 1e-2  # absolute KL level of a break (the paper's collapses pass ~1e-2)
    kl_factor: float = 10.0  # ... and this many times the early median KL
    kl_baseline_steps: int = 10  # first finite values that define the early median (and initial entropy)
    kl_persist: int = 3  # consecutive logged steps the KL must stay above the level

    name = "score-drop-or-kl-break"

    def describe(self) -> str:
        """One line naming the rule and its parameters (for reports)."""
        params = ", ".join(f"{k}={v}" for k, v in asdict(self).items())
        return f"{self.name} ({params})"


class Interval(NamedTuple):
    """An aggregate with its interval: point, lo, hi, the number of finite values, and the method."""

    point: float
    lo: float
    hi: float
    n: int
    method: str


# ------------------------------------------------------------------------------------ statistics


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean along `axis`: sort, drop floor(n/4) values at each end, average the rest.

    Same as ``scipy.stats.trim_mean(x, 0.25)`` (rliable's IQM). For n < 4 nothing is dropped.
    """
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        return np.nan
    cut = n // 4
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_ci(values, stat=iqm, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Interval:
    """`stat` of the finite `values` with a percentile-bootstrap interval at `level`.

    `stat` must take an array and an ``axis`` keyword. Fallbacks: 0 values -> NaNs ("no data");
    1 value -> the point ("single seed"); 2 values -> the min-max range ("min-max of 2").
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n, method = len(x), ci_method(len(x), level)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0, method)
    point = float(stat(x, axis=-1))
    if n <= 2:
        return Interval(point, float(x.min()), float(x.max()), n, method)
    rng = np.random.default_rng(seed)
    boot = stat(x[rng.integers(0, n, size=(n_boot, n))], axis=-1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return Interval(point, float(lo), float(hi), n, method)


def ci_method(n: int, level: float = 0.95) -> str:
    """How :func:`bootstrap_ci` builds the interval of `n` finite values."""
    return {0: "no data", 1: "single seed", 2: "min-max of 2"}.get(n, f"bootstrap {level:.0%}")


# ------------------------------------------------------------------------------- collapse rule


def _finite(steps, values) -> tuple[np.ndarray, np.ndarray]:
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(v) & np.isfinite(s)
    order = np.argsort(s[keep], kind="stable")
    return s[keep][order], v[keep][order]


def score_drop_step(steps, scores, margin: float = 0.05, min_drop_evals: int = 2) -> float:
    """First eval step of a score drop that never recovers (NaN when none); non-finite scores ignored."""
    s, v = _finite(steps, scores)
    if len(v) == 0:
        return np.nan
    below = v < np.maximum.accumulate(v) - margin
    start = len(below)
    while start > 0 and below[start - 1]:
        start -= 1
    if len(below) - start >= max(min_drop_evals, 1):
        return float(s[start])
    return np.nan


def kl_break_step(steps, kl, threshold: float = 1e-2, factor: float = 10.0, baseline_steps: int = 10,
                  persist: int = 3) -> float:
    """First step from which the KL stays above its break level for `persist` values (NaN when none)."""
    s, v = _finite(steps, kl)
    if len(v) < persist or persist < 1:
        return np.nan
    level = threshold
    early = np.median(v[:baseline_steps])
    if early > 0:
        level = max(threshold, factor * early)
    above = v > level
    # windows[i] counts the values above the level among v[i : i + persist].
    windows = np.convolve(above.astype(int), np.ones(persist, dtype=int), mode="valid")
    hits = np.flatnonzero(windows == persist)
    return float(s[hits[0]]) if len(hits) else np.nan


def nonfinite_step(long: pd.DataFrame, metrics: tuple[str, ...]) -> float:
    """First step whose logged value of one of `metrics` is NaN or infinite (NaN when none).

    `long` is one run's (step, metric, value) rows: a metric a row never logged has no row here, so only a
    value the trainer logged as non-finite counts."""
    if long.empty:
        return np.nan
    sel = long[long["metric"].isin(metrics) & ~np.isfinite(long["value"].to_numpy(dtype=float))]
    return float(sel["step"].min()) if len(sel) else np.nan


def collapse(eval_steps, scores, kl_steps, kl, diverged_step: float | None,
             rule: CollapseRule = CollapseRule(), nonfinite: float | None = None) -> tuple[float, str]:
    """(collapse step, cause) by the rule; (NaN, "") when the run never collapsed. `nonfinite`: the first
    step with a non-finite KL or loss (:func:`nonfinite_step`), a break; not named beside a divergence
    the trainer already reported at that step (its NaN is the divergence)."""
    if diverged_step is not None and nonfinite is not None and nonfinite >= float(diverged_step):
        nonfinite = None
    candidates = {
        "score-drop": score_drop_step(eval_steps, scores, rule.score_margin, rule.min_drop_evals),
        "kl-break": kl_break_step(kl_steps, kl, rule.kl_threshold, rule.kl_factor,
                                  rule.kl_baseline_steps, rule.kl_persist),
        "diverged": np.nan if diverged_step is None else float(diverged_step),
        "non-finite": np.nan if nonfinite is None else float(nonfinite),
    }
    found = {k: v for k, v in candidates.items() if np.isfinite(v)}
    if not found:
        return np.nan, ""
    first = min(found.values())
    return first, "+".join(k for k, v in found.items() if v == first)


# ---------------------------------------------------------------------------------- per run


def _series(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if column not in frame:
        return np.array([]), np.array([])
    return _finite(frame.index.to_numpy(), frame[column].to_numpy())


def _with_inf(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column's logged values with +-inf kept (NaN dropped): an infinite KL is the largest KL, never skipped
    (MLflow stores it as 1.8e308; the run files keep Infinity)."""
    if column not in frame:
        return np.array([])
    v = np.asarray(frame[column].to_numpy(), dtype=float)
    return v[~np.isnan(v)]


def _score_fields(frame: pd.DataFrame) -> dict:
    steps, scores = _series(frame, SCORE)
    if len(scores) == 0:
        return {"peak_score": np.nan, "peak_step": np.nan, "final_score": np.nan, "final_step": np.nan}
    best = int(np.argmax(scores))
    return {"peak_score": scores[best], "peak_step": steps[best], "final_score": scores[-1],
            "final_step": steps[-1]}


def _relative_excursions(values: np.ndarray, baseline_n: int) -> tuple[float, float, float]:
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    init = float(np.median(values[:baseline_n]))
    if init == 0:
        return init, np.nan, np.nan
    return init, float(values.max() / init), float(values.min() / init)


def run_stability(frame: pd.DataFrame, diverged_step: float | None = None, steps_done: int | None = None,
                  rule: CollapseRule = CollapseRule(), nonfinite: float | None = None) -> dict:
    """Stability metrics of one run from its wide frame (index step, one column per metric)."""
    out = _score_fields(frame)
    eval_steps, scores = _series(frame, SCORE)
    kl_steps, kl = _series(frame, rule.kl_metric)
    out["collapse_step"], out["collapse_cause"] = collapse(eval_steps, scores, kl_steps, kl,
                                                           diverged_step, rule, nonfinite)
    last = steps_done if steps_done else (frame.index.max() if len(frame) else np.nan)
    out["survival_step"] = out["collapse_step"] if np.isfinite(out["collapse_step"]) else float(last)
    k1, k3 = _with_inf(frame, KL_K1), _with_inf(frame, KL_K3)  # an infinite KL counts: inf, never dropped
    out["max_kl_k1"], out["mean_kl_k1"] = (float(k1.max()), float(k1.mean())) if len(k1) else (np.nan, np.nan)
    out["kl_early"] = float(np.median(kl[: rule.kl_baseline_steps])) if len(kl) else np.nan
    out["max_kl_k3"], out["mean_kl_k3"] = (float(k3.max()), float(k3.mean())) if len(k3) else (np.nan, np.nan)
    _, ent = _series(frame, ENTROPY)
    out["entropy_init"], out["entropy_max_rel"], out["entropy_min_rel"] = _relative_excursions(
        ent, rule.kl_baseline_steps)
    _, reward = _series(frame, REWARD)
    out["final_reward"] = float(reward[-FINAL_REWARD_WINDOW:].mean()) if len(reward) else np.nan
    _, length = _series(frame, LENGTH)
    out["final_length"] = float(length[-1]) if len(length) else np.nan
    return out


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value)


def stability_runs(tidy: pd.DataFrame, runs: pd.DataFrame,
                   rule: CollapseRule = CollapseRule()) -> pd.DataFrame:
    """One row per run: identity and status columns of `runs` plus :func:`run_stability`'s fields."""
    frames = wide_by_run(tidy)
    breaks = tidy[tidy["metric"].isin((rule.kl_metric, LOSS))]
    breaks = {key: nonfinite_step(group, (rule.kl_metric, LOSS))
              for key, group in breaks.groupby(["figure", "arm", "seed"], sort=False)}
    rows = []
    for run in runs.itertuples(index=False):
        frame = frames.get((run.figure, run.arm, int(run.seed)), pd.DataFrame())
        diverged = None
        if run.summary_status == "diverged":
            diverged = run.diverged_step if _is_number(run.diverged_step) else run.steps_done
        nonfinite = breaks.get((run.figure, run.arm, run.seed), np.nan)
        fields = run_stability(frame, diverged, run.steps_done, rule, nonfinite)
        planned = (run.config or {}).get("train", {}).get("steps") if isinstance(run.config, dict) else None
        rows.append({"figure": run.figure, "arm": run.arm, "label": run.label, "seed": int(run.seed),
                     "status": run.status, "steps_done": run.steps_done,
                     "planned_steps": planned if _is_number(planned) else np.nan, **fields,
                     "warning": getattr(run, "warning", "") or "",
                     "mlflow_run_id": run.mlflow_run_id, "run_dir": run.run_dir})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- per arm


def arm_interval(per_run: pd.DataFrame, column: str, n_boot: int = 2000, seed: int = 0) -> Interval:
    """IQM of `column` over the rows of `per_run` (one arm's seeds) with its interval."""
    values = per_run[column].to_numpy(dtype=float) if column in per_run else np.array([])
    return bootstrap_ci(values, iqm, n_boot=n_boot, seed=seed)


def stability_arms(per_run: pd.DataFrame, metrics=ARM_METRICS, n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (figure, arm): seed and status counts, collapse counts, and IQM [lo, hi] per metric."""
    rows = []
    for (figure, arm), group in per_run.groupby(["figure", "arm"], sort=False):
        collapsed = group["collapse_step"].dropna()
        row = {"figure": figure, "arm": arm, "label": group["label"].iloc[0], "n_seeds": len(group),
               "n_completed": int((group["status"] == "completed").sum()),
               "n_diverged": int((group["status"] == "diverged").sum()),
               "n_incomplete": int((group["status"] == "incomplete").sum()),
               "n_collapsed": len(collapsed),
               "first_collapse_step": collapsed.min() if len(collapsed) else np.nan}
        for metric in metrics:
            ci = arm_interval(group, metric, n_boot, seed)
            row.update({metric: ci.point, f"{metric}_lo": ci.lo, f"{metric}_hi": ci.hi})
        row["ci_method"] = ci_method(len(group))
        rows.append(row)
    return pd.DataFrame(rows)
