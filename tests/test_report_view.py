"""The report as a reader sees it: the summary on top (verdict counts, a figure x arm stability matrix
coloured by status), units in every header, a KL panel that is never silently empty, legible figures, and
an HTML page that needs nothing from the network."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from test_analysis import make_run, write_run

from analysis.plots import FONTS, KL_FLOOR, PANELS, grid_shape, plot_figure, plot_panel
from analysis.render import ARM_COLUMNS, arm_status, summary_html, summary_md, verdict_counts
from analysis.report import build_report


def tidy_kl(values_by_arm: dict[str, list[float]], metric: str) -> pd.DataFrame:
    rows = [{"figure": "f", "arm": arm, "seed": 0, "step": i + 1, "metric": metric, "value": v}
            for arm, values in values_by_arm.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_arm_status_from_seed_counts():
    assert arm_status({"n_seeds": 3, "n_collapsed": 0, "n_diverged": 0, "n_incomplete": 0}) == "stable"
    assert arm_status({"n_seeds": 3, "n_collapsed": 1, "n_diverged": 0, "n_incomplete": 0}) == "mixed"
    assert arm_status({"n_seeds": 2, "n_collapsed": 1, "n_diverged": 2, "n_incomplete": 0}) == "collapsed"
    assert arm_status({"n_seeds": 2, "n_collapsed": 0, "n_diverged": 0, "n_incomplete": 1}) == "incomplete"
    assert arm_status(None) == "no runs"


def test_summary_counts_verdicts_and_colours_the_matrix():
    findings = pd.DataFrame({"verdict": ["agrees", "agrees", "disagrees", "inconclusive: seeds split",
                                         "inconclusive: one seed per arm (a point, no interval): gap ..."]})
    assert verdict_counts(findings) == {"agrees": 2, "disagrees": 1, "inconclusive": 2}
    per_arm = pd.DataFrame([
        {"figure": "f1", "arm": "a", "label": "A", "n_seeds": 1, "n_collapsed": 0, "n_diverged": 0,
         "n_incomplete": 0, "final_score": 0.61, "first_collapse_step": np.nan},
        {"figure": "f1", "arm": "b", "label": "B", "n_seeds": 1, "n_collapsed": 1, "n_diverged": 0,
         "n_incomplete": 0, "final_score": 0.12, "first_collapse_step": 40.0}])
    figures = [{"key": "f1", "title": "Fig 1", "arms": [("a", "A"), ("b", "B")]},
               {"key": "f2", "title": "Fig 2", "arms": [("c", "C")]}]
    page = summary_html(figures, per_arm, findings)
    assert "2 agrees" in page and "1 disagrees" in page and "2 inconclusive" in page
    assert '<td class="st-stable" title="A">stable · 0.610</td>' in page
    assert '<td class="st-collapsed" title="B">collapsed @40 · 0.120</td>' in page
    assert '<td class="st-none" title="c">no runs</td>' in page  # f2's arm, not run yet
    assert page.count('<td class="st-none">·</td>') == 3  # arms absent from a figure
    assert "One seed per arm" in page
    md = summary_md(figures, per_arm, findings)
    assert "| Fig 1 | stable · 0.610 | collapsed @40 · 0.120 | · |" in md


def test_every_stability_column_names_its_unit():
    unit = r"\((avg@k, 0-1|gradient steps|nats/token|ratio|tokens)\)"
    assert all(re.search(unit, header) for _, header, _ in ARM_COLUMNS)
    assert {c for c, _, _ in ARM_COLUMNS} >= {"max_kl_k3", "mean_kl_k3"}  # never-negative KL shown


def test_kl_panel_plots_k3_smoothed_and_never_negative():
    k1 = [-2e-4, 3e-4, -1e-4, 2e-4, -3e-4, 1e-4]  # the noisy k1 estimate, often negative
    k3 = [1e-4, 3e-4, 2e-4, 2e-4, 3e-4, 1e-4]
    tidy = pd.concat([tidy_kl({"a": k1}, "kl/train_infer_k1"), tidy_kl({"a": k3}, "kl/train_infer_k3")])
    ax = Figure().subplots()
    plot_panel(ax, tidy, "f", PANELS["kl"], ["a"], {"a": "C0"}, {}, smooth=1)
    (line,) = ax.get_lines()
    # trailing mean over 3 steps: (1+3+2)/3, (3+2+2)/3, ... (x 1e-4); the first two over what exists
    assert np.allclose(line.get_ydata(), [1e-4, 2e-4, 2e-4, 7e-4 / 3, 7e-4 / 3, 2e-4])
    assert "k3" in ax.get_title() and "3 steps" in ax.get_title() and "nats / token" in ax.get_ylabel()


def test_kl_panel_at_the_floor_says_so_instead_of_staying_empty():
    tidy = tidy_kl({"a": [0.0] * 8, "b": [1e-9] * 8}, "kl/train_infer_k3")  # an fp32 control: no gap
    ax = Figure().subplots()
    plot_panel(ax, tidy, "f", PANELS["kl"], ["a", "b"], {"a": "C0", "b": "C1"}, {})
    texts = [t.get_text() for t in ax.texts]
    assert any("no train-inference gap" in t and "1e-06" in t for t in texts)
    lo, hi = ax.get_ylim()
    assert lo < KL_FLOOR < hi  # the floor lines are inside the view
    ax = Figure().subplots()
    plot_panel(ax, tidy_kl({"a": [1.0]}, "reward/mean"), "f", PANELS["kl"], ["a"], {"a": "C0"}, {})
    assert [t.get_text() for t in ax.texts] == ["not logged"]


def test_figures_are_laid_out_for_reading():
    assert grid_shape(4) == (2, 2) and grid_shape(5) == (2, 3) and grid_shape(2) == (1, 2)
    tidy = tidy_kl({"a": [1e-3] * 10}, "kl/train_infer_k3")
    fig = plot_figure(tidy, "f", ["a"], {"a": "A"}, panels=("score", "reward", "entropy", "kl", "length"))
    sizes = [t.get_fontsize() for t in fig.findobj(lambda o: hasattr(o, "get_fontsize")) if t.get_text()]
    width_px = fig.get_figwidth() * fig.dpi
    # Shown at most ~1400 px wide in the report: every text stays >= 11 pt x its scale there.
    assert min(sizes) >= FONTS["xtick.labelsize"] and width_px <= 1800
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1  # the legend fills the free sixth slot


def test_report_html_loads_nothing_from_the_network(tmp_path):
    grid_dir = tmp_path / "results" / "toy"
    rng = np.random.default_rng(0)
    for arm in ("a", "b"):
        write_run(grid_dir, "fig", arm, 0, *make_run(40, rng), label=arm.upper())
    arms = {"a": {"label": "A"}, "b": {"label": "B"}}
    grid = {"name": "toy", "figures": {"fig": {"title": "Fig", "arms": arms}},
            "findings": [{"id": "x", "claim": "a beats b", "figure": "fig", "kind": "better",
                          "metric": "final_score", "better": "a", "worse": "b"}]}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(grid))
    page = build_report(grid_dir, tmp_path / "toy.yaml", n_boot=50).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page, re.I)
    assert 'class="summary"' in page and page.index('class="summary"') < page.index('<h2 id="fig"')
    assert "src=\"data:image/png;base64," in page
