"""Stability-margin panels of a stress figure (matplotlib; every panel function takes an Axes).

Colour = base arm, the same in every figure of a grid (:func:`base_colors`); lightness = stress level
(lightest = lowest stress, :func:`level_shade`). Panels: the stability frontier (final score against the
stress level on a log axis, seeds as points, a collapsed run as an ``x``, a line through the seed means),
the survival fraction per level with the threshold and each arm's s*, and Kaplan-Meier curves of the
runs' survival against gradient steps, one panel per base arm, one line per level. Legends sit outside
the axes, below, with a column per base arm.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.plots import FONTS


def base_colors(arms) -> dict[str, tuple]:
    """A colour per base arm, in the given order (the grid's order of first appearance)."""
    arms = list(dict.fromkeys(arms))
    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: cmap(i % cmap.N)[:3] for i, arm in enumerate(arms)}


def level_shade(color, i: int, n: int) -> tuple:
    """`color` blended towards white: 65% white at the lowest of `n` levels, the full colour at the top."""
    mix = 0.65 * (1 - i / max(n - 1, 1))
    return tuple(c + (1 - c) * mix for c in to_rgb(color))


def _x(levels: list, index) -> np.ndarray:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in levels)
    if numeric:
        return np.asarray(levels, dtype=float)[np.asarray(index, dtype=int)]
    return np.asarray(index, float)


def _stress_axis(ax, levels: list, key: str) -> None:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in levels)
    if numeric:
        ax.set_xscale("log")
        ax.set_xticks(levels, [f"{v:g}" for v in levels], rotation=30)
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
    ax.set_xlabel(f"stress: {key}" + (" (log)" if numeric else ""))
    ax.grid(alpha=0.3)


def plot_frontier(ax, runs: pd.DataFrame, levels: list, key: str, colors: dict) -> None:
    """Final score (a run without a finite eval score at 0, as the LR sensitivity counts it) per level."""
    for arm, g in runs.groupby("base_arm", sort=False):
        score = g["final_score"].fillna(0.0).to_numpy(float)
        x = _x(levels, g["level_index"])
        collapsed = g["collapse_step"].notna().to_numpy()
        ax.scatter(x[~collapsed], score[~collapsed], color=colors[arm], s=22, alpha=0.6)
        ax.scatter(x[collapsed], score[collapsed], color=colors[arm], marker="x", s=45, lw=2)
        means = g.assign(score=score).groupby("level_index")["score"].mean()
        ax.plot(_x(levels, means.index), means.to_numpy(), "-", color=colors[arm], lw=2)
    _stress_axis(ax, levels, key)
    ax.set_ylabel("final benchmark score (avg@k)")
    ax.set_title("Stability frontier")


def plot_survival(ax, runs: pd.DataFrame, margins: pd.DataFrame, levels: list, key: str, colors: dict,
                  threshold: float) -> None:
    """Share of surviving seeds per level, the threshold, and each arm's s* (dotted; censored: none).
    Arms often survive alike (identical lines): each later arm is drawn narrower on top of the earlier ones,
    so coinciding arms show as nested stripes, none hidden, and no point is moved."""
    arms = list(runs.groupby("base_arm", sort=False))
    for k, (arm, g) in enumerate(arms):
        wide = (len(arms) - 1 - k) / max(len(arms) - 1, 1)  # 1 for the first arm drawn, 0 for the last
        frac = g.groupby("level_index")["collapse_step"].apply(lambda s: s.isna().mean())
        ax.plot(_x(levels, frac.index), frac.to_numpy(), "-o", color=colors[arm], ms=4 + 5 * wide,
                lw=1.5 + 4 * wide)
        row = margins[margins["arm"] == arm]
        if len(row) and row["s_star_censored"].iloc[0] == "":
            ax.axvline(row["s_star"].iloc[0], color=colors[arm], ls=":", lw=1.5 + 3 * wide)
    ax.axhline(threshold, color="0.4", ls="--", lw=1)
    _stress_axis(ax, levels, key)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("surviving seeds (fraction)")
    ax.set_title(f"Survival (dashed: {threshold:g}; dotted: s*)")


def plot_km(ax, km: pd.DataFrame, arm: str, label: str, n_levels: int, color) -> None:
    """Kaplan-Meier curves of one base arm, one step line per level."""
    for i, g in km[km["base_arm"] == arm].groupby("level_index", sort=True):
        ax.step(g["step"], g["survival"], where="post", color=level_shade(color, int(i), n_levels), lw=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("survival (Kaplan-Meier)")
    ax.set_title(label)
    ax.grid(alpha=0.3)


def margins_figure(runs: pd.DataFrame, margins: pd.DataFrame, km: pd.DataFrame, levels: list, key: str,
                   labels: dict, colors: dict, threshold: float, title: str) -> Figure:
    """Frontier and survival on top, a Kaplan-Meier panel per base arm below, one legend underneath."""
    arms = list(dict.fromkeys(runs["base_arm"]))
    n_km = max(len(arms), 1)
    cols = min(n_km, 4)
    km_rows = -(-n_km // cols)
    with matplotlib.rc_context(FONTS):
        size = (max(11.0, 4.2 * cols), 4.4 + 3.4 * km_rows + 1.2)
        fig = Figure(figsize=size, dpi=110, layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.4, 3.4 * km_rows])
        ax_f, ax_s = top.subplots(1, 2)
        plot_frontier(ax_f, runs, levels, key, colors)
        plot_survival(ax_s, runs, margins, levels, key, colors, threshold)
        axes = np.atleast_1d(bottom.subplots(km_rows, cols, squeeze=False).ravel())
        for ax, arm in zip(axes, arms, strict=False):
            plot_km(ax, km, arm, labels.get(arm, arm), len(levels), colors[arm])
        for ax in axes[len(arms):]:
            ax.set_axis_off()
        handles = [Line2D([], [], color=colors[a], lw=3, label=labels.get(a, a)) for a in arms]
        handles += [Line2D([], [], color="0.3", marker="x", ls="none", mew=2, label="collapsed run"),
                    Line2D([], [], color="0.3", marker="o", ls="none", alpha=0.6, label="surviving run")]
        shades = [Line2D([], [], color=level_shade((0.2, 0.2, 0.2), i, len(levels)), lw=3,
                         label=f"{key.rsplit('.', 1)[-1]}={v:g}" if not isinstance(v, str) else v)
                  for i, v in enumerate(levels)]
        fig.legend(handles=handles + shades, loc="outside lower center",
                   ncol=min(len(handles + shades), 5), frameon=False)
        fig.suptitle(f"{title}\n(colour = arm; Kaplan-Meier lines lighter at lower stress)")
    return fig
