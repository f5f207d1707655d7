"""Tables of a report as HTML and Markdown (strings only; no file I/O, no plotting).

Every numeric cell of an arm row is "IQM [lo, hi]" over seeds (analysis.stability); run rows show the
seed's own value; every header names its unit. Links to a run's config.json are relative to the report's
folder, so the report and the results tree can be moved together.

The summary on top (:func:`summary_html`) gives the findings' verdict counts and a figure x arm matrix
of stability status, coloured as the Status cells of the figures' tables (:func:`arm_status`).
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd

#: (column of the per-arm / per-run tables, header, format) of the stability tables.
ARM_COLUMNS = [
    ("peak_score", "Peak score (avg@k, 0-1)", ".3f"),
    ("final_score", "Final score (avg@k, 0-1)", ".3f"),
    ("survival_step", "Collapse step* (gradient steps)", ".0f"),
    ("max_kl_k3", "Max KL, k3 (nats/token)", ".2e"),
    ("mean_kl_k3", "Mean KL, k3 (nats/token)", ".2e"),
    ("entropy_max_rel", "Entropy max / initial (ratio)", ".2f"),
    ("entropy_min_rel", "Entropy min / initial (ratio)", ".2f"),
    ("final_length", "Final length (tokens)", ".1f"),
]
VERDICT_CLASS = {"agrees": "agree", "disagrees": "disagree"}
VERDICTS = (("agrees", "agree"), ("disagrees", "disagree"), ("inconclusive", "inconclusive"))
#: Stability status of an arm -> what it means (the summary's legend).
STATUS_MEANING = {
    "stable": "no seed collapsed",
    "collapsed": "every seed collapsed or diverged",
    "mixed": "some seeds collapsed",
    "incomplete": "a seed has not finished",
    "no runs": "not run yet",
}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1500px;color:#1d1d1f;padding:0 16px}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.86em}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.agree td.verdict{background:#dff3e0}tr.disagree td.verdict{background:#fbdcdc}
tr.inconclusive td.verdict{background:#fff3cd}img{max-width:100%;border:1px solid #eee}
.muted{color:#666;font-size:0.9em}code{background:#f4f4f4;padding:0 3px}
details{margin:4px 0 16px}
.st-stable{background:#dff3e0}.st-collapsed{background:#fbdcdc}.st-mixed{background:#ffe3bf}
.st-incomplete{background:#fff3cd}.st-none{background:#f4f4f4;color:#888}
.key{display:inline-block;padding:1px 8px;border-radius:8px;margin:0 4px 0 10px;border:1px solid #ddd}
.summary{border:1px solid #d0d0d0;border-radius:6px;padding:8px 16px;background:#fafafa}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;margin-right:6px;font-weight:600}
.badge.agree{background:#dff3e0}.badge.disagree{background:#fbdcdc}.badge.inconclusive{background:#fff3cd}
table.matrix td{text-align:center;white-space:nowrap}table.matrix td.fig{text-align:left}
"""


def fmt(value, spec: str) -> str:
    """A number formatted by `spec`, or an em dash for missing / non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    try:
        return f"{value:{spec}}"
    except (TypeError, ValueError):
        return str(value)


def fmt_ci(row, column: str, spec: str) -> str:
    """``point [lo, hi]`` from the `column`, `column_lo`, `column_hi` fields of an arm row."""
    point, lo, hi = row.get(column), row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if fmt(point, spec) == "—":
        return "—"
    if lo == hi == point or fmt(lo, spec) == "—":
        return fmt(point, spec)
    return f"{fmt(point, spec)} [{fmt(lo, spec)}, {fmt(hi, spec)}]"


def rel_link(target: str | Path, out_dir: Path) -> str:
    """`target` relative to `out_dir`, with forward slashes."""
    return Path(os.path.relpath(Path(target).resolve(), Path(out_dir).resolve())).as_posix()


def arm_status(arm: dict | None) -> str:
    """The arm's stability status, a key of STATUS_MEANING, from its per-arm summary row."""
    if arm is None or not arm.get("n_seeds"):
        return "no runs"
    if arm.get("n_incomplete"):
        return "incomplete"
    bad = max(int(arm.get("n_collapsed") or 0), int(arm.get("n_diverged") or 0))
    return "stable" if bad == 0 else ("collapsed" if bad >= arm["n_seeds"] else "mixed")


def status_class(status: str) -> str:
    return "st-none" if status == "no runs" else f"st-{status}"


def status_text(arm: dict) -> str:
    parts = [f"{arm[f'n_{s}']} {s}" for s in ("completed", "diverged", "incomplete") if arm.get(f"n_{s}")]
    return ", ".join(parts) or "—"


def collapse_text(runs: pd.DataFrame) -> str:
    """``k/n`` collapsed, with the steps and causes of those that did."""
    hit = runs[runs["collapse_step"].notna()].sort_values("seed")
    if hit.empty:
        return f"0/{len(runs)}"
    steps = ", ".join(f"s{r.seed}@{r.collapse_step:.0f} ({r.collapse_cause})" for r in hit.itertuples())
    return f"{len(hit)}/{len(runs)}: {steps}"


def _cell(text: str, cls: str = "", raw: bool = False) -> str:
    body = text if raw else html.escape(str(text))
    return f'<td class="{cls}">{body}</td>' if cls else f"<td>{body}</td>"


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def run_links(runs: pd.DataFrame, out_dir: Path) -> tuple[str, str]:
    """(HTML links to each seed's config.json, the seeds' MLflow run ids) of one arm's runs (by seed)."""
    links, ids = [], []
    for r in runs.itertuples():
        href = html.escape(rel_link(Path(r.run_dir) / "config.json", out_dir))
        links.append(f'<a href="{href}">seed {r.seed}</a>')
        if isinstance(r.mlflow_run_id, str) and r.mlflow_run_id:
            ids.append(f"seed {r.seed}: <code>{html.escape(r.mlflow_run_id)}</code>")
    return " ".join(links), "<br>".join(ids) or "—"


def arm_groups(arms: list[tuple[str, str]], per_arm: pd.DataFrame, per_run: pd.DataFrame):
    """(arm key, label, its per-arm summary row or None, its runs by seed) for every arm, in order."""
    for arm, label in arms:
        sel = per_arm[per_arm["arm"] == arm]
        row = None if sel.empty else sel.iloc[0].to_dict()
        yield arm, label, row, per_run[per_run["arm"] == arm].sort_values("seed")


def arm_table_html(arms: list[tuple[str, str]], per_arm: pd.DataFrame, per_run: pd.DataFrame,
                   out_dir: Path) -> str:
    """The stability table of one figure: one row per (arm key, label), in order."""
    headers = ["Arm", "Seeds", "Status", "Collapsed", *[h for _, h, _ in ARM_COLUMNS], "Config", "MLflow run"]
    rows = []
    for arm, label, row, runs in arm_groups(arms, per_arm, per_run):
        name = f"{html.escape(label)}<br><span class=muted>{html.escape(arm)}</span>"
        if row is None:
            rows.append(f"<tr>{_cell(name, raw=True)}<td colspan={len(headers) - 1}>no runs</td></tr>")
            continue
        links, ids = run_links(runs, out_dir)
        cls = status_class(arm_status(row))
        cells = [_cell(name, raw=True), _cell(row["n_seeds"], "num"), _cell(status_text(row), cls),
                 _cell(collapse_text(runs), cls)]
        cells += [_cell(fmt_ci(row, c, spec), "num") for c, _, spec in ARM_COLUMNS]
        cells += [_cell(links, raw=True), _cell(ids, raw=True)]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table(headers, rows)


def run_table_html(per_run: pd.DataFrame, out_dir: Path) -> str:
    """Every run of a figure, one row each, inside a <details> block."""
    headers = ["Arm", "Seed", "Status", "Steps", "Peak score (at step)", "Final score",
               "Collapse step (cause)", "Max KL, k3 (nats/token)", "Mean KL, k3 (nats/token)",
               "Mean KL, k1 (nats/token)", "Entropy max / min (ratio to initial)", "Final length (tokens)",
               "Reason", "Config", "MLflow run"]
    rows = []
    for r in per_run.sort_values(["arm", "seed"]).itertuples():
        href = html.escape(rel_link(Path(r.run_dir) / "config.json", out_dir))
        collapse = f"{fmt(r.collapse_step, '.0f')} ({r.collapse_cause})" if r.collapse_cause else "—"
        collapsed = r.status == "diverged" or isinstance(r.collapse_cause, str) and bool(r.collapse_cause)
        cls = "st-incomplete" if r.status == "incomplete" else ("st-collapsed" if collapsed else "st-stable")
        cells = [_cell(r.arm), _cell(r.seed, "num"), _cell(r.status, cls), _cell(r.steps_done, "num"),
                 _cell(f"{fmt(r.peak_score, '.3f')} ({fmt(r.peak_step, '.0f')})", "num"),
                 _cell(fmt(r.final_score, ".3f"), "num"), _cell(collapse, cls),
                 _cell(fmt(getattr(r, "max_kl_k3", None), ".2e"), "num"),
                 _cell(fmt(getattr(r, "mean_kl_k3", None), ".2e"), "num"),
                 _cell(fmt(r.mean_kl_k1, ".2e"), "num"),
                 _cell(f"{fmt(r.entropy_max_rel, '.2f')} / {fmt(r.entropy_min_rel, '.2f')}", "num"),
                 _cell(fmt(r.final_length, ".1f"), "num"), _cell(getattr(r, "reason", "") or ""),
                 _cell(f'<a href="{href}">config.json</a>', raw=True),
                 _cell(r.mlflow_run_id if isinstance(r.mlflow_run_id, str) else "—")]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<details><summary>Runs ({len(per_run)})</summary>{_table(headers, rows)}</details>"


def findings_table_html(findings: pd.DataFrame) -> str:
    """Claim, test, observed, numbers and verdict of every finding, coloured by verdict."""
    if findings.empty:
        return "<p class=muted>No findings defined in the grid file.</p>"
    headers = ["Id", "Figure", "Claim (paper)", "Test", "Observed", "Numbers (IQM [95% CI])", "Verdict"]
    rows = []
    for f in findings.itertuples():
        cls = VERDICT_CLASS.get(f.verdict, "inconclusive")
        cells = [_cell(f.id), _cell(f.figure), _cell(f.claim), _cell(f.test), _cell(f.observed),
                 _cell(f.numbers), _cell(f.verdict, "verdict")]
        rows.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return _table(headers, rows)


def md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def arm_table_md(arms: list[tuple[str, str]], per_arm: pd.DataFrame, per_run: pd.DataFrame,
                 out_dir: Path) -> str:
    headers = ["Arm", "Seeds", "Status", "Collapsed", *[h for _, h, _ in ARM_COLUMNS], "Config", "MLflow run"]
    rows = []
    for arm, label, row, runs in arm_groups(arms, per_arm, per_run):
        if row is None:
            rows.append([f"{label} (`{arm}`)", 0, "no runs", *[""] * (len(headers) - 3)])
            continue
        links = " ".join(f"[seed {r.seed}]({rel_link(Path(r.run_dir) / 'config.json', out_dir)})"
                         for r in runs.itertuples())
        ids = ", ".join(f"`{r.mlflow_run_id}`" for r in runs.itertuples()
                        if isinstance(r.mlflow_run_id, str) and r.mlflow_run_id) or "—"
        rows.append([f"{label} (`{arm}`)", row["n_seeds"], status_text(row), collapse_text(runs),
                     *[fmt_ci(row, c, spec) for c, _, spec in ARM_COLUMNS], links, ids])
    return md_table(headers, rows)


def findings_table_md(findings: pd.DataFrame) -> str:
    if findings.empty:
        return "_No findings defined in the grid file._"
    cols = ["id", "figure", "claim", "test", "observed", "numbers", "verdict"]
    return md_table(["Id", "Figure", "Claim (paper)", "Test", "Observed", "Numbers", "Verdict"],
                    findings[cols].to_numpy().tolist())


# ------------------------------------------------------------------------------------------ summary


def verdict_counts(findings: pd.DataFrame) -> dict[str, int]:
    """{agrees, disagrees, inconclusive: count}; every kind of inconclusive counts as inconclusive."""
    verdicts = findings["verdict"].astype(str) if len(findings) else pd.Series([], dtype=str)
    return {key: int(verdicts.str.startswith(key).sum()) for key, _ in VERDICTS}


def stability_matrix(figures: list[dict], per_arm: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """(arm keys in order of first appearance, one row per figure: key, title, {arm: (status, row)})."""
    columns: list[str] = []
    rows = []
    for fig in figures:
        if fig.get("stress_index"):  # read arm x level in its own matrix (analysis.render_margins)
            continue
        cells = {}
        for arm, _label in fig["arms"]:
            if arm not in columns:
                columns.append(arm)
            sel = per_arm[(per_arm["figure"] == fig["key"]) & (per_arm["arm"] == arm)] if len(per_arm) else []
            row = None if len(sel) == 0 else sel.iloc[0].to_dict()
            cells[arm] = (arm_status(row), row)
        rows.append({"key": fig["key"], "title": fig["title"], "cells": cells})
    return columns, rows


def _matrix_text(status: str, row: dict | None) -> str:
    if row is None:
        return status
    score = fmt(row.get("final_score"), ".3f")
    when = fmt(row.get("first_collapse_step"), ".0f")
    return f"{status} @{when} · {score}" if status in ("collapsed", "mixed") else f"{status} · {score}"


def summary_html(figures: list[dict], per_arm: pd.DataFrame, findings: pd.DataFrame, extra: str = "") -> str:
    """The block on top of the report: verdict counts and the figure x arm stability matrix (`extra`: the
    stress figures' arm x level matrices, after it)."""
    counts = verdict_counts(findings)
    badges = "".join(f'<span class="badge {cls}">{counts[key]} {key}</span>' for key, cls in VERDICTS)
    seeds = int(per_arm["n_seeds"].max()) if len(per_arm) else 0
    caveat = (" <span class=muted>One seed per arm: each comparison is between two points (no interval); "
              "a verdict needs a gap beyond the metric's tolerance.</span>" if seeds == 1 else "")
    columns, rows = stability_matrix(figures, per_arm)
    head = "".join(f"<th>{html.escape(a)}</th>" for a in columns)
    body = []
    for row in rows:
        cells = [f'<td class="fig"><a href="#{html.escape(row["key"])}">{html.escape(row["title"])}</a></td>']
        for arm in columns:
            if arm not in row["cells"]:
                cells.append('<td class="st-none">·</td>')
                continue
            status, arm_row = row["cells"][arm]
            label = html.escape(str((arm_row or {}).get("label") or arm))
            cells.append(f'<td class="{status_class(status)}" title="{label}">'
                         f"{html.escape(_matrix_text(status, arm_row))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    legend = "".join(f'<span class="key {status_class(k)}">{html.escape(k)}</span>{html.escape(v)}'
                     for k, v in STATUS_MEANING.items())
    matrix = (f'<table class="matrix"><thead><tr><th>Figure</th>{head}</tr></thead>'
              f"<tbody>{''.join(body)}</tbody></table>" if rows else "") + extra
    return (f'<div class="summary"><h2 style="margin-top:0.4em">Summary</h2>'
            f'<p><a href="#findings">Findings</a> ({len(findings)}): {badges}{caveat}</p>'
            f"<p>Stability by figure and arm (status · final score, avg@k; collapse rule below; "
            f"· = the arm is not in that figure):</p>{matrix}"
            f"<p class=muted>{legend}</p>"
            f"</div>")


def summary_md(figures: list[dict], per_arm: pd.DataFrame, findings: pd.DataFrame, extra: str = "") -> str:
    counts = verdict_counts(findings)
    columns, rows = stability_matrix(figures, per_arm)
    cells = [[r["title"], *[_matrix_text(*r["cells"][a]) if a in r["cells"] else "·" for a in columns]]
             for r in rows]
    table = md_table(["Figure", *columns], cells) if rows else ""
    line = ", ".join(f"{counts[k]} {k}" for k, _ in VERDICTS)
    return f"## Summary\n\nFindings ({len(findings)}): {line}.\n\n{table}\n{extra}"
