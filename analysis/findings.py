"""The paper's conclusions as testable findings, and their verdicts on a grid's runs.

A grid file's ``findings:`` is a list of items of this schema (unknown keys are errors):

    - id: f1_no_is_collapses       # unique, short
      claim: "..."                 # the paper's words, short
      figure: fig1_on_policy       # the figure whose arms the item names
      kind: better                 # better | similar | different | collapses | stable | more_stable
      metric: final_score          # better / similar / different: a key of METRICS
      better: minirl               # better: the arm claimed better on `metric` ...
      worse: minirl_no_is          # ... than this arm, or each arm of a list
      arms: [a, b, c]              # similar / different: two or more arms
      arm: minirl_no_is            # collapses / stable: one arm
      tolerance: 0.05              # similar / different: largest IQM spread that is "similar"
      relative: false              # ... spread measured relative to the mean IQM (default per metric)
      by_frac: 0.5                 # collapses (optional): count only collapses in the first
                                   # by_frac of the planned steps (train.steps) -- "collapses early"
      more: minirl                 # more_stable: the base arm claimed to break at a higher stress ...
      less: minirl_no_is           # ... than this base arm (both of a figure with a stress axis)

An arm is ``arm_key`` (in the item's figure) or ``figure_key/arm_key`` (another figure's arm), so one
item can compare arms across figures. "better" means higher for scores, rewards, lengths and
``collapse_step`` (the collapse step, censored at the last step for runs that never collapsed: later is
more stable), and lower for KL (see ``METRICS[...].higher_is_better``).

Verdicts, on per-arm IQM intervals over seeds (analysis.stability):

* better: "agrees" when the better arm's interval lies on the better side of each worse arm's by more
  than `tolerance` (the metric's default: 0.05 for scores, about five standard errors of one mini-preset
  evaluation, avg@16 on 128 problems; docs/results.md, "The starting regime"); "disagrees" when any
  worse arm's interval lies on the better side by more than that; else "inconclusive: CIs overlap", or
  "inconclusive: CIs apart by less than the tolerance" when no two of them overlap (with one seed per arm:
  "inconclusive: one seed per arm (a point, no interval): gap within tolerance"). The margin matters
  most with one seed, whose interval is a point: a 0.01 gap between two single runs is evaluation
  noise, not a finding. On ``collapse_step``, when none of the compared runs collapsed: "inconclusive:
  no run collapsed" (every value is censored at its run's last step, so there is no order to find).
* similar: "agrees" when the spread (max - min) of the arms' IQMs is within `tolerance`; "disagrees"
  when it is not and some pair of intervals is disjoint; else "inconclusive: CIs overlap".
  different: the mirror image (agrees when a pair differs by more than `tolerance` with disjoint
  intervals; disagrees when the spread is within `tolerance`).
* collapses / stable: the arm's runs that collapsed (analysis.stability's rule); the seeds must agree:
  all collapsed or none did, else "inconclusive: seeds split" (2 of 3 is not evidence that an arm
  collapses, nor that it is stable).
* more_stable: on the arms' critical stress s* with its bootstrap interval over seeds (analysis.margins;
  `more` and `less` are base arms, read across the figure's stress levels): "agrees" when more's interval
  lies entirely above less's, "disagrees" when entirely below, else "inconclusive: CIs overlap", or, when
  neither arm crossed the survival threshold at any level (both censored above the top level),
  "inconclusive: no arm broke within the stress levels" (both censored below the lowest: "inconclusive:
  both arms broke at the lowest level"). A censored end of an interval sits at its boundary level, so it
  separates only from an interval that lies strictly inside the levels on the other side.
* Any arm without runs (or without a finite value of the metric): "inconclusive: missing arms/runs";
  any run of its arms without DONE (still training, or killed), or a seed of the grid's not run yet:
  "inconclusive: runs not finished (k of n)", so a report made while a grid runs shows no verdict drawn
  from partial curves or from the seeds done so far.

With one seed an interval is the point itself, so verdicts compare points (the paper ran one seed);
the numbers column says how many seeds stand behind each value.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from analysis.margins import separated, star_text
from analysis.stability import Interval, arm_interval
from rl_core.orchestration.finding_schema import (  # noqa: F401  (re-exported: the schema lives without pandas)
    COMMON,
    KINDS,
    METRICS,
    FindingError,
    Metric,
    finding_arms,
    resolve,
    shown,
    validate_findings,
)

MISSING = "inconclusive: missing arms/runs"
OVERLAP = "inconclusive: CIs overlap"
SEPARATED = "inconclusive: CIs apart by less than the tolerance"
POINTS = "inconclusive: one seed per arm (a point, no interval): gap within tolerance"


def _undecided(cis: dict, overlap: bool = True) -> str:
    """Why a comparison decided nothing: overlapping intervals (`overlap`), intervals apart by less than
    the tolerance, or, with one seed per arm, points closer than the tolerance (no intervals at all)."""
    if all(ci.n == 1 for ci in cis.values()):
        return POINTS
    return OVERLAP if overlap else SEPARATED
SPLIT = "inconclusive: seeds split"
NO_BREAK = "inconclusive: no arm broke within the stress levels"
ALL_BROKE = "inconclusive: both arms broke at the lowest level"
UNFINISHED = "inconclusive: runs not finished"
CENSORED = "inconclusive: no run collapsed (every collapse step is its run's last step)"


def _runs_of(per_run: pd.DataFrame, figure: str, arm: str) -> pd.DataFrame:
    """The runs of `arm`: its own, or, for a stress figure's base arm, the runs at all its levels."""
    named = per_run["arm"] == arm
    if "base_arm" in per_run:
        named |= per_run["base_arm"] == arm
    return per_run[(per_run["figure"] == figure) & named]


def _fmt(ci: Interval, fmt: str) -> str:
    if ci.n == 1:
        return f"{ci.point:{fmt}} (1 seed)"
    return f"{ci.point:{fmt}} [{ci.lo:{fmt}}, {ci.hi:{fmt}}] (n={ci.n})"


def _intervals(item: dict, per_run: pd.DataFrame, refs, n_boot: int) -> dict | None:
    """{ref: Interval} of the item's metric, or None when an arm has no finite value."""
    column = METRICS[item["metric"]].column
    out = {}
    for figure, arm in refs:
        ci = arm_interval(_runs_of(per_run, figure, arm), column, n_boot)
        if ci.n == 0:
            return None
        out[(figure, arm)] = ci
    return out


def _name(ref: tuple[str, str], item: dict) -> str:
    return ref[1] if ref[0] == item["figure"] else "/".join(ref)


def _tolerance(item: dict, metric: Metric) -> tuple[float, bool]:
    """The item's (tolerance, relative), defaulting to the metric's."""
    return float(item.get("tolerance", metric.tolerance)), bool(item.get("relative", metric.relative))


def _compared(item: dict, per_run: pd.DataFrame, n_boot: int):
    """(arms, their intervals, the metric, the numbers line) of a comparison; None if an arm has no runs."""
    refs = finding_arms(item)
    cis = _intervals(item, per_run, refs, n_boot)
    if cis is None:
        return None
    metric = METRICS[item["metric"]]
    numbers = " vs ".join(f"{_name(r, item)} {_fmt(cis[r], metric.fmt)}" for r in refs)
    return refs, cis, metric, numbers


def _better(item: dict, per_run: pd.DataFrame, n_boot: int) -> tuple[str, str, str]:
    compared = _compared(item, per_run, n_boot)
    if compared is None:
        return "", "", MISSING
    refs, cis, metric, numbers = compared
    if item["metric"] == "collapse_step" and \
            all(_runs_of(per_run, *r)["collapse_step"].isna().all() for r in refs):
        return "no run collapsed", numbers, CENSORED  # censored alike: nothing to rank by
    sign = 1.0 if metric.higher_is_better else -1.0
    best = cis[refs[0]]
    margin, relative = _tolerance(item, metric)
    if relative:
        margin *= max(float(np.mean([abs(cis[r].point) for r in refs])), 1e-12)
    wins = losses = overlaps = 0
    for ref in refs[1:]:
        other = cis[ref]
        lo_b, hi_b = sorted((sign * best.lo, sign * best.hi))
        lo_o, hi_o = sorted((sign * other.lo, sign * other.hi))
        wins += lo_b > hi_o + margin
        losses += hi_b + margin < lo_o
        overlaps += lo_b <= hi_o and lo_o <= hi_b
    undecided = _undecided(cis, overlap=overlaps > 0)
    verdict = "disagrees" if losses else ("agrees" if wins == len(refs) - 1 else undecided)
    leader = max(refs, key=lambda r: sign * cis[r].point)
    side = "highest" if metric.higher_is_better else "lowest"
    observed = f"{side} {shown(item['metric'])}: {_name(leader, item)}"
    return observed, numbers, verdict


def _spread(item: dict, per_run: pd.DataFrame, n_boot: int) -> tuple[str, str, str]:
    compared = _compared(item, per_run, n_boot)
    if compared is None:
        return "", "", MISSING
    refs, cis, metric, numbers = compared
    tol, relative = _tolerance(item, metric)
    points = np.array([cis[r].point for r in refs])
    spread = float(points.max() - points.min())
    if relative:
        spread /= max(float(np.abs(points).mean()), 1e-12)
    pairs = [(a, b) for i, a in enumerate(refs) for b in refs[i + 1:]]
    disjoint = any(cis[a].lo > cis[b].hi or cis[b].lo > cis[a].hi for a, b in pairs)
    within = spread <= tol
    if item["kind"] == "similar":
        verdict = "agrees" if within else ("disagrees" if disjoint else _undecided(cis))
    else:
        verdict = "disagrees" if within else ("agrees" if disjoint else _undecided(cis))
    unit = " (relative)" if relative else ""
    observed = f"spread of {shown(item['metric'])} {spread:.3g}{unit} vs tolerance {tol:g}"
    return observed, numbers, verdict


def _collapse_vote(item: dict, per_run: pd.DataFrame, n_boot: int) -> tuple[str, str, str]:
    ref = finding_arms(item)[0]
    runs = _runs_of(per_run, *ref)
    if runs.empty:
        return "", "", MISSING
    steps = runs["collapse_step"].to_numpy(dtype=float)
    collapsed = np.isfinite(steps)
    if "by_frac" in item:
        horizon = runs["planned_steps"].to_numpy(dtype=float)
        fallback = float(per_run.loc[per_run["figure"] == ref[0], "steps_done"].max())
        horizon = np.where(np.isfinite(horizon), horizon, fallback)
        collapsed &= steps <= float(item["by_frac"]) * horizon
    k, n = int(collapsed.sum()), len(runs)
    when = ", ".join(f"{s:.0f}" for s in np.sort(steps[collapsed]))
    early = f" within {item['by_frac']:.0%} of the steps" if "by_frac" in item else ""
    observed = f"{k}/{n} runs collapsed{early}"
    numbers = f"collapse steps: {when}" if k else "no collapse"
    statuses = runs["status"].value_counts().to_dict()
    numbers += "; status " + ", ".join(f"{s}={c}" for s, c in sorted(statuses.items()))
    if 0 < k < n:
        return observed, numbers, SPLIT
    agrees = (k == n) == (item["kind"] == "collapses")
    return observed, numbers, "agrees" if agrees else "disagrees"


def _more_stable(item: dict, per_run: pd.DataFrame, n_boot: int,
                 margins: pd.DataFrame | None = None) -> tuple[str, str, str]:
    refs = finding_arms(item)
    rows = {}
    for figure, arm in refs:
        sel = margins[(margins["figure"] == figure) & (margins["arm"] == arm)] \
            if margins is not None and len(margins) else []
        if len(sel) == 0:
            return "", "", MISSING
        rows[(figure, arm)] = sel.iloc[0].to_dict()
    more, less = rows[refs[0]], rows[refs[1]]
    numbers = " vs ".join(f"{_name(r, item)} s* {star_text(rows[r])} (n={rows[r]['n_seeds']})" for r in refs)
    leader = max(refs, key=lambda r: (rows[r]["s_star_censored"] == "above", rows[r]["s_star"]))
    observed = f"higher critical stress: {_name(leader, item)}"
    if separated(more, less):
        return observed, numbers, "agrees"
    if separated(less, more):
        return observed, numbers, "disagrees"
    censored = {more["s_star_censored"], less["s_star_censored"]}
    verdict = {frozenset({"above"}): NO_BREAK, frozenset({"below"}): ALL_BROKE}.get(frozenset(censored),
                                                                                  OVERLAP)
    return observed, numbers, verdict


_EVALUATORS = {"better": _better, "similar": _spread, "different": _spread, "collapses": _collapse_vote,
               "stable": _collapse_vote, "more_stable": _more_stable}


def describe_test(item: dict) -> str:
    """The item's test in one short line, e.g. ``final_score: minirl > minirl_no_is``."""
    names = [_name(r, item) for r in finding_arms(item)]
    if item["kind"] == "better":
        op = ">" if METRICS[item["metric"]].higher_is_better else "<"
        return f"{shown(item['metric'])}: {names[0]} {op} {', '.join(names[1:])}"
    if item["kind"] in ("similar", "different"):
        op = " ~ " if item["kind"] == "similar" else " != "
        return f"{shown(item['metric'])}: {op.join(names)}"
    if item["kind"] == "more_stable":
        return f"critical stress: {names[0]} > {names[1]}"
    return f"{names[0]} {item['kind']}" + (f" (within {item['by_frac']:.0%})" if "by_frac" in item else "")


def _unfinished(item: dict, per_run: pd.DataFrame, seeds: list[int] | None,
                n_levels: dict | None = None) -> tuple[int, int]:
    """(runs of the item's arms not finished, runs it needs): a run without DONE, or with `seeds` (the
    grid's) a seed with no run yet, is not finished. A stress figure's base arm needs every seed at each
    of its `n_levels[(figure, arm)]` levels."""
    todo = total = 0
    for ref in finding_arms(item):
        runs = _runs_of(per_run, *ref)
        want = set(seeds) if seeds else set(runs["seed"])
        levels = (n_levels or {}).get(ref, 1)
        done = runs.loc[runs["status"] != "incomplete", ["arm", "seed"]].drop_duplicates()
        done = done[done["seed"].isin(want)] if seeds else done
        todo, total = todo + levels * len(want) - len(done), total + levels * len(want)
    return todo, total


def evaluate_findings(findings: list[dict], per_run: pd.DataFrame, n_boot: int = 2000,
                      seeds: list[int] | None = None, margins: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finding: id, figure, claim, test, observed, numbers, verdict. `seeds`: the grid's; an
    arm missing one of them is not finished. `margins`: analysis.margins' table (more_stable items), with
    `per_run` carrying the stress runs' ``base_arm`` (analysis.margins.stress_runs)."""
    validate_findings(findings)
    evaluators = {**_EVALUATORS, "more_stable": partial(_more_stable, margins=margins)}
    n_levels = {} if margins is None or margins.empty else {
        (r["figure"], r["arm"]): len(str(r["levels"]).split()) for r in margins.to_dict("records")}
    rows = []
    for item in findings:
        observed, numbers, verdict = evaluators[item["kind"]](item, per_run, n_boot)
        todo, total = _unfinished(item, per_run, seeds, n_levels)
        if todo and verdict != MISSING:  # a run still going, killed or not started: no result yet
            verdict = f"{UNFINISHED} ({todo} of {total})"
        if verdict == MISSING:
            absent = [_name(r, item) for r in finding_arms(item) if _runs_of(per_run, *r).empty]
            observed = f"no runs of {', '.join(absent)}" if absent else f"no finite {item.get('metric')}"
        rows.append({"id": item["id"], "figure": item["figure"], "claim": item["claim"],
                     "test": describe_test(item), "observed": observed, "numbers": numbers,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=["id", "figure", "claim", "test", "observed", "numbers", "verdict"])
