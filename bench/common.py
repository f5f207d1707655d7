"""Shared bits of the bench/ helper scripts: the spec they read, thread pinning, JSON output.

Every helper is run as ``python bench/NAME.py SPEC_JSON`` by ``bench/driver.py`` (in the main venv, or in
``.venv-peers`` / ``.venv-vllm`` for the peers) and prints exactly one line ``BENCH_JSON {...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MARK = "BENCH_JSON "
# This checkout's rl_core, whatever else is installed: a helper runs as a script (sys.path[0] is bench/), so
# without this `import rl_core` would find the venv's editable install, which may point at another clone.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pin_threads(n: int) -> None:
    """Fix the intra-op thread count (also for the BLAS/OpenMP pools) before any work is done."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by an earlier parallel op in this process
        pass


def spec() -> dict:
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def emit(result: dict) -> None:
    print(MARK + json.dumps(result), flush=True)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def print_table(table: str, rows: list[dict], json_path: str | None) -> None:
    """A table script's output: the markdown table on stdout, and its rows as JSON at `json_path` if given."""
    print(table)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2))
