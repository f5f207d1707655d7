"""Do two runs of one grid reach the same verdicts? Their findings side by side.

    python -m analysis.compare results/paper/report/findings.csv other/paper/report/findings.csv \\
        [--names "seeds 0-2" "seeds 3-5"] [--out compare.md]

Reads two ``findings.csv`` files written by analysis.report (for example the grid run with seeds
{0,1,2} and again with {3,4,5}) and prints a Markdown table: each finding's verdict in both, and whether
they agree. A verdict is decided when it is ``agrees`` or ``disagrees`` (with the paper), undecided when
it is ``inconclusive: ...``. The summary counts the findings decided in both runs and how many of those
got the same verdict, the findings decided in one run only, and those undecided in both: the replication
rate of the grid's evidence. A finding present in one file only is listed and counted apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rl_core.cli import UsageError, guard

DECIDED = ("agrees", "disagrees")


def read_findings(path: str | Path) -> pd.DataFrame:
    """A findings.csv (analysis.report), indexed by finding id; a UsageError names a file that is not one."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable CSV ({e})") from None
    missing = {"id", "figure", "verdict"} - set(frame.columns)
    if missing:
        raise UsageError(f"{path}: not a findings.csv of analysis.report "
                         f"(no column {', '.join(sorted(missing))})")
    return frame.set_index("id")


def compare(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per finding id of either frame (verdict_a, verdict_b, outcome) and the counts of outcomes.

    outcome: "same verdict" / "opposite verdicts" (decided in both), "decided in A only" / "decided in B
    only", "undecided in both", "only in A" / "only in B" (the finding is absent from the other file)."""
    rows = []
    for fid in list(a.index) + [i for i in b.index if i not in a.index]:
        va = a.at[fid, "verdict"] if fid in a.index else None
        vb = b.at[fid, "verdict"] if fid in b.index else None
        if va is None or vb is None:
            outcome = "only in A" if vb is None else "only in B"
        elif va in DECIDED and vb in DECIDED:
            outcome = "same verdict" if va == vb else "opposite verdicts"
        elif va in DECIDED or vb in DECIDED:
            outcome = "decided in A only" if va in DECIDED else "decided in B only"
        else:
            outcome = "undecided in both"
        figure = (a if fid in a.index else b).at[fid, "figure"]
        rows.append({"id": fid, "figure": figure, "verdict_a": va or "", "verdict_b": vb or "",
                     "outcome": outcome})
    table = pd.DataFrame(rows, columns=["id", "figure", "verdict_a", "verdict_b", "outcome"])
    counts = table["outcome"].value_counts().to_dict()
    return table, counts


def summary_line(counts: dict) -> str:
    same, opposite = counts.get("same verdict", 0), counts.get("opposite verdicts", 0)
    one = counts.get("decided in A only", 0) + counts.get("decided in B only", 0)
    neither = counts.get("undecided in both", 0)
    return (f"decided in both: {same + opposite}, of which {same} got the same verdict and {opposite} the "
            f"opposite; decided in one run only: {one}; undecided in both: {neither}"
            + "".join(f"; {k}: {counts[k]}" for k in ("only in A", "only in B") if counts.get(k)))


def markdown(table: pd.DataFrame, counts: dict, names: tuple[str, str]) -> str:
    head = f"| finding | figure | {names[0]} | {names[1]} | outcome |\n|---|---|---|---|---|\n"
    body = "".join(f"| {r.id} | {r.figure} | {r.verdict_a} | {r.verdict_b} | {r.outcome} |\n"
                   for r in table.itertuples())
    return head + body + "\n" + summary_line(counts) + "\n"


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n")[0])
    ap.add_argument("a", help="findings.csv of the first run")
    ap.add_argument("b", help="findings.csv of the second run")
    ap.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="column titles")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    table, counts = compare(read_findings(args.a), read_findings(args.b))
    text = markdown(table, counts, tuple(args.names))
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
