"""Tables of a report as HTML and Markdown (strings only; no file I/O, no plotting).

Every numeric cell of an arm row is "IQM [lo, hi]" over seeds (analysis.stability); run rows show the
seed's own value. Links to a run's config.json are relative to the report's folder, so the report and
the results tree can be moved together.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd

#: (column of the per-arm / per-run tables, header, format) of the stability tables.
ARM_COLUMNS = [
    ("peak_score", "Peak score", ".3f"),
    ("final_score", "Final score", ".3f"),
    ("survival_step", "Collapse step*", ".0f"),
    ("max_kl", "Max KL", ".2e"),
    ("mean_kl", "Mean KL", ".2e"),
    ("entropy_max_rel", "Entropy max/init", ".2f"),
    ("entropy_min_rel", "Entropy min/init", ".2f"),
    ("final_length", "Final length (tokens)", ".1f"),
]
VERDICT_CLASS = {"agrees": "agree", "disagrees": "disagree"}
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
        cells = [_cell(name, raw=True), _cell(row["n_seeds"], "num"), _cell(status_text(row)),
                 _cell(collapse_text(runs))]
        cells += [_cell(fmt_ci(row, c, spec), "num") for c, _, spec in ARM_COLUMNS]
        cells += [_cell(links, raw=True), _cell(ids, raw=True)]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table(headers, rows)


def run_table_html(per_run: pd.DataFrame, out_dir: Path) -> str:
    """Every run of a figure, one row each, inside a <details> block."""
    headers = ["Arm", "Seed", "Status", "Steps", "Peak (step)", "Final", "Collapse (cause)", "Max KL",
               "Mean KL", "Entropy max/min", "Final length", "Reason", "Config", "MLflow run"]
    rows = []
    for r in per_run.sort_values(["arm", "seed"]).itertuples():
        href = html.escape(rel_link(Path(r.run_dir) / "config.json", out_dir))
        collapse = f"{fmt(r.collapse_step, '.0f')} ({r.collapse_cause})" if r.collapse_cause else "—"
        cells = [_cell(r.arm), _cell(r.seed, "num"), _cell(r.status), _cell(r.steps_done, "num"),
                 _cell(f"{fmt(r.peak_score, '.3f')} ({fmt(r.peak_step, '.0f')})", "num"),
                 _cell(fmt(r.final_score, ".3f"), "num"), _cell(collapse), _cell(fmt(r.max_kl, ".2e"), "num"),
                 _cell(fmt(r.mean_kl, ".2e"), "num"),
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
