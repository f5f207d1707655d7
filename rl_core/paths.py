"""Paths derived from this package's own location (never from the working directory).

    PACKAGE   rl_core/ itself: its *.py files are the code the step-0 eval reuse fingerprints
              (rl_core.tasks.benchmark.source_sha256)
    REPO      the repository root: experiments/, workflow/, results/ (the default output)
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent

__all__ = ["PACKAGE", "REPO"]
