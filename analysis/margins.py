"""Stability margins: where along a figure's stress axis each arm starts to break (pure numpy / pandas).

A stress figure of a grid file names one ``stress`` key (``train.lr``, ``train.n_minibatches``, or rollout
formats ordered by their train-inference gap) with its levels; every arm runs at every level and seed.
Which run belongs to which (figure, base arm, level) is read from the grid, not from the run names: the
figure's arms crossed with its ``axes`` are the base arms (rl_core.orchestration.grid's expansion), each
base arm crossed with the stress levels gives the names of its runs, and the level of a run is the value of
the stress key in its own config.json (the expansion's value when the config lacks it). Definitions:

* **survival**: a run survives when analysis.stability's collapse rule (``score-drop-or-kl-break``) finds no
  collapse (``collapse_step`` NaN). The survival fraction of an (arm, level) is the share of its seeds that
  survived.
* **critical stress s\\***: walking up the levels, the first level whose survival fraction is below
  ``survival_threshold`` (default 0.5); s* is interpolated linearly in x between it and the level below on
  the fraction (x = log(level) for a numeric stress, the level's index for a non-numeric one such as rollout
  formats), where the fraction equals the threshold. Never below: censored above, s* = the top level, shown
  "> top". Already below at the lowest level: censored below, s* = the lowest level, shown "< lowest".
  Only the first crossing counts (a fraction that recovers at a higher level does not move s*).
* **interval**: a 95% percentile bootstrap over seeds (the seed is the unit): 2000 draws of the arm's seed
  indices with replacement, the same draw for every level of the arm, fixed RNG seed (0, the same draws for
  every arm); the percentiles are taken in x (log level) and mapped back. An end of the interval is
  censored ("< lowest" / "> top") when more than 2.5% of the draws were censored on that side. With three
  seeds a survival fraction is 0, 1/3, 2/3 or 1 and a draw has only ten distinct outcomes, so intervals are
  wide and "indistinguishable" is the common verdict: more seeds narrow them.
* **LR sensitivity** (after Wortsman et al. 2023, arXiv 2309.14322, who average
  min(loss(lr), loss_init) - min_lr loss over the learning rates): on scores (higher is better and bounded,
  so no cap is needed), the mean over the levels of (the best level's mean final score - that level's mean
  final score), means over seeds. A run's final score is its last finite eval score (analysis.stability),
  also for a collapsed run; a run with no finite eval score counts 0. 0 = flat; larger = more sensitive.
  Bootstrapped with the same draws as s* (a max over noisy means: the draws sit a little above the point).
* **Kaplan-Meier survival** per (arm, level): a collapse at its step is an event; a run that never collapsed
  is censored at its last step (analysis.stability's ``survival_step``).
* **ranking** per figure: arms by s*, highest first (censored above highest); an arm's rank is 1 + the
  number of arms whose interval lies entirely above its own (lo > its hi), so arms with overlapping
  intervals share a rank (shown "=2"). Beside it the LR-sensitivity rank, the same rule on the other
  margin with lower better: 1 + the arms whose sensitivity interval lies entirely below its own. s* has
  the levels' 2x resolution, so where every arm breaks between the same two levels the sensitivity rank is
  the one that can still separate them.
* **replication** (:func:`compare_margins`): for every pair of arms of a figure whose s* intervals are
  separated in run A, whether run B keeps the order with separation, keeps the order without it (equal
  points included), or flips it; the same for the LR-sensitivity intervals (lower = more stable), each
  pair counted under its margin.

The early-warning lead times of the collapsed runs are analysis.early_warning's.

    python -m analysis.margins compare A/margins.csv B/margins.csv [--out compare.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rl_core.cli import UsageError, guard
from rl_core.orchestration.grid import expand_axes

N_BOOT, CI_LEVEL, RNG_SEED = 2000, 0.95, 0


@dataclass(frozen=True)
class MarginRules:
    """The grid file's ``margins:`` section (see the module docstring and analysis.early_warning)."""

    survival_threshold: float = 0.5
    warning_percentile: float = 99.0
    reward_window: int = 4
    reward_margin: float = 0.15


def margin_rules(grid: dict) -> MarginRules:
    """The grid's ``margins:`` rules, defaults for the keys it does not set."""
    return MarginRules(**{k: v for k, v in (grid.get("margins") or {}).items()
                          if k in MarginRules.__dataclass_fields__})


# --------------------------------------------------------------------------------- membership


def stress_figures(grid: dict) -> dict[str, tuple[str, list]]:
    """{figure: (stress key, levels)} of the grid's figures that have a stress axis."""
    out = {}
    for key, fig in (grid.get("figures") or {}).items():
        stress = (fig or {}).get("stress") or {}
        if stress:
            (skey, levels), = stress.items()
            out[key] = (skey, list(levels))
    return out


def base_arms(fig: dict) -> dict[str, dict]:
    """A stress figure's base arms: its arms crossed with its ``axes`` (not with the stress)."""
    return expand_axes(fig.get("arms") or {}, fig.get("axes") or {})


def _dotted(config: dict, key: str):
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def level_index(value, levels: list) -> int:
    """Index of `value` among `levels` (numbers compared to a relative 1e-9), -1 when none matches."""
    for i, level in enumerate(levels):
        both_numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, level))
        if (both_numbers and math.isclose(value, level, rel_tol=1e-9)) or str(value) == str(level):
            return i
    return -1


def stress_arm_index(grid: dict) -> dict[str, dict[str, tuple[str, int]]]:
    """{stress figure: {arm name as run: (base arm, level index)}}, from the grid's own expansion."""
    out = {}
    figures = grid.get("figures") or {}
    for fig_key, (skey, levels) in stress_figures(grid).items():
        out[fig_key] = {}
        for base, spec in base_arms(figures[fig_key]).items():
            for i, name in enumerate(expand_axes({base: spec}, {skey: levels})):
                out[fig_key][name] = (base, i)
    return out


def membership(runs: pd.DataFrame, grid: dict) -> pd.DataFrame:
    """One row per run of a stress figure: figure, arm, seed, base_arm, stress_key, level, level_index.

    A run whose arm is not in the grid's expansion, or whose config's value is none of the levels, is left
    out (it is not a point of the sweep)."""
    columns = ["figure", "arm", "seed", "base_arm", "stress_key", "level", "level_index"]
    rows = []
    for fig_key, (skey, levels) in stress_figures(grid).items():
        names = {name: (base, levels[i]) for name, (base, i) in stress_arm_index(grid)[fig_key].items()}
        for run in runs[runs["figure"] == fig_key].itertuples(index=False):
            if run.arm not in names:
                continue
            base, planned = names[run.arm]
            value = _dotted(run.config if isinstance(run.config, dict) else {}, skey)
            i = level_index(planned if value is None else value, levels)
            if i >= 0:
                rows.append((fig_key, run.arm, int(run.seed), base, skey, levels[i], i))
    return pd.DataFrame(rows, columns=columns)


def stress_runs(per_run: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """analysis.stability's per-run rows of the stress figures with their base arm and level."""
    if members.empty or per_run.empty:
        return pd.DataFrame(columns=[*per_run.columns, "base_arm", "stress_key", "level", "level_index"])
    sel = per_run.assign(seed=per_run["seed"].astype(int))
    return sel.merge(members, on=["figure", "arm", "seed"], how="inner")


# ------------------------------------------------------------------------------- statistics


def _numeric(levels: list) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in levels)


def level_x(levels: list) -> np.ndarray:
    """The interpolation scale of the levels: log(level) when all are positive numbers, else the index."""
    if _numeric(levels):
        return np.log(np.asarray(levels, dtype=float))
    return np.arange(len(levels), dtype=float)


def from_x(x: float, levels: list) -> float:
    """A point on :func:`level_x`'s scale back in stress units (the index itself for a non-numeric axis);
    a point on a level is that level exactly (no exp(log()) round-off on censored values)."""
    if not _numeric(levels):
        return float(x)
    on = np.flatnonzero(np.isclose(level_x(levels), x, rtol=0, atol=1e-12))
    return float(levels[on[0]]) if len(on) else float(np.exp(x))


def star_text(row: dict) -> str:
    """s* of a margins row with its interval: ``4.1e-04 [2.4e-04, > 1.92e-03]``; a censored value is
    ``> top`` / ``< lowest``; a non-numeric stress shows the (fractional) level index."""
    spec = ".2e" if row.get("numeric", True) else ".2f"

    def one(value, censored: str) -> str:
        return {"above": "> ", "below": "< "}.get(censored, "") + f"{value:{spec}}"

    point = one(row["s_star"], row["s_star_censored"])
    lo = one(row["s_star_lo"], "below" if row["lo_censored"] else "")
    hi = one(row["s_star_hi"], "above" if row["hi_censored"] else "")
    return point if row.get("n_seeds", 2) < 2 else f"{point} [{lo}, {hi}]"


def critical_x(fractions: np.ndarray, x: np.ndarray, threshold: float = 0.5) -> tuple[float, str]:
    """(x*, censoring) of one arm: survival `fractions` per level (NaN = no run there) on the scale `x`.

    censoring is "" (a crossing), "above" (x* = the top x) or "below" (x* = the lowest x); NaN levels
    are skipped. No level at all: (NaN, "")."""
    keep = np.isfinite(fractions)
    f, xs = np.asarray(fractions, dtype=float)[keep], np.asarray(x, dtype=float)[keep]
    if len(f) == 0:
        return np.nan, ""
    below = np.flatnonzero(f < threshold)
    if len(below) == 0:
        return float(xs[-1]), "above"
    i = int(below[0])
    if i == 0:
        return float(xs[0]), "below"
    t = (f[i - 1] - threshold) / (f[i - 1] - f[i])  # where the straight line reaches the threshold
    return float(xs[i - 1] + t * (xs[i] - xs[i - 1])), ""


def seed_matrix(group: pd.DataFrame, n_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, survived (seed, level) of 1/0/NaN, final score (seed, level) with NaN -> 0 and NaN where
    the seed has no run at that level) of one arm's stress runs. An incomplete run that has not collapsed
    yet counts as no run (NaN): it is not a survivor; one that already collapsed counts as collapsed."""
    seeds = np.sort(group["seed"].unique())
    survived = np.full((len(seeds), n_levels), np.nan)
    final = np.full((len(seeds), n_levels), np.nan)
    row_of = {s: i for i, s in enumerate(seeds)}
    for run in group.itertuples(index=False):
        i, j = row_of[run.seed], int(run.level_index)
        if getattr(run, "status", "completed") == "incomplete" and not np.isfinite(run.collapse_step):
            continue  # still running (or cut) and not collapsed yet: its survival is unknown, not a survivor
        survived[i, j] = float(not np.isfinite(run.collapse_step))
        final[i, j] = run.final_score if np.isfinite(run.final_score) else 0.0
    return seeds, survived, final


def _means(matrix: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Per draw (rows of seed indices) the mean over the drawn seeds of each column, ignoring NaN: (B, K)."""
    picked = matrix[draws]  # (B, n, K)
    valid = np.isfinite(picked)
    count = valid.sum(axis=1)
    total = np.where(valid, picked, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def sensitivity(level_means: np.ndarray) -> np.ndarray:
    """Mean over levels of (best level mean - level mean); `level_means` (..., K), NaN levels skipped."""
    best = np.nanmax(level_means, axis=-1, keepdims=True)
    return np.nanmean(best - level_means, axis=-1)


def draws(n_seeds: int, n_boot: int = N_BOOT, seed: int = RNG_SEED) -> np.ndarray:
    """(n_boot, n_seeds) seed indices drawn with replacement (one row = one bootstrap sample)."""
    return np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))


def arm_margin(survived: np.ndarray, final: np.ndarray, levels: list, threshold: float = 0.5,
               n_boot: int = N_BOOT, seed: int = RNG_SEED) -> dict:
    """s* and LR sensitivity of one arm, each with its bootstrap interval over seeds (module docstring)."""
    x = level_x(levels)
    frac = _means(survived, np.arange(len(survived))[None, :])[0]
    point_x, censored = critical_x(frac, x, threshold)
    sens = float(sensitivity(_means(final, np.arange(len(final))[None, :])[0]))
    idx = draws(len(survived), n_boot, seed) if len(survived) > 1 else np.zeros((1, len(survived)), int)
    boot = [critical_x(f, x, threshold) for f in _means(survived, idx)]
    bx = np.array([b[0] for b in boot])
    tail = (1 - CI_LEVEL) / 2
    lo_x, hi_x = np.percentile(bx, [100 * tail, 100 * (1 - tail)])
    boot_sens = sensitivity(_means(final, idx))
    s_lo, s_hi = np.percentile(boot_sens, [100 * tail, 100 * (1 - tail)])
    return {"survival": frac, "s_star": from_x(point_x, levels), "s_star_censored": censored,
            "s_star_lo": from_x(lo_x, levels), "s_star_hi": from_x(hi_x, levels),
            "lo_censored": float(np.mean([b[1] == "below" for b in boot])) > tail,
            "hi_censored": float(np.mean([b[1] == "above" for b in boot])) > tail,
            "sensitivity": sens, "sensitivity_lo": float(s_lo), "sensitivity_hi": float(s_hi)}


def _survival_text(survived: np.ndarray) -> str:
    alive, n = np.nansum(survived, axis=0), np.isfinite(survived).sum(axis=0)
    return " ".join(f"{int(a)}/{int(k)}" if k else "-" for a, k in zip(alive, n, strict=True))


def margins_table(runs: pd.DataFrame, grid: dict, rules: MarginRules | None = None,
                  n_boot: int = N_BOOT, seed: int = RNG_SEED) -> pd.DataFrame:
    """One row per (stress figure, base arm) of :func:`stress_runs` output: survival per level, s* with
    its interval and censoring, the sensitivity with its interval, and the rank within the figure."""
    rules = rules or margin_rules(grid)
    figures = stress_figures(grid)
    rows = []
    for (fig_key, base), group in runs.groupby(["figure", "base_arm"], sort=False):
        skey, levels = figures[fig_key]
        _, survived, final = seed_matrix(group, len(levels))
        m = arm_margin(survived, final, levels, rules.survival_threshold, n_boot, seed)
        rows.append({"figure": fig_key, "arm": base, "stress_key": skey,
                     "levels": " ".join(map(str, levels)), "numeric": _numeric(levels),
                     "n_seeds": len(survived),
                     "n_incomplete": int((group["status"] == "incomplete").sum()),
                     "survival": _survival_text(survived), **{k: v for k, v in m.items() if k != "survival"},
                     "ci_method": f"bootstrap {CI_LEVEL:.0%} over seeds" if len(survived) > 1
                     else "single seed"})
    table = pd.DataFrame(rows)
    return rank_arms(table) if len(table) else table


def _order_key(row) -> float:
    return math.inf if row["s_star_censored"] == "above" else row["s_star"]


def rank_arms(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``rank`` (1 + arms of the figure whose s* interval lies entirely above) and ``rank_shared``, and
    where the table has sensitivity intervals ``sens_rank`` (1 + arms whose sensitivity interval lies
    entirely below) and ``sens_rank_shared``; rows sorted per figure by s*, highest first (censored above
    first)."""
    out = []
    for _, group in table.groupby("figure", sort=False):
        g = group.assign(_key=group.apply(_order_key, axis=1)).sort_values("_key", ascending=False)
        ranks = [1 + int((g["s_star_lo"] > hi).sum()) for hi in g["s_star_hi"]]
        g = g.assign(rank=ranks).drop(columns="_key")
        g = g.assign(rank_shared=g["rank"].duplicated(keep=False))
        if "sensitivity_lo" in g:
            sens = [1 + int((g["sensitivity_hi"] < lo).sum()) for lo in g["sensitivity_lo"]]
            g = g.assign(sens_rank=sens)
            g = g.assign(sens_rank_shared=g["sens_rank"].duplicated(keep=False))
        out.append(g)
    return pd.concat(out, ignore_index=True)


def separated(a: dict, b: dict) -> bool:
    """Whether `a`'s s* interval lies entirely above `b`'s (a censored end sits at its boundary level, so
    two intervals censored on the same side never separate)."""
    return bool(a["s_star_lo"] > b["s_star_hi"])


# ------------------------------------------------------------------------------- survival curves


def kaplan_meier(times, events) -> pd.DataFrame:
    """Product-limit survival of runs with `times` (collapse or last step) and `events` (True = collapsed).

    One row per distinct time (after a row at step 0, survival 1): step, at_risk (runs with time >= step),
    events, censored, survival = prod over event times <= step of (1 - events / at_risk). A run censored
    at the step of an event is still at risk at it."""
    t, e = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    rows, surv = [(0.0, len(t), 0, 0, 1.0)], 1.0
    for step in np.unique(t[np.isfinite(t)]):
        at, d = int((t >= step).sum()), int(((t == step) & e).sum())
        c = int(((t == step) & ~e).sum())
        surv *= 1.0 - d / at if at else 1.0
        rows.append((float(step), at, d, c, surv))
    return pd.DataFrame(rows, columns=["step", "at_risk", "events", "censored", "survival"])


def km_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`kaplan_meier` per (figure, base arm, level) of :func:`stress_runs` output."""
    parts = []
    for (fig_key, base, i), g in runs.groupby(["figure", "base_arm", "level_index"], sort=True):
        curve = kaplan_meier(g["survival_step"], g["collapse_step"].notna())
        parts.append(curve.assign(figure=fig_key, base_arm=base, level=g["level"].iloc[0], level_index=i))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["step", "at_risk", "events", "censored", "survival", "figure", "base_arm", "level",
                 "level_index"])


# ------------------------------------------------------------------------------- replication


OUTCOMES = ("kept, separated", "kept order, not separated", "flipped", "missing in B")


def _as_sensitivity(row: dict) -> dict:
    """The LR-sensitivity interval as an s*-like margin where higher is more stable (its negative)."""
    return {"s_star": -row["sensitivity"], "s_star_lo": -row["sensitivity_hi"],
            "s_star_hi": -row["sensitivity_lo"], "s_star_censored": ""}


#: The margins a replication compares: name -> the row as an s*-like margin (higher = more stable).
MARGINS = {"s*": lambda row: row, "LR sensitivity": _as_sensitivity}


def compare_margins(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Every ordered pair (more stable, less stable) of a figure's arms whose interval of a margin (s*;
    LR sensitivity where both runs have it) is separated in `a`, with its outcome in `b` (one of
    OUTCOMES), and the counts of outcomes over both margins."""
    rows = []
    index_b = {(r["figure"], r["arm"]): r for r in b.to_dict("records")}
    names = [m for m in MARGINS if m == "s*" or {"sensitivity_lo", "sensitivity_hi"} <= set(a) & set(b)]
    for margin in names:
        view = MARGINS[margin]
        for fig_key, group in a.groupby("figure", sort=False):
            arms = group.to_dict("records")
            for hi in arms:
                for lo in arms:
                    if hi is lo or not separated(view(hi), view(lo)):
                        continue
                    bh, bl = index_b.get((fig_key, hi["arm"])), index_b.get((fig_key, lo["arm"]))
                    if bh is None or bl is None:
                        outcome = OUTCOMES[3]
                    elif separated(view(bh), view(bl)):
                        outcome = OUTCOMES[0]
                    elif _order_key(view(bh)) < _order_key(view(bl)):
                        outcome = OUTCOMES[2]
                    else:
                        outcome = OUTCOMES[1]
                    rows.append({"margin": margin, "figure": fig_key, "higher": hi["arm"], "lower": lo["arm"],
                                 "outcome": outcome})
    table = pd.DataFrame(rows, columns=["margin", "figure", "higher", "lower", "outcome"])
    return table, {o: int((table["outcome"] == o).sum()) for o in OUTCOMES}


def counts_line(counts: dict) -> str:
    n = sum(counts.values())
    line = (f"pairs separated in A: {n}; in B: {counts[OUTCOMES[0]]} kept the order with separation, "
            f"{counts[OUTCOMES[1]]} kept the order without separation, {counts[OUTCOMES[2]]} flipped")
    return line + (f", {counts[OUTCOMES[3]]} missing in B" if counts[OUTCOMES[3]] else "")


def read_margins(path: str | Path) -> pd.DataFrame:
    """A margins.csv written by analysis.report; a UsageError names a file that is not one."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable CSV ({e})") from None
    missing = {"figure", "arm", "s_star", "s_star_lo", "s_star_hi", "s_star_censored"} - set(frame.columns)
    if missing:
        raise UsageError(f"{path}: not a margins.csv (no column {', '.join(sorted(missing))})")
    return frame.assign(s_star_censored=frame["s_star_censored"].astype(object).fillna("").astype(str))


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.margins", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="do run B's margins keep run A's separated orderings?")
    cmp.add_argument("a", help="margins.csv of run A (e.g. seeds 0-2)")
    cmp.add_argument("b", help="margins.csv of run B (e.g. seeds 3-5)")
    cmp.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    table, counts = compare_margins(read_margins(args.a), read_margins(args.b))
    body = "".join(f"| {r.margin} | {r.figure} | {r.higher} | {r.lower} | {r.outcome} |\n"
                   for r in table.itertuples())
    text = ("| margin | figure | more stable in A | less stable in A | in B |\n|---|---|---|---|---|\n" + body
            + "\n"
            + counts_line(counts) + "\n")
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
