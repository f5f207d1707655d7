"""Did two grid directories compute the same numbers? Run to run, row by row, field by field.

    python -m analysis.same_runs results/paper other/results/paper

For a refactor, a new machine or a fresh clone: every finished run (``DONE``) of A is compared with the same
figure/arm/seed of B: its ``metrics.jsonl`` rows, every field except timings (``perf/*``), as parsed JSON,
so a float equals only to the last bit. Prints one line per run that differs (its first differing row and
fields) or is missing from B or unfinished there (no ``DONE``), then the counts; exits 0 only when every
run of A is identical in B.
Runs recorded on different kernels or CPUs (summary.json's provenance: CPU model, torch's CPU capability,
torch, device) are named in a note: bitwise equality is not expected across kernel paths, so their
verdicts are compared with analysis.compare instead. A torn metrics line is one error line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.load import find_run_dirs
from rl_core.provenance import KERNEL_FIELDS


class TornFile(ValueError):
    """A metrics.jsonl line that is not JSON (a write cut short)."""


def _rows(run: Path) -> list[dict]:
    path, out = run / "metrics.jsonl", []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TornFile(f"{path} line {n}: not valid JSON ({e.msg}; a write cut short?): {line[:60]!r}") \
                from None
        out.append({k: v for k, v in row.items() if not k.startswith("perf/")})
    return out


def kernel_path(run: Path) -> dict:
    """What decides bitwise equality (rl_core.provenance.KERNEL_FIELDS) from the run's summary.json; {} when
    it has none (a run from before provenance was recorded)."""
    try:
        prov = json.loads((run / "summary.json").read_text()).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: prov.get(k, "") for k in KERNEL_FIELDS} if prov else {}


def kernel_differences(a: Path, b: Path) -> list[str]:
    """The kernel-path fields in which two run directories differ ("cpu_capability: AVX512 vs AVX2")."""
    ka, kb = kernel_path(a), kernel_path(b)
    if not ka or not kb:
        return []
    return [f"{k}: {ka[k]} vs {kb[k]}" for k in KERNEL_FIELDS if ka[k] != kb[k]]


def compare_runs(a: Path, b: Path) -> dict:
    """{"identical": [...], "differ": [(run, row index, fields)], "missing": [...]} over A's finished runs."""
    out = {"identical": [], "differ": [], "missing": [], "other_kernels": {}}
    for run in find_run_dirs(a):
        if not (run / "DONE").exists():
            continue
        name, other = str(run.relative_to(a / "runs")), b / run.relative_to(a)
        if not (other / "DONE").exists():  # not there, or still running (its rows are not all written)
            out["missing"].append(name)
            continue
        if kernels := kernel_differences(run, other):
            out["other_kernels"][name] = kernels
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
    try:
        res = compare_runs(args.a, args.b)
    except TornFile as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, i, fields in res["differ"]:
        print(f"differs: {name}, row {i}: {', '.join(fields[:6])}")
    for name in res["missing"]:
        print(f"missing or unfinished in {args.b}: {name}")
    print(f"identical {len(res['identical'])}, differ {len(res['differ'])}, missing or unfinished "
          f"{len(res['missing'])}")
    if other := res["other_kernels"]:
        kinds = " | ".join(sorted({"; ".join(k) for k in other.values()}))
        print(f"note: {len(other)} run(s) of A and B come from different kernels or CPUs ({kinds}): "
              f"bitwise equality is not expected there (a last-bit difference can change a sampled token and "
              f"every row after it); for verdicts compare the findings: python -m analysis.compare "
              f"{args.a}/report/findings.csv {args.b}/report/findings.csv")
    return 0 if not res["differ"] and not res["missing"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
