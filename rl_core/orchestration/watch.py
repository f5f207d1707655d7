"""What the followers of a running grid (rl_core.orchestration.live, .progress) ask of files and processes."""

from __future__ import annotations

import os
from pathlib import Path


def mtime(path: Path) -> float | None:
    """The file's modification time, None when it does not exist (or cannot be read)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
