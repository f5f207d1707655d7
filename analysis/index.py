"""An index page of every grid report under a results folder.

    python -m analysis.index --results results --out results/index.html

Finds each ``report.json`` written by analysis.report (not descending into ``runs/`` trees, hidden
folders or MLflow's artifact store ``mlartifacts/``, which holds a copy of every report logged into its
grid's parent run, with dead relative links) and lists grid, preset, run counts by status and finding
verdict counts, linking each report relatively so the results folder can be moved or served as is.
"""

from __future__ import annotations

import argparse
import html
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from analysis.render import CSS, rel_link

#: Folders never searched: run trees, and MLflow's stores of artifact copies
#: (rl_core.orchestration.tracking.log_report).
SKIP = ("runs", "mlartifacts", "mlruns")


def find_reports(results: str | Path) -> list[Path]:
    """Paths of ``report.json`` files under `results`, sorted; skips :data:`SKIP` and hidden folders."""
    found = []
    for root, dirs, files in os.walk(results):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        if "report.json" in files:
            found.append(Path(root) / "report.json")
    return sorted(found)


def _counts(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "—"


def index_html(reports: list[Path], out: Path) -> str:
    """The index page listing `reports` (report.json paths), links relative to `out`'s folder."""
    rows = []
    for path in reports:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        href = html.escape(rel_link(path.parent / info.get("html", "report.html"), out.parent))
        cells = [f'<a href="{href}">{html.escape(str(info.get("grid", path.parent.name)))}</a>',
                 html.escape(str(info.get("preset", "?"))), str(info.get("n_runs", "?")),
                 html.escape(_counts(info.get("status_counts", {}))),
                 html.escape(_counts(info.get("verdict_counts", {}))),
                 html.escape(", ".join(info.get("figures", []))), html.escape(str(info.get("generated", "")))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Grid", "Preset", "Runs", "Status", "Findings", "Figures",
                                             "Generated"))
    body = (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows
            else "<p class=muted>No reports found.</p>")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Grid reports</title>"
            f"<style>{CSS}</style></head><body><h1>Grid reports</h1>"
            f"<p class=muted>{len(rows)} report(s) · generated {stamp}</p>{body}</body></html>")


def build_index(results: str | Path, out: str | Path) -> Path:
    """Write the index of the reports under `results` to `out`; return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(index_html(find_reports(results), out), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Index of all grid reports under a results folder.")
    parser.add_argument("--results", default="results", help="folder searched for report.json files")
    parser.add_argument("--out", default=None, help="index file (default: RESULTS/index.html)")
    args = parser.parse_args(argv)
    path = build_index(args.results, args.out or Path(args.results) / "index.html")
    print(f"index: {path}")


if __name__ == "__main__":
    main()
