"""Dose-response panels: a figure whose runs span several rollout number formats (fig6_precision_dose) is
also read across formats, one point per run: the final score and the survival step (y) against the run's
measured mean train-inference KL (x, k3 estimator, log scale), one line per objective through the means
over seeds at each format. It tests the paper's causal claim directly: if the IS weight corrects the
train-inference discrepancy, the gap between MiniRL and MiniRL - IS should widen as the KL grows.

Pure functions on the report's frames (``runs`` from analysis.load, ``per_run`` from analysis.stability);
:func:`plot_dose` takes the Axes to draw on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: The x of every point: the run's mean k3 KL (never negative, so it has a log axis).
X_METRIC = "mean_kl_k3"
Y_METRICS = (("final_score", "final benchmark score (avg@k)"),
             ("survival_step", "survival step (collapse, else last step)"))
KL_FLOOR = 1e-6


def _setting(config: dict, section: str, key: str):
    return (config.get(section) or {}).get(key) if isinstance(config, dict) else None


def dose_frame(runs: pd.DataFrame, per_run: pd.DataFrame, figure: str) -> pd.DataFrame:
    """One row per run of ``figure``: objective, precision (rollout format), seed, kl and the y metrics.
    Empty unless the figure's runs span at least two rollout precisions."""
    sel = runs[runs["figure"] == figure]
    if sel.empty:
        return pd.DataFrame()
    ident = pd.DataFrame({
        "arm": sel["arm"].values, "seed": sel["seed"].astype(int).values,
        "objective": [_setting(c, "loss", "objective") for c in sel["config"]],
        "precision": [_setting(c, "rollout", "precision") for c in sel["config"]],
    })
    if ident["precision"].nunique() < 2:
        return pd.DataFrame()
    columns = ["arm", "seed", X_METRIC, *(m for m, _ in Y_METRICS)]
    columns += ["collapse_step"] if "collapse_step" in per_run else []
    stats = per_run[per_run["figure"] == figure][columns]
    out = ident.merge(stats.assign(seed=stats["seed"].astype(int)), on=["arm", "seed"], how="left")
    return out.rename(columns={X_METRIC: "kl"})


def dose_lines(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds per (objective, precision), sorted by KL within an objective: the drawn lines."""
    means = frame.groupby(["objective", "precision"], sort=False)[["kl", metric]].mean().reset_index()
    return means.sort_values(["objective", "kl"]).reset_index(drop=True)


def plot_dose(frame: pd.DataFrame, axes, colors: dict | None = None) -> None:
    """Draw one panel per y metric on ``axes`` (a sequence of two Axes)."""
    objectives = list(dict.fromkeys(frame["objective"]))
    colors = colors or {o: f"C{i}" for i, o in enumerate(objectives)}
    for ax, (metric, label) in zip(axes, Y_METRICS, strict=True):
        for obj in objectives:
            pts = frame[frame["objective"] == obj]
            ax.scatter(np.maximum(pts["kl"], KL_FLOOR), pts[metric], color=colors[obj], alpha=0.45, s=22)
            line = dose_lines(pts, metric)
            ax.plot(np.maximum(line["kl"], KL_FLOOR), line[metric], "-o", color=colors[obj], label=obj)
            for row in line.itertuples(index=False):
                ax.annotate(row.precision, (max(row.kl, KL_FLOOR), getattr(row, metric)), fontsize=10,
                            textcoords="offset points", xytext=(4, 4), color=colors[obj])
        if metric == "survival_step" and "collapse_step" in frame and frame["collapse_step"].isna().all() \
                and frame[metric].nunique() == 1:  # a flat line says nothing on its own
            ax.text(0.5, 0.25, f"no run collapsed: all {len(frame)} survived to their last step "
                    f"({frame[metric].iloc[0]:g})", transform=ax.transAxes, ha="center", fontsize=11,
                    bbox={"facecolor": "white", "edgecolor": "0.7"})
        ax.set_xscale("log")
        ax.set_xlabel("mean train-inference KL, k3 (nats/token, log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title="objective")


def dose_figure(frame: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(13, 5), layout="constrained")
    plot_dose(frame, fig.subplots(1, 2))
    fig.suptitle(f"{title}: across rollout formats (points: seeds; lines: mean per format)")
    return fig


__all__ = ["dose_frame", "dose_lines", "plot_dose", "dose_figure", "X_METRIC", "Y_METRICS"]
