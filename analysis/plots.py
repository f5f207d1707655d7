"""The paper's panels against gradient steps (matplotlib; every panel function takes an Axes).

One colour per arm, the same in every panel of a figure (:func:`arm_colors`, in the arms' order). Each
arm is drawn as the mean over its seeds (over the seeds that reached that step) with a min-max band over
seeds; a collapse (analysis.stability's rule) is marked with an ``x`` on that seed's curve at its
collapse step. Training series may be smoothed by a trailing rolling mean over ``smooth`` logged steps
per seed before averaging; eval series never are.

The KL panel uses a log axis. The per-token estimator mean(logp_behavior - logp_old) can come out
non-positive from sampling noise although the KL itself is >= 0, so the mean and band are computed on
the raw values and then clipped at ``KL_FLOOR`` (1e-6) for display: a curve lying on the floor means
"KL indistinguishable from zero". Taking |KL| instead would turn noise into spurious positive mass.
The log axis starts at a fifth of the 5th percentile of the plotted means (never below the floor), so
band edges and isolated means that noise pushes to the floor do not squash the curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

KL_FLOOR = 1e-6


@dataclass(frozen=True)
class Panel:
    """One panel: the metric it plots, its title and y label, whether the y axis is logarithmic."""

    metric: str
    title: str
    ylabel: str
    log: bool = False
    smoothable: bool = True


PANELS = {
    "score": Panel("eval/score", "Benchmark score", "avg@k score (0-1)", smoothable=False),
    "reward": Panel("reward/mean", "Training reward", "mean reward (0-1)"),
    "entropy": Panel("entropy/mean", "Entropy", "entropy (nats / token)"),
    "kl": Panel("kl/train_infer_k1", "Train-inference KL", r"$D_{KL}(\mu_{old}\|\pi_{old})$ (nats / token)",
                log=True),
    "length": Panel("eval/response_length", "Eval response length", "length (tokens)", smoothable=False),
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
    for arm in arms:
        matrix = seed_matrix(tidy, figure, arm, panel.metric, smooth if panel.smoothable else 1)
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
        for x, y in _collapse_points(matrix, (collapses or {}).get(arm, {})):
            y = max(y, KL_FLOOR) if panel.log else y
            ax.plot([x], [y], marker="x", color=color, ms=9, mew=2.2, zorder=5, ls="none")
    if panel.log:
        ax.set_yscale("log")
        if plotted:  # band edges dipping to the floor (noise) would squash the curves: cut them
            ax.set_ylim(bottom=max(KL_FLOOR, 0.2 * float(np.percentile(np.concatenate(plotted), 5))))
    ax.set_title(panel.title, fontsize=11)
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


def plot_figure(tidy: pd.DataFrame, figure: str, arms, labels: dict | None = None,
                per_run: pd.DataFrame | None = None, title: str | None = None, panels=DEFAULT_PANELS,
                smooth: int | None = None, rule_name: str = "score-drop-or-kl-break"):
    """A row of panels for one figure (3.5 in per panel, dpi 150) with one legend naming arms by label.

    Returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, any backend):
    ``fig.savefig(path)`` writes it.
    """
    arms = list(arms)
    labels = labels or {}
    colors = arm_colors(arms)
    smooth = auto_smooth(tidy, figure) if smooth is None else smooth
    fig = Figure(figsize=(3.5 * len(panels), 3.5), dpi=150, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    collapses = collapses_by_arm(per_run, figure)
    for ax, key in zip(axes[0], panels, strict=True):
        plot_panel(ax, tidy, figure, PANELS[key], arms, colors, labels, collapses, smooth)
    handles = [Line2D([], [], color=colors[a], lw=2, label=labels.get(a, a)) for a in arms]
    if collapses:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="none", mew=2,
                              label=f"collapse ({rule_name})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)
    note = f"mean over seeds, band = min-max; training series smoothed over {smooth} steps" if smooth > 1 \
        else "mean over seeds, band = min-max"
    fig.suptitle(f"{title or figure}  ({note})", fontsize=12)
    return fig
