"""A grid's report: figures, stability tables and the paper's findings, as HTML, Markdown and CSV.

    python -m analysis.report --grid-dir results/paper --grid-file experiments/paper.yaml \\
        --out results/paper/report

writes into ``--out``: ``report.html`` (self-contained: figures embedded as base64 PNG, opens offline;
config links are relative to the results tree), ``report.md`` (same tables, figures as relative PNG
links), ``fig_{figure}.png`` per figure, ``stability.csv`` (one row per arm), ``stability_runs.csv``
(one row per run), ``findings.csv`` and ``report.json`` (a summary that analysis.index lists).

The grid file is optional: without it figures, arms and labels come from the runs' meta.json and no
findings are evaluated (``--findings FILE`` supplies or replaces them; ``--rule key=value`` changes a
collapse-rule parameter, e.g. ``--rule score_margin=0.1``). Figures whose key contains ``cold_start``
get a fifth panel, eval response length (a figure may also list ``panels:`` keys of
analysis.plots.PANELS in the grid file).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from analysis import render, render_margins, samples
from analysis.dose import dose_figure, dose_frame
from analysis.early_warning import early_warning
from analysis.findings import FindingError, evaluate_findings, validate_findings
from analysis.load import load_grid
from analysis.margin_plots import base_colors, level_shade, margins_figure
from analysis.margins import (
    km_curves,
    margin_rules,
    margins_table,
    membership,
    stress_arm_index,
    stress_figures,
    stress_runs,
)
from analysis.plots import COLD_START_PANELS, DEFAULT_PANELS, plot_figure
from analysis.stability import CollapseRule, stability_arms, stability_runs
from rl_core.cli import UsageError, guard
from rl_core.orchestration.grid import GridError, expand_axes, read_yaml

SCHEMA_NOTE = ("Cells are the interquartile mean over seeds with a 95% percentile-bootstrap interval "
               "[lo, hi]; with 2 seeds the interval is their min-max, with 1 seed the value alone. "
               "*Collapse step: the step of collapse, or the last step reached by runs that never "
               "collapsed (censored).")


def read_grid_file(path: str | Path | None) -> dict:
    """The grid definition (YAML), or {} when no file is given; a missing file, bad YAML or a duplicate
    key is a GridError naming the file (and the line)."""
    if not path:
        return {}
    data = read_yaml(path, "grid or findings file") or {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    return data


def expanded_figures(grid: dict) -> dict:
    """Figure key -> {"arms": arm key -> arm}, with axes and stress levels crossed into arms, and for a
    figure with a stress axis "stress_arms": its base arms (axes crossed only): what findings may name."""
    out = {}
    for key, fig in (grid.get("figures") or {}).items():
        if isinstance(fig, dict):
            axes = {**(fig.get("axes") or {}), **(fig.get("stress") or {})}
            out[key] = {"arms": expand_axes(fig.get("arms") or {}, axes)}
            if fig.get("stress"):
                out[key]["stress_arms"] = expand_axes(fig.get("arms") or {}, fig.get("axes") or {})
    return out


def figure_layout(grid: dict, runs: pd.DataFrame) -> list[dict]:
    """Figures in the grid file's order (then any others found in the runs), each with its title,
    ordered (arm, label) pairs and panel keys."""
    defined = grid.get("figures") or {}
    keys = list(defined) + sorted(set(runs["figure"]) - set(defined))
    layout = []
    for key in keys:
        spec = defined.get(key) or {}
        seen = runs[runs["figure"] == key]
        arm_specs = expand_axes(spec.get("arms") or {},  # the arms as run
                                {**(spec.get("axes") or {}), **(spec.get("stress") or {})})
        arm_keys = list(arm_specs) + sorted(set(seen["arm"]) - set(arm_specs))
        labels = {a: (arm_specs.get(a) or {}).get("label") for a in arm_keys}
        for row in seen.itertuples():
            labels[row.arm] = labels.get(row.arm) or row.label
        title = spec.get("title") or (seen["figure_title"].iloc[0] if len(seen) else key)
        panels = spec.get("panels") or (COLD_START_PANELS if "cold_start" in key else DEFAULT_PANELS)
        layout.append({"key": key, "title": title, "arms": [(a, labels[a] or a) for a in arm_keys],
                       "panels": tuple(panels), "n_runs": len(seen)})
        if spec.get("stress"):
            (skey, levels), = spec["stress"].items()
            layout[-1].update(stress_index=stress_arm_index({"figures": {key: spec}})[key], stress_key=skey,
                              stress_levels=list(levels), base_labels={
                                  b: (arm.get("label") or b) for b, arm in expand_axes(
                                      spec.get("arms") or {}, spec.get("axes") or {}).items()})
    return layout


def grid_colors(figures: list[dict]) -> dict:
    """One colour per base arm (a stress figure's) or arm (any other figure's), the same in every figure."""
    keys = []
    for fig in figures:
        keys += list(fig["base_labels"]) if fig.get("stress_index") else [a for a, _ in fig["arms"]]
    return base_colors(keys)


def margins_section(tidy, per_run, runs, grid: dict, n_boot: int) -> dict:
    """The stress figures' margins (analysis.margins, analysis.early_warning): frames keyed by name, and
    per_run with each stress run's base arm and level (what more_stable findings read)."""
    members = membership(runs, grid) if len(runs) and stress_figures(grid) else pd.DataFrame(
        columns=["figure", "arm", "seed", "base_arm", "level_index"])
    srun = stress_runs(per_run, members)
    rules = margin_rules(grid)
    empty = pd.DataFrame(columns=["figure", "arm"])
    margins = margins_table(srun, grid, rules, n_boot) if len(srun) else empty
    leads, warn = early_warning(tidy, srun, rules) if len(srun) else (empty, empty)
    tagged = per_run.merge(members[["figure", "arm", "seed", "base_arm", "level_index"]],
                           on=["figure", "arm", "seed"], how="left") if len(per_run) else per_run
    return {"stress_runs": srun, "margins": margins, "km": km_curves(srun), "leads": leads,
            "warnings": warn, "rules": rules, "per_run": tagged}


def _margins_png(fig: dict, section: dict, out_dir: Path, colors: dict) -> Path | None:
    srun = section["stress_runs"]
    sel = srun[srun["figure"] == fig["key"]] if len(srun) else srun
    if not fig.get("stress_index") or sel.empty:
        return None
    figure = margins_figure(sel, _of_figure(section["margins"], fig["key"]),
                            _of_figure(section["km"], fig["key"]), fig["stress_levels"], fig["stress_key"],
                            fig["base_labels"], colors, section["rules"].survival_threshold,
                            f"{fig['title']}: stability margins")
    path = out_dir / f"fig_{fig['key']}_margins.png"
    figure.savefig(path)
    return path


def _t_c_sources(section: dict, key: str) -> str:
    leads = _of_figure(section["leads"], key)
    if leads.empty:
        return "no collapse yet"
    runs = leads.drop_duplicates(["arm", "seed"])
    rule = int((runs["t_c_source"] == "rule").sum())
    return (f"{len(runs)} collapsed runs, {rule} of them timed by the collapse rule's step (the reward "
            "never fell)")


def _stress_style(fig: dict, colors: dict) -> tuple[dict | None, list | None]:
    """A stress figure's curves: colour = base arm (grid-wide), lighter at lower stress; its legend names
    the base arms and the levels' shades, not the arms x levels."""
    if not fig.get("stress_index"):
        return None, None
    n = len(fig["stress_levels"])
    styles = {name: level_shade(colors[base], i, n) for name, (base, i) in fig["stress_index"].items()}
    bases = list(dict.fromkeys(b for b, _ in fig["stress_index"].values()))
    leaf = fig["stress_key"].rsplit(".", 1)[-1]
    handles = [Line2D([], [], color=colors[b], lw=3, label=fig["base_labels"].get(b, b)) for b in bases]
    handles += [Line2D([], [], color=level_shade((0.2, 0.2, 0.2), i, n), lw=3, label=f"{leaf}={v}")
                for i, v in enumerate(fig["stress_levels"])]
    return styles, handles


def _figure_png(tidy, per_run, fig: dict, out_dir: Path, rule: CollapseRule,
                colors: dict | None = None) -> Path | None:
    if fig["n_runs"] == 0:
        return None
    labels = dict(fig["arms"])
    styles, handles = _stress_style(fig, colors or {})
    if styles is not None:
        styles = {a: styles.get(a, (0.5, 0.5, 0.5)) for a, _ in fig["arms"]}
    figure = plot_figure(tidy, fig["key"], [a for a, _ in fig["arms"]], labels, per_run, fig["title"],
                         fig["panels"], rule_name=rule.name, colors=styles, legend_handles=handles)
    path = out_dir / f"fig_{fig['key']}.png"
    figure.savefig(path)
    return path


def _dose_png(runs, per_run, fig: dict, out_dir: Path) -> Path | None:
    """The dose-response reading of a figure whose runs span several rollout formats (analysis.dose)."""
    frame = dose_frame(runs, per_run, fig["key"]) if len(runs) else pd.DataFrame()
    if frame.empty:
        return None
    path = out_dir / f"fig_{fig['key']}_dose.png"
    dose_figure(frame, fig["title"]).savefig(path)
    return path


def _img_html(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _of_figure(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame[frame["figure"] == key] if len(frame) else frame


def _html_page(ctx: dict) -> str:
    out_dir = ctx["out_dir"]
    parts = [f"<h1>Report: grid <code>{html.escape(ctx['grid'])}</code></h1>",
             f"<p class=muted>{html.escape(ctx['subtitle'])}</p>",
             render.summary_html(ctx["figures"], ctx["per_arm"], ctx["findings"],
                                 _stress_matrices(ctx, True)),
             f"<p>Collapse rule: <code>{html.escape(ctx['rule'])}</code></p>",
             f"<p class=muted>{html.escape(SCHEMA_NOTE)}</p>",
             '<p><a href="#findings">Findings</a> · ' + " · ".join(
                 f'<a href="#{html.escape(f["key"])}">{html.escape(f["title"])}</a>' for f in ctx["figures"])
             + "</p>"]
    for fig in ctx["figures"]:
        parts.append(f'<h2 id="{html.escape(fig["key"])}">{html.escape(fig["title"])} '
                     f'<span class=muted>({html.escape(fig["key"])})</span></h2>')
        if fig.get("png"):
            parts.append(_img_html(fig["png"], fig["title"]))
        else:
            parts.append("<p class=muted>No runs of this figure yet.</p>")
        if fig.get("dose_png"):
            parts.append(_img_html(fig["dose_png"], f"{fig['title']}: across rollout formats"))
        if fig.get("margins_png"):
            parts.append(_img_html(fig["margins_png"], f"{fig['title']}: stability margins"))
        parts.append(_margins_block(ctx, fig, render_margins.margins_html))
        sel, arms = _of_figure(ctx["per_run"], fig["key"]), _of_figure(ctx["per_arm"], fig["key"])
        parts.append(render.arm_table_html(fig["arms"], arms, sel, out_dir))
        if len(sel):
            parts.append(render.run_table_html(sel, out_dir))
            parts.append(samples.arm_samples_html(sel))
    warned = _warnings(ctx["per_run"])
    if warned:
        items = [f"<li><code>{html.escape(run)}</code>: {html.escape(text)}</li>" for run, text in warned]
        parts += ['<h2 id="warnings">Warnings: runs whose files are short</h2><ul>', *items, "</ul>"]
    parts += ['<h2 id="findings">Findings: the paper\'s conclusions on this grid</h2>',
              render.findings_table_html(ctx["findings"])]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>Report {html.escape(ctx['grid'])}</title><style>{render.CSS}{samples.CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def _markdown(ctx: dict) -> str:
    lines = [f"# Report: grid `{ctx['grid']}`", "", ctx["subtitle"], "",
             render.summary_md(ctx["figures"], ctx["per_arm"], ctx["findings"], _stress_matrices(ctx, False)),
             "",
             f"Collapse rule: `{ctx['rule']}`", "", SCHEMA_NOTE, ""]
    for fig in ctx["figures"]:
        lines += [f"## {fig['title']} (`{fig['key']}`)", ""]
        for key in ("png", "dose_png", "margins_png"):
            if fig.get(key):
                lines += [f"![{fig['title']}]({fig[key].name})", ""]
        lines += [_margins_block(ctx, fig, render_margins.margins_md)]
        sel, arms = _of_figure(ctx["per_run"], fig["key"]), _of_figure(ctx["per_arm"], fig["key"])
        lines += [render.arm_table_md(fig["arms"], arms, sel, ctx["out_dir"]), ""]
    warned = _warnings(ctx["per_run"])
    if warned:
        lines += ["## Warnings: runs whose files are short", ""]
        lines += [f"* `{run}`: {text}" for run, text in warned] + [""]
    lines += ["## Findings", "", render.findings_table_md(ctx["findings"]), ""]
    return "\n".join(lines)


def _margins_block(ctx: dict, fig: dict, renderer) -> str:
    section = ctx["margins"]
    if not fig.get("stress_index"):
        return ""
    return renderer(_of_figure(section["margins"], fig["key"]), _of_figure(section["warnings"], fig["key"]),
                    fig["base_labels"], section["rules"], _t_c_sources(section, fig["key"]))


def _stress_matrices(ctx: dict, html_out: bool) -> str:
    render_one = render_margins.stress_matrix_html if html_out else render_margins.stress_matrix_md
    return "".join(render_one(f, ctx["per_arm"]) for f in ctx["figures"] if f.get("stress_index"))


def _warnings(per_run: pd.DataFrame) -> list[tuple[str, str]]:
    """(figure/arm/seed, warning) of every run whose files are short (analysis.load.run_warning)."""
    if "warning" not in per_run:
        return []
    return [(f"{r.figure}/{r.arm}/seed{r.seed}", r.warning) for r in per_run.itertuples(index=False)
            if isinstance(r.warning, str) and r.warning]


def _empty_per_run() -> pd.DataFrame:
    return pd.DataFrame(columns=["figure", "arm", "label", "seed", "status", "steps_done", "collapse_step",
                                 "collapse_cause", "mlflow_run_id", "run_dir"])


def _write_outputs(ctx: dict) -> Path:
    out_dir, runs, verdicts = ctx["out_dir"], ctx["runs"], ctx["findings"]
    (out_dir / "report.html").write_text(_html_page(ctx), encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(ctx), encoding="utf-8")
    ctx["per_arm"].to_csv(out_dir / "stability.csv", index=False)
    ctx["per_run"].to_csv(out_dir / "stability_runs.csv", index=False)
    verdicts.to_csv(out_dir / "findings.csv", index=False)
    for name in ("margins", "km", "leads", "warnings"):  # `analysis.margins compare` reads margins.csv
        frame = ctx["margins"][name]
        if len(frame):
            frame.to_csv(out_dir / f"{'early_warning' if name == 'warnings' else name}.csv", index=False)
    summary = {"grid": ctx["grid"], "preset": ctx["preset"], "generated": ctx["generated"],
               "n_runs": len(runs),
               "status_counts": {str(k): int(v) for k, v in runs["status"].value_counts().items()},
               "verdict_counts": render.verdict_counts(verdicts),  # agrees / disagrees / inconclusive
               "figures": [f["key"] for f in ctx["figures"]], "html": "report.html"}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    return out_dir / "report.html"


def build_report(grid_dir: str | Path, grid_file: str | Path | None = None,
                 out_dir: str | Path | None = None, rule: CollapseRule | None = None,
                 n_boot: int = 2000, findings_file: str | Path | None = None) -> Path:
    """Write the report of `grid_dir` into `out_dir` (default grid_dir/report); return the HTML path.

    `findings_file` (YAML with a ``findings:`` list) replaces the grid file's findings when given.
    """
    grid_dir, rule = Path(grid_dir), rule or CollapseRule()
    if not grid_dir.is_dir():
        raise UsageError(f"--grid-dir: {grid_dir} is not a directory")
    out_dir = Path(out_dir) if out_dir else grid_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = read_grid_file(grid_file)
    findings = read_grid_file(findings_file).get("findings") if findings_file else grid.get("findings")
    findings = validate_findings(findings or [], expanded_figures(grid) if grid.get("figures") else None)
    tidy, runs = load_grid(grid_dir)
    per_run = stability_runs(tidy, runs, rule) if len(runs) else _empty_per_run()
    per_arm = stability_arms(per_run, n_boot=n_boot) if len(runs) else pd.DataFrame(columns=["figure", "arm"])
    figures = figure_layout(grid, runs)
    section = margins_section(tidy, per_run, runs, grid, n_boot)
    colors = grid_colors(figures)
    for fig in figures:
        fig["png"] = _figure_png(tidy, per_run, fig, out_dir, rule, colors)
        fig["dose_png"] = _dose_png(runs, per_run, fig, out_dir)
        fig["margins_png"] = _margins_png(fig, section, out_dir, colors)
    name = str(grid.get("name") or (runs["grid"].iloc[0] if len(runs) else grid_dir.name))
    preset = grid.get("preset") or next(iter(runs["preset"].dropna()), "?")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(runs["status"].value_counts().items()))
    ctx = {"grid": name, "preset": preset, "generated": generated, "rule": rule.describe(),
           "subtitle": f"preset {preset} · {len(runs)} runs ({counts}) · generated {generated} "
                       f"from {grid_dir}",
           "figures": figures, "runs": runs, "per_run": per_run, "per_arm": per_arm, "out_dir": out_dir,
           "margins": section,
           "findings": evaluate_findings(findings, section["per_run"], n_boot=n_boot, seeds=grid.get("seeds"),
                                         margins=section["margins"])}
    return _write_outputs(ctx)


def parse_rule(overrides: list[str]) -> CollapseRule:
    """A CollapseRule with ``key=value`` overrides (types follow the defaults)."""
    base = CollapseRule()
    changes = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if not hasattr(base, key) or key == "name":
            raise UsageError(f"--rule: unknown parameter {key!r} (see analysis.stability.CollapseRule)")
        try:
            changes[key] = type(getattr(base, key))(value)
        except ValueError:
            kind = type(getattr(base, key)).__name__
            raise UsageError(f"--rule {item}: {value!r} is not a {kind}") from None
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    """The command line; a bad file or argument is one line on stderr and exit code 2 (rl_core.cli)."""
    return guard(_main, argv, errors=(GridError, FindingError))


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid-dir", required=True, help="results/{grid} (holds runs/)")
    parser.add_argument("--grid-file", default=None, help="grid definition (YAML): figures and findings")
    parser.add_argument("--out", default=None, help="output folder (default: GRID_DIR/report)")
    parser.add_argument("--findings", default=None,
                        help="YAML with a findings: list, used instead of the grid file's findings")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per interval")
    parser.add_argument("--rule", action="append", default=[], metavar="KEY=VALUE",
                        help="override a collapse-rule parameter, e.g. --rule score_margin=0.1")
    args = parser.parse_args(argv)
    path = build_report(args.grid_dir, args.grid_file, args.out, parse_rule(args.rule), args.n_boot,
                        args.findings)
    for run, text in _warnings(pd.read_csv(path.parent / "stability_runs.csv", keep_default_na=False)):
        print(f"warning: {run}: {text}", file=sys.stderr)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
