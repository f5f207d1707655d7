"""The paper's panels against gradient steps (matplotlib; every panel function takes an Axes).

One colour per arm, the same in every panel of a figure (:func:`arm_colors`, in the arms' order). Each
arm is drawn as the mean over its seeds (over the seeds that reached that step) with a min-max band over
seeds and a thin line per seed; a collapse (analysis.stability's rule) is marked with an ``x`` on that
seed's curve at its collapse step. Training series may be smoothed by a trailing rolling mean over
``smooth`` logged steps per seed before averaging; eval series never are.

The KL panel plots the k3 estimator of D_KL(mu_old || pi_old), mean(r - 1 - log r) with
r = pi_old / mu_old on sampled tokens (``kl/train_infer_k3``): never negative and of low variance, where
the k1 estimator mean(logp_behavior - logp_old) (still in the metrics and the CSVs) is unbiased but
noisy and often negative, which a log axis cannot show. It is always lightly smoothed (a rolling mean
over at least ``KL_SMOOTH`` steps) and drawn on a log axis clipped at ``KL_FLOOR`` (1e-6): a curve on
the floor means "KL indistinguishable from zero", and a panel where every value is at or below the floor
says so in words instead of drawing nothing. The log axis starts at a fifth of the 5th percentile of the
plotted means (never below the floor), so band edges that dip do not squash the curves.

Text is sized for reading in a browser: panels are laid out at most three per row (two by two for four)
and all text is at least 11 pt at the figure's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

KL_FLOOR = 1e-6
KL_SMOOTH = 3  # logged steps in the KL panel's rolling mean, at least
#: Text sizes (pt) of every figure, set for its creation only (matplotlib.rc_context: no global state).
FONTS = {"font.size": 12, "axes.titlesize": 14, "axes.labelsize": 12, "xtick.labelsize": 11,
         "ytick.labelsize": 11, "legend.fontsize": 12, "figure.titlesize": 14}


@dataclass(frozen=True)
class Panel:
    """One panel: the metric it plots, its title and y label, whether the y axis is logarithmic."""

    metric: str
    title: str
    ylabel: str
    log: bool = False
    smoothable: bool = True
    min_smooth: int = 1  # the panel's rolling window is at least this (1: only the figure's own)
    fallback: str = ""  # metric plotted when no run logged `metric` (runs from before it existed)


PANELS = {
    "score": Panel("eval/score", "Benchmark score", "avg@k score (0-1)", smoothable=False),
    "reward": Panel("reward/mean", "Training reward", "mean reward (0-1)"),
    "entropy": Panel("entropy/mean", "Entropy", "entropy (nats / token)"),
    "kl": Panel("kl/train_infer_k3", "Train-inference KL (k3)",
                r"$D_{KL}(\mu_{old}\|\pi_{old})$ (nats / token)", log=True, min_smooth=KL_SMOOTH,
                fallback="kl/train_infer_k1"),
    "length": Panel("eval/response_length", "Eval response length", "length (tokens)", smoothable=False),
    # what users of the train-inference corrections watch (rl_core.losses.objectives' stats)
    "masked": Panel("is/masked_frac", "Tokens masked by the correction", "fraction of tokens"),
    "clip": Panel("clip/frac", "Tokens clipped (staleness)", "fraction of tokens"),
    "seq_ratio": Panel("seq/ratio_log_std", "Sequence-ratio spread",
                       r"std over responses of log $\pi_{old}/\mu_{old}$ (seq.)"),
}
DEFAULT_PANELS = ("score", "reward", "entropy", "kl")
COLD_START_PANELS = (*DEFAULT_PANELS, "length")


def arm_colors(arms) -> dict[str, tuple]:
    """A stable colour per arm, in the given order (tab10, then tab20 past ten arms)."""
    arms = list(arms)
    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def seed_matrix(tidy: pd.DataFrame, figure: str, arm: str, metric: str, smooth: int = 1) -> pd.DataFrame:
    """One arm's `metric`: index step, one column per seed (NaN where a seed did not log it)."""
    sel = tidy[(tidy["figure"] == figure) & (tidy["arm"] == arm) & (tidy["metric"] == metric)]
    if sel.empty:
        return pd.DataFrame()
    matrix = sel.drop_duplicates(["seed", "step"], keep="last").pivot(index="step", columns="seed",
                                                                      values="value").sort_index()
    matrix = matrix.replace([np.inf, -np.inf], np.nan)
    if smooth > 1:
        matrix = matrix.apply(lambda col: col.dropna().rolling(smooth, min_periods=1).mean()
                              .reindex(col.index))
    return matrix


def mean_band(matrix: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over the seeds that have a finite value at each step."""
    values = matrix.to_numpy(dtype=float)
    keep = np.isfinite(values).any(axis=1)
    values = values[keep]
    return (matrix.index.to_numpy()[keep], np.nanmean(values, axis=1), np.nanmin(values, axis=1),
            np.nanmax(values, axis=1))


def _collapse_points(matrix: pd.DataFrame, collapses: dict[int, float]) -> list[tuple[float, float]]:
    """(step, value) of each seed's curve at its collapse step (last finite value at or before it)."""
    points = []
    for seed, step in collapses.items():
        if seed not in matrix or not np.isfinite(step):
            continue
        col = matrix[seed].dropna()
        col = col[col.index <= step]
        if len(col):
            points.append((float(step), float(col.iloc[-1])))
    return points


def plot_panel(ax, tidy: pd.DataFrame, figure: str, panel: Panel, arms, colors: dict, labels: dict,
               collapses: dict | None = None, smooth: int = 1) -> None:
    """Draw one panel of `figure` on `ax`: per arm a mean line, a min-max band, collapse crosses.

    `collapses` maps arm -> {seed: collapse step}; `smooth` applies to smoothable panels only.
    """
    plotted = []
    metric = panel.metric
    if panel.fallback and not (tidy["metric"] == metric).any():
        metric = panel.fallback
    window = max(smooth, panel.min_smooth) if panel.smoothable else 1
    for arm in arms:
        matrix = seed_matrix(tidy, figure, arm, metric, window)
        if matrix.empty:
            continue
        steps, mean, lo, hi = mean_band(matrix)
        if panel.log:
            mean, lo, hi = (np.clip(v, KL_FLOOR, None) for v in (mean, lo, hi))
            plotted.append(mean)
        color = colors[arm]
        marker = "o" if not panel.smoothable and len(steps) < 30 else None
        ax.plot(steps, mean, color=color, lw=1.6, marker=marker, ms=3, label=labels.get(arm, arm))
        if matrix.shape[1] > 1:
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)
            for seed in matrix.columns:  # thin per-seed lines: a band can hide one outlying seed
                col = matrix[seed].dropna()
                y = np.clip(col.to_numpy(), KL_FLOOR, None) if panel.log else col.to_numpy()
                ax.plot(col.index.to_numpy(), y, color=color, lw=0.6, alpha=0.5)
        for x, y in _collapse_points(matrix, (collapses or {}).get(arm, {})):
            y = max(y, KL_FLOOR) if panel.log else y
            ax.plot([x], [y], marker="x", color=color, ms=9, mew=2.2, zorder=5, ls="none")
    if panel.log:
        ax.set_yscale("log")
        values = np.concatenate(plotted) if plotted else np.array([])
        if values.size and (values > KL_FLOOR).any():  # band edges dipping to the floor would squash curves
            ax.set_ylim(bottom=max(KL_FLOOR, 0.2 * float(np.percentile(values, 5))))
        else:
            ax.set_ylim(KL_FLOOR / 10, KL_FLOOR * 1e3)
            what = f"every value <= {KL_FLOOR:.0e}\n(no train-inference gap)" if values.size else "not logged"
            ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.3",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    ax.set_title(panel.title + (f", mean of {window} steps" if window > smooth else ""))
    ax.set_xlabel("gradient step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3, which="major")


def auto_smooth(tidy: pd.DataFrame, figure: str) -> int:
    """A rolling window of about 1/40 of the figure's longest run (1 for short runs)."""
    steps = tidy.loc[(tidy["figure"] == figure) & (tidy["metric"] == "reward/mean"), "step"]
    return max(1, int(steps.max()) // 40) if len(steps) else 1


def collapses_by_arm(per_run: pd.DataFrame | None, figure: str) -> dict[str, dict[int, float]]:
    """{arm: {seed: collapse step}} of the collapsed runs of `figure` in a stability_runs table."""
    if per_run is None or per_run.empty:
        return {}
    sel = per_run[(per_run["figure"] == figure) & per_run["collapse_step"].notna()]
    out: dict[str, dict[int, float]] = {}
    for row in sel.itertuples(index=False):
        out.setdefault(row.arm, {})[int(row.seed)] = float(row.collapse_step)
    return out


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) of a figure's panels: two by two for four, else at most three per row."""
    cols = 2 if n_panels == 4 else min(n_panels, 3)
    return -(-n_panels // cols), cols


def plot_figure(tidy: pd.DataFrame, figure: str, arms, labels: dict | None = None,
                per_run: pd.DataFrame | None = None, title: str | None = None, panels=DEFAULT_PANELS,
                smooth: int | None = None, rule_name: str = "score-drop-or-kl-break",
                colors: dict | None = None, legend_handles: list | None = None):
    """The panels of one figure (:func:`grid_shape`, 5 x 3.4 in each, dpi 120, text >= 11 pt) with one
    legend naming arms by label (in a free panel slot when there is one, else below).

    `colors` (arm -> colour) replaces the per-figure palette, e.g. a stress figure's colour per base arm
    and lightness per level; `legend_handles` replaces the one-entry-per-arm legend, and the legend then
    goes below the panels (outside the axes) whatever the free slots.

    Returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, any backend):
    ``fig.savefig(path)`` writes it.
    """
    arms = list(arms)
    labels = labels or {}
    colors = colors or arm_colors(arms)
    smooth = auto_smooth(tidy, figure) if smooth is None else smooth
    rows, cols = grid_shape(len(panels))
    with matplotlib.rc_context(FONTS):
        fig = Figure(figsize=(5.0 * cols, 3.4 * rows + 0.9), dpi=120, layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        collapses = collapses_by_arm(per_run, figure)
        for ax, key in zip(axes, panels, strict=False):
            plot_panel(ax, tidy, figure, PANELS[key], arms, colors, labels, collapses, smooth)
        handles = legend_handles or [Line2D([], [], color=colors[a], lw=2.5, label=labels.get(a, a))
                                     for a in arms]
        if collapses:
            handles.append(Line2D([], [], color="0.3", marker="x", ls="none", mew=2,
                                  label=f"collapse ({rule_name})"))
        spare = axes[len(panels):]
        for ax in spare:
            ax.set_axis_off()
        if len(spare) and not legend_handles:
            spare[0].legend(handles=handles, loc="center", frameon=False)
        else:
            fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
        note = "mean over seeds, band = min-max, thin lines = seeds"
        note += f"; training series smoothed over {smooth} steps" if smooth > 1 else ""
        fig.suptitle(f"{title or figure}\n({note})")
    return fig
