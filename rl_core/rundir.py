"""A run directory's guards: one trainer at a time, nothing wiped silently, checkpoints that survive a fault.

* :func:`hold_lock`: ``RUN_DIR/.lock`` is held (``fcntl.flock``) for the whole run; a second trainer on
  the same directory refuses at once, naming the directory and the holder's pid.
* :func:`unshare`: a run directory that shared another run's files through links (the workflow's
  rl_shared) and is now trained itself loses its links first, so nothing is written into the other run.
* :func:`set_aside`: a run directory that holds the results of another config (finished or not) is moved
  to ``RUN_DIR.replaced-<UTC time>/`` with a message, never wiped. (analysis.load only reads ``seed<n>``
  directories, so the set-aside copy stays out of the report.)
* :func:`save_checkpoint` / :func:`load_checkpoint`: ``ckpt/state.pt`` and the one before it,
  ``ckpt/state.prev.pt``. A checkpoint that cannot be read (truncated, corrupt, of another config, or
  ahead of the metrics file) is named in a message and renamed ``*.corrupt``; the run resumes from the
  previous one, or from scratch when none is usable.
* :class:`RunFiles`: the files a trainer writes there (metrics rows, JSON files, the checkpoint). A full
  disk (ENOSPC, EDQUOT) while writing any of them is :class:`DiskFull`, naming the file; a row append is
  undone to the file's last complete row and a temporary file is removed, so the same command resumes
  from the last checkpoint once there is space.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rl_core import samples
from rl_core.cli import UsageError

#: Files whose presence means the directory holds results (not just a lock or a config).
RESULTS = ("metrics.jsonl", "samples.jsonl", "summary.json", "DONE", "ckpt", "policy")
STATE, PREV = "state.pt", "state.prev.pt"


class RunDirBusy(UsageError):
    """Another trainer holds the run directory."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def hold_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (created if needed) until the block ends; RunDirBusy at once if it is held."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirBusy(f"{out}: another trainer (pid {holder}) is running in this run directory "
                         f"(it holds {path}); wait for it to end or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def unshare(out: Path) -> list[str]:
    """A run directory that shared another run's files (workflow/scripts/share_run.py links them) and is now
    trained itself: remove its links (the files stay in the run they point to) and the share's DONE, so
    that the trainer writes its own files, never through a link into the other run. Returns the names
    removed."""
    links = [p for p in sorted(out.iterdir()) if p.is_symlink()] if out.is_dir() else []
    if not links:
        return []
    target = os.path.dirname(os.path.normpath(os.path.join(out, os.readlink(links[0]))))
    for p in links:
        p.unlink()
    (out / "DONE").unlink(missing_ok=True)
    names = ", ".join(p.name for p in links)
    say(f"{out}: shared the run {target} through links; removed the links ({names}; the files stay in "
        f"{target}) and training this run in its own files")
    return [p.name for p in links]


def set_aside(out: Path, config: dict) -> Path | None:
    """Move the results of another config out of `out` (to ``out.replaced-<time>``); return where, or None
    when `out` holds no results or results of this very config (those resume)."""
    if not any((out / name).exists() for name in RESULTS):
        return None
    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        old = None
    from rl_core.config import resume_identity  # the launch (train.world_size) may differ: it resumes

    if isinstance(old, dict) and resume_identity(old) == resume_identity(json.loads(json.dumps(config))):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = out.with_name(f"{out.name}.replaced-{stamp}-{n}")
    dest.mkdir()
    for entry in out.iterdir():
        if entry.name != ".lock":
            os.replace(entry, dest / entry.name)
    what = "a finished run" if (dest / "DONE").exists() else "an unfinished run"
    why = "another config" if old is not None else "an unknown config (no readable config.json)"
    say(f"{out}: holds {what} of {why}; moved it to {dest} and starting this config from scratch")
    return dest


class DiskFull(UsageError):
    """The disk (or the quota) filled while a trainer wrote into its run directory."""


@contextmanager
def disk_space(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """A full disk while writing `path` becomes DiskFull naming it (`tmp`, a partial copy, is removed)."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(f"{path}: no space left on the device ({os.strerror(e.errno)}); nothing partial was "
                       f"kept: free space and run the same command again, it resumes from the run's last "
                       f"checkpoint") from None


def append_text(path: Path, text: str) -> None:
    """Append `text` whole or not at all: a failed write (a full disk) truncates the file back."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            with disk_space(path):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
        except BaseException:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `path` atomically, keeping the checkpoint it replaces as ``state.prev.pt`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with disk_space(path, tmp):
        torch.save(state, tmp)
    if path.exists():
        os.replace(path, path.with_name(PREV))
    os.replace(tmp, path)


def _set_aside_corrupt(path: Path, why: str) -> None:
    dest = path.with_name(path.name + ".corrupt")
    os.replace(path, dest)
    say(f"checkpoint {path}: {why}; renamed it {dest.name}")


def load_checkpoint(ckpt_dir: Path, accept: Callable[[dict], str]) -> dict | None:
    """The newest usable checkpoint state of ``ckpt_dir`` (state.pt, else state.prev.pt), or None.

    `accept(state)` returns "" when the state fits this run, else why not; a state that does not load or is
    not accepted is renamed ``*.corrupt`` with a message naming it.
    """
    for name in (STATE, PREV):
        path = ckpt_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=False, map_location="cpu")
        except Exception as e:  # a truncated zip, a bad pickle, an empty file: each its own type
            _set_aside_corrupt(path, f"cannot be read ({type(e).__name__}: {str(e)[:120]})")
            continue
        why = accept(state) if isinstance(state, dict) else f"holds a {type(state).__name__}, not a state"
        if why:
            _set_aside_corrupt(path, why)
            continue
        if name == PREV:
            say(f"checkpoint {ckpt_dir / STATE}: not usable; resuming from {path} (step {state['step']})")
        return state
    return None


class RunFiles:
    """The run directory: append-only metrics with a row count that checkpoints record."""

    def __init__(self, out: Path, writes: bool = True):
        self.out, self.writes = out, writes  # writes=False: a rank other than 0 (reads, never writes)
        self.metrics = out / "metrics.jsonl"
        self.samples = out / "samples.jsonl"
        self.ckpt = out / "ckpt" / "state.pt"
        self.last_eval: dict = {}  # the latest eval row written (the progress line shows its score)

    def rows(self) -> int:
        return sum(1 for _ in self.metrics.open("rb")) if self.metrics.exists() else 0

    def truncate(self, n_rows: int, step: int | None = None) -> None:
        """Keep the first ``n_rows`` metric rows and the samples up to gradient step ``step`` (None: none):
        what a checkpoint of ``n_rows`` rows at ``step`` had written."""
        if not self.writes:
            return
        lines = self.metrics.read_bytes().splitlines(keepends=True) if self.metrics.exists() else []
        self.metrics.write_bytes(b"".join(lines[:n_rows]))
        samples.keep_through(self.samples, step)

    def append_samples(self, rows: list[dict]) -> None:
        if self.writes and rows:
            append_text(self.samples, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))

    def append(self, row: dict) -> None:
        row = {**row, "perf/time": time.time()}  # wall clock, unix s: MLflow's metric timestamps
        if "eval/score" in row:
            self.last_eval = row
        if not self.writes:
            return
        append_text(self.metrics, json.dumps(row, allow_nan=True) + "\n")

    def write_json(self, name: str, obj: dict) -> None:
        if not self.writes:
            return
        tmp = self.out / f".{name}.tmp"
        with disk_space(self.out / name, tmp):
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
        os.replace(tmp, self.out / name)

    def save_ckpt(self, state: dict) -> None:
        if self.writes:
            save_checkpoint(state, self.ckpt)  # keeps the one before as ckpt/state.prev.pt
