"""What every command line tool does with a bad file or argument: one line on stderr naming it, exit code 2.

A malformed ``--config-json``, a missing grid file, a truncated checkpoint or a run directory held by another
trainer is the user's input, not a bug: :func:`guard` prints ``error: <what and where>`` on one line and
returns 2, with no traceback. Anything else (a bug) still raises with its traceback.

Imports no torch at module level: rl_core.orchestration.grid uses it while Snakemake builds the DAG.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from rl_core.config import ConfigError

CHECKPOINT_FILES = ("config.json", "model.safetensors")


class UsageError(ValueError):
    """A bad file or argument found outside the typed config (a busy run directory, a broken checkpoint)."""


#: Exception types that mean "the input is wrong"; a tool adds its own (GridError, FindingError) to these.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UsageError, OSError, yaml.YAMLError)


def one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def guard(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
          errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `main(argv)`; a user error (USER_ERRORS + `errors`) becomes one stderr line and exit code 2."""
    try:
        return main(argv) or 0
    except (*USER_ERRORS, *errors) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2


def json_arg(name: str, text: str | None) -> dict | None:
    """An inline JSON option (``--config-json``, ``--meta-json``): a mapping, else a ConfigError naming it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: not valid JSON ({e}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a JSON object, got {type(value).__name__} {text[:80]!r}")
    return value


def config_from_args(args):
    """rl_core.config.config_from_args with --config-json checked first (a JSON object, named when not)."""
    from rl_core.config import config_from_args as resolve_args

    json_arg("--config-json", args.config_json)
    return resolve_args(args)


def check_checkpoint(path: str | Path, what: str = "init") -> Path:
    """A Hugging Face checkpoint directory whose config.json parses and whose safetensors header covers the
    file (a truncated copy fails here, named, before any work)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"  # a sharded checkpoint (transformers' large models)
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file() and not (name == "model.safetensors" and index.is_file()):
            raise UsageError(f"{what}: {path} is not a checkpoint directory (no {name})")
    try:
        json.loads((path / "config.json").read_text())
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
            else ["model.safetensors"]
    except (ValueError, UnicodeDecodeError, KeyError, AttributeError) as e:
        raise UsageError(f"{what}: {path}: config.json or the shard index is not valid ({e})") from None
    from safetensors import safe_open  # lazily: it brings torch

    for shard in shards:
        try:
            with safe_open(str(path / shard), "pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (an Exception) for any bad file
            raise UsageError(f"{what}: {path / shard} cannot be read ({one_line(e)})") from None
    return path
