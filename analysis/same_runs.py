"""Did two grid directories compute the same numbers? Run to run, row by row, field by field.

    python -m analysis.same_runs results/paper other/results/paper

For a refactor, a new machine or a fresh clone: every finished run (``DONE``) of A is compared with the same
figure/arm/seed of B: its ``metrics.jsonl`` rows, every field except timings (``perf/*``), as parsed JSON,
so a float equals only to the last bit. Prints one line per run that differs (its first differing row and
fields) or is missing from B, then the counts; exits 0 only when every run of A is identical in B.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.load import find_run_dirs


def _rows(run: Path) -> list[dict]:
    rows = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def compare_runs(a: Path, b: Path) -> dict:
    """{"identical": [...], "differ": [(run, row index, fields)], "missing": [...]} over A's finished runs."""
    out = {"identical": [], "differ": [], "missing": []}
    for run in find_run_dirs(a):
        if not (run / "DONE").exists():
            continue
        name, other = str(run.relative_to(a / "runs")), b / run.relative_to(a)
        if not (other / "metrics.jsonl").exists():
            out["missing"].append(name)
            continue
        ra, rb = _rows(run), _rows(other)
        if ra == rb:
            out["identical"].append(name)
            continue
        n = min(len(ra), len(rb))
        i = next((i for i in range(n) if ra[i] != rb[i]), n)  # the first differing row, else where one ends
        fields = sorted(k for k in {*ra[i], *rb[i]} if ra[i].get(k) != rb[i].get(k)) if i < n \
            else [f"rows: {len(ra)} vs {len(rb)}"]
        out["differ"].append((name, i, fields))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.same_runs", description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="a grid directory (results/<grid>)")
    ap.add_argument("b", type=Path, help="the grid directory to compare it with")
    args = ap.parse_args(argv)
    if not any((run / "DONE").exists() for run in find_run_dirs(args.a)):
        ap.error(f"{args.a}: no finished run (runs/<figure>/<arm>/seed<n>/DONE)")
    res = compare_runs(args.a, args.b)
    for name, i, fields in res["differ"]:
        print(f"differs: {name}, row {i}: {', '.join(fields[:6])}")
    for name in res["missing"]:
        print(f"missing in {args.b}: {name}")
    print(f"identical {len(res['identical'])}, differ {len(res['differ'])}, missing {len(res['missing'])}")
    return 0 if not res["differ"] and not res["missing"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
