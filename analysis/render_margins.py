"""Tables of a stress figure's stability margins as HTML and Markdown (strings only, no I/O).

The margins table: one row per base arm, its survival per level (surviving/seeds), the critical stress s*
with its bootstrap interval and censoring, the LR sensitivity with its interval, and its rank on each
margin (shared, "=", where intervals overlap). The early-warning table: one row per diagnostic. The arm x
level matrix: the summary's reading of a stress figure (status and final score per base arm and level).
"""

from __future__ import annotations

import html

import pandas as pd

from analysis.margins import star_text
from analysis.render import _table, arm_status, fmt, md_table, status_class

MARGIN_HEADERS = ["Arm", "Seeds", "Surviving seeds per level", "Critical stress s* [95% CI]", "Censored",
                  "LR sensitivity [95% CI] (score)", "Rank (s*)", "Rank (LR sensitivity)"]
WARNING_HEADERS = ["Diagnostic", "Warns when", "Threshold", "Collapses judged", "Flagged before t_c",
                   "Missed (late + never)", "Excluded (KL rule)", "Lead, median [IQR] (steps)",
                   "False flags / surviving runs"]
CENSORING = {"above": "no break up to the top level", "below": "broke at the lowest level", "": "—"}


def _margin_cells(row: dict, labels: dict) -> list[str]:
    def rank(key: str) -> str:
        if key not in row or pd.isna(row[key]):  # a margins.csv written before the sensitivity rank
            return "—"
        return f"={int(row[key])}" if row.get(f"{key}_shared") else str(int(row[key]))

    sens = f"{fmt(row['sensitivity'], '.3f')} [{fmt(row['sensitivity_lo'], '.3f')}, " \
           f"{fmt(row['sensitivity_hi'], '.3f')}]"
    return [f"{labels.get(row['arm'], row['arm'])} ({row['arm']})", str(row["n_seeds"]), row["survival"],
            star_text(row), CENSORING.get(row["s_star_censored"], row["s_star_censored"]), sens,
            rank("rank"), rank("sens_rank")]


def margins_rows(margins: pd.DataFrame, labels: dict) -> list[list[str]]:
    return [_margin_cells(r, labels) for r in margins.to_dict("records")]


def _warning_cells(row: dict) -> list[str]:
    lead = "—" if pd.isna(row["lead_median"]) else \
        f"{row['lead_median']:.1f} [{row['lead_q1']:.1f}, {row['lead_q3']:.1f}]"
    return [row["diagnostic"], "above" if row["direction"] == "high" else "below",
            fmt(row["threshold"], ".3g"), str(row["collapses"]), str(row["flagged"]),
            f"{row['missed']} ({row['late']} + {row['never']})", str(row["excluded"]), lead,
            f"{row['false_flags']} / {row['surviving_checked']}"]


def _note(levels: str, key: str, rules) -> str:
    return (f"Stress {key}, levels {levels}. s*: where the share of surviving seeds first falls below "
            f"{rules.survival_threshold:g}, interpolated on log(level) (on the level index for a non-numeric "
            "stress); 95% percentile bootstrap over seeds (2000 draws, one draw for all levels). With three "
            "seeds a survival share is 0, 1/3, 2/3 or 1: expect wide, overlapping intervals. LR sensitivity: "
            "mean over levels of (best level's mean final score - the level's), a run without a finite "
            "score counting 0. Rank (s*): 1 + arms whose s* interval lies entirely above; rank (LR "
            "sensitivity): 1 + arms whose sensitivity interval lies entirely below (lower is more stable); "
            "'=' where the rank is shared.")


def _warning_note(rules, sources: str) -> str:
    return (f"t_c: the first gradient step at which the {rules.reward_window}-step mean training reward is "
            f"more than {rules.reward_margin:g} below its running peak (resolution 1 step; {sources}). "
            f"Threshold: the {rules.warning_percentile:g}th percentile, over this figure's surviving runs at "
            "the lowest level, of each run's most extreme value. Lead = t_c - first crossing (positive = "
            "before). The train-inference KL is not judged on a collapse the KL break defined.")


def _row(cells: list[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def margins_html(margins: pd.DataFrame, warnings: pd.DataFrame, labels: dict, rules, sources: str) -> str:
    if margins.empty:
        return ""
    row = margins.iloc[0]
    note = _note(row["levels"], row["stress_key"], rules)
    parts = ["<h3>Stability margins</h3>", f"<p class=muted>{html.escape(note)}</p>",
             _table(MARGIN_HEADERS, [_row(cells) for cells in margins_rows(margins, labels)]),
             "<h3>Early warning</h3>", f"<p class=muted>{html.escape(_warning_note(rules, sources))}</p>"]
    if warnings.empty:
        parts.append("<p class=muted>No diagnostic has a threshold yet (no surviving run at the lowest level "
                     "logged one).</p>")
    else:
        parts.append(_table(WARNING_HEADERS, [_row(_warning_cells(r)) for r in warnings.to_dict("records")]))
    return "".join(parts)


def margins_md(margins: pd.DataFrame, warnings: pd.DataFrame, labels: dict, rules, sources: str) -> str:
    if margins.empty:
        return ""
    row = margins.iloc[0]
    lines = ["### Stability margins", "", _note(row["levels"], row["stress_key"], rules), "",
             md_table(MARGIN_HEADERS, margins_rows(margins, labels)), "", "### Early warning", "",
             _warning_note(rules, sources), ""]
    if len(warnings):
        lines.append(md_table(WARNING_HEADERS, [_warning_cells(r) for r in warnings.to_dict("records")]))
    return "\n".join(lines) + "\n"


def stress_matrix(fig: dict, per_arm: pd.DataFrame) -> tuple[list, list[tuple[str, list]]]:
    """(level headers, [(base arm label, [(status, text) per level])]) of a stress figure's arms."""
    index = fig["stress_index"]  # {arm name: (base arm, level index)}
    levels = fig["stress_levels"]
    labels = fig.get("base_labels", {})
    bases = list(dict.fromkeys(b for b, _ in index.values()))
    rows = []
    for base in bases:
        cells = [("no runs", "no runs")] * len(levels)
        for name, (b, i) in index.items():
            if b != base:
                continue
            sel = per_arm[(per_arm["figure"] == fig["key"]) & (per_arm["arm"] == name)] \
                if len(per_arm) else []
            row = None if len(sel) == 0 else sel.iloc[0].to_dict()
            status = arm_status(row)
            text = status if row is None else f"{status} · {fmt(row.get('final_score'), '.3f')}"
            cells[i] = (status, text)
        rows.append((labels.get(base, base), cells))
    return levels, rows


def stress_matrix_html(fig: dict, per_arm: pd.DataFrame) -> str:
    levels, rows = stress_matrix(fig, per_arm)
    head = "".join(f"<th>{html.escape(str(v))}</th>" for v in levels)
    body = "".join("<tr><td class=fig>" + html.escape(label) + "</td>" + "".join(
        f'<td class="{status_class(st)}">{html.escape(text)}</td>' for st, text in cells) + "</tr>"
        for label, cells in rows)
    return (f'<p><a href="#{html.escape(fig["key"])}">{html.escape(fig["title"])}</a>: arm x '
            f'{html.escape(fig["stress_key"])} (status · final score)</p><table class="matrix"><thead><tr>'
            f"<th>Arm</th>{head}</tr></thead><tbody>{body}</tbody></table>")


def stress_matrix_md(fig: dict, per_arm: pd.DataFrame) -> str:
    levels, rows = stress_matrix(fig, per_arm)
    table = md_table(["Arm", *map(str, levels)], [[label, *(t for _, t in cells)] for label, cells in rows])
    return f"{fig['title']}: arm x {fig['stress_key']} (status · final score)\n\n{table}\n"
