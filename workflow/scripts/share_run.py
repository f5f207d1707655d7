"""Make a run directory the same run as another (a grid that repeats a config and seed trains it once).

    python workflow/scripts/share_run.py SOURCE RUN_DIR META_JSON TRAINED_BY

Links (relative) SOURCE's config.json, metrics.jsonl, summary.json and policy/ into RUN_DIR, writes RUN_DIR's
own meta.json (META_JSON plus "trained_by": TRAINED_BY, the source's path in the grid), then DONE. Standard
library only: the rule runs it where Snakemake runs.
"""

import json
import os
import sys
from pathlib import Path

SHARED_FILES = ("config.json", "metrics.jsonl", "summary.json", "policy")


def share_run(source: Path, run_dir: Path, meta: dict, trained_by: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        link, target = run_dir / name, source / name
        if link.is_symlink() or link.is_file():
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
