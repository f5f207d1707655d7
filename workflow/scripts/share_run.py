"""Make a run directory the same run as another (a grid that repeats a config and seed trains it once).

    python workflow/scripts/share_run.py SOURCE RUN_DIR META_JSON TRAINED_BY

Links (relative) SOURCE's config.json, metrics.jsonl, summary.json and policy/ into RUN_DIR, writes RUN_DIR's
own meta.json (META_JSON plus "trained_by": TRAINED_BY, the source's path in the grid), then DONE. A run
directory that holds its own trained run (the arm trained before it was edited to equal SOURCE) is moved to
RUN_DIR.replaced-<time>/ first. The trainer removes such links before it trains a directory again
(rl_core.rundir.unshare), so no file is ever written through them. Standard
library only: the rule runs it where Snakemake runs.
"""

import json
import os
import sys
import time
from pathlib import Path

SHARED_FILES = ("config.json", "metrics.jsonl", "summary.json", "policy")


#: What a run directory that trained itself holds (rl_core.rundir.RESULTS, and its config).
OWN_RESULTS = ("config.json", "metrics.jsonl", "summary.json", "DONE", "ckpt", "policy")


def set_aside_own(run_dir: Path) -> Path | None:
    """A run directory that holds its own trained run (an arm edited to equal another): its files are moved
    to RUN_DIR.replaced-<UTC time>/ (as rl_core.rundir.set_aside does), never deleted nor mixed with links."""
    own = [run_dir / n for n in OWN_RESULTS if (run_dir / n).exists() and not (run_dir / n).is_symlink()]
    if not any(p.name != "DONE" for p in own):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}"), 1
    while dest.exists():
        n += 1
        dest = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    dest.mkdir()
    for entry in run_dir.iterdir():
        if entry.name != ".lock" and not entry.is_symlink():
            os.replace(entry, dest / entry.name)
    print(f"{run_dir}: held its own run; moved it to {dest} before sharing", file=sys.stderr)
    return dest


def share_run(source: Path, run_dir: Path, meta: dict, trained_by: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    set_aside_own(run_dir)
    for name in SHARED_FILES:
        link, target = run_dir / name, source / name
        if link.is_symlink():
            link.unlink()
        if target.exists():
            link.symlink_to(os.path.relpath(target, run_dir))
    meta = {**meta, "trained_by": trained_by}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    (run_dir / "DONE").write_text("")
    print(f"{run_dir} shares the run {source} (same resolved config and seed): linked, not trained again")


if __name__ == "__main__":
    src, dst, meta_json, by = sys.argv[1:5]
    share_run(Path(src), Path(dst), json.loads(meta_json), by)
