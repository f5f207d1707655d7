"""One typed configuration tree for a run (one arm, one seed).

Every field is declared once, beside its default and its documentation. YAML files and dotted command-line
overrides (``loss.is_cap=5``) only override; unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key, the value and what is allowed. The resolved config serialises to JSON
and to a flat ``{"section.key": value}`` dict (MLflow params), and both round-trip.

The package: ``fields`` (the dataclasses), ``checks`` (rules between fields), ``yaml_io`` (the YAML reader);
this module builds, loads, serialises and parses the command line, and re-exports the names above.
It imports no torch: the workflow validates grids with it while Snakemake builds the DAG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml

from rl_core.config.checks import FILE_TASK_FIELDS, prompt_length_bound
from rl_core.config.checks import cross_checks as _cross_checks
from rl_core.config.fields import (
    ConfigError,
    EvalConfig,
    F,
    LossConfig,
    ModelConfig,
    PipelineConfig,
    ReplayConfig,
    RolloutConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from rl_core.config.yaml_io import DuplicateKeyError, StrictYamlLoader, YamlLoader, yaml_load

# ----------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, f: dataclasses.Field, tp: Any) -> Any:
    """Coerce (int -> float only) and validate one leaf value; raise ConfigError naming `key`."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {list(m['choices'])}")
    for bound, ok_fn, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<=")):
        if m.get(bound) is not None and not ok_fn(value, m[bound]):
            raise ConfigError(f"{key}: {value!r} is out of range (must be {word} {m[bound]})")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (allowed in "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", value, fields[name], tp)
    return cls(**kwargs)

def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; `over` wins. Inputs are not modified."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{p}' is a value, not a section")
        node[leaf] = value
    return out


def _hint(key: str) -> Any:
    """The declared type of a dotted RunConfig key (None when no field has that name: from_dict names it)."""
    cls: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return None
        cls = typing.get_type_hints(cls)[part]
    return cls


def _override_value(key: str, raw: str) -> Any:
    """A command-line value. A ``str`` field takes the text as written (YAML would read the README's own
    ``{prompt} ... \\boxed{}`` as a broken flow mapping, ``*`` as an alias), unless it is a quoted YAML
    string; any other field parses it as a YAML scalar, and a value that is not one is named."""
    if not raw.strip():
        return ""
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as e:
        if _hint(key) is str:
            return raw
        first = " ".join(str(e).split())[:160]
        raise ConfigError(f"override {key}: {raw!r} is not a YAML value ({first}); quote a string") from None
    if _hint(key) is str and not isinstance(value, str):
        return raw
    return value


def parse_overrides(items: list[str]) -> dict:
    """["loss.is_cap=5", "replay.mode=r3"] -> nested dict; values as :func:`_override_value` reads them."""
    flat = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. loss.is_cap=5")
        flat[key.strip()] = _override_value(key.strip(), raw)
    return unflatten(flat)


def from_dict(data: dict) -> RunConfig:
    """Validate a (partial) nested dict over the defaults and return the typed config."""
    cfg = _build(RunConfig, data)
    _cross_checks(cfg)
    return cfg


def resolve(*layers: dict, overrides: list[str] = ()) -> RunConfig:
    """defaults <- layer 1 <- layer 2 ... <- dotted overrides."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer or {})
    return from_dict(deep_merge(merged, parse_overrides(list(overrides))))


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML (or JSON) config file plus dotted overrides."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return resolve(data, overrides=overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


# ------------------------------------------------------------------------------------ serialising


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: RunConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_json(text: str) -> RunConfig:
    return from_dict(json.loads(text))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict (or config) -> {"section.key": value} (MLflow params)."""
    if dataclasses.is_dataclass(d):
        d = to_dict(d)
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_flat(flat: dict[str, Any]) -> RunConfig:
    return from_dict(unflatten(flat))


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:12]


#: Fields that say how a run is launched, not what it computes to within rounding: a run directory and its
#: checkpoints are the same run whatever they are (rl_core.rundir.set_aside, the checkpoint's resume hash).
LAUNCH_KEYS = ("train.world_size",)


def resume_identity(config: RunConfig | dict) -> dict:
    """The config as a nested dict without :data:`LAUNCH_KEYS`: what a resumed run must share with the run
    it resumes (a checkpoint written at one world size resumes at another)."""
    flat = flatten(config if isinstance(config, dict) else to_dict(config))
    return unflatten({k: v for k, v in flat.items() if k not in LAUNCH_KEYS})


def resume_hash(cfg: RunConfig) -> str:
    """:func:`config_hash` of :func:`resume_identity`: the checkpoint's config hash."""
    text = json.dumps(resume_identity(cfg), indent=2, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every leaf field: the config reference, generated."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.default, f.metadata.get("doc", "")))
    return rows


__all__ = ["ConfigError", "RunConfig", "ModelConfig", "TaskConfig", "RolloutConfig", "TrainConfig",
           "LossConfig", "ReplayConfig", "EvalConfig", "PipelineConfig", "F", "FILE_TASK_FIELDS",
           "prompt_length_bound", "YamlLoader", "StrictYamlLoader", "DuplicateKeyError", "yaml_load",
           "resolve", "load", "from_dict", "to_dict",
           "to_json", "from_json", "flatten", "from_flat", "parse_overrides", "deep_merge",
           "config_hash", "resume_identity", "resume_hash", "LAUNCH_KEYS", "describe"]


# ------------------------------------------------------------------------------------- command line


def add_config_args(parser) -> None:
    """The config options every entry point shares: a file, an inline JSON, dotted overrides."""
    parser.add_argument("--config", help="YAML or JSON config file (a partial tree over the defaults)")
    parser.add_argument("--config-json", help="the same, inline as a JSON string (used by the workflow)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied last, e.g. loss.is_cap=5 replay.mode=r3")


def config_from_args(args) -> RunConfig:
    """Resolve defaults <- --config file <- --config-json <- overrides; errors name the key."""
    layers = []
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            layers.append(yaml_load(path.read_text()) or {})
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if args.config_json:
        layers.append(json.loads(args.config_json))
    return resolve(*layers, overrides=args.overrides)
