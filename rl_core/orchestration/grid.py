"""Grid files: load, validate and expand a grid of runs (figures x arms x seeds).

A grid file (``experiments/*.yaml``) says WHAT is compared; a scale preset (``experiments/presets.yaml``)
says HOW BIG. The structure is checked against ``workflow/schemas/grid.schema.yaml``::

    name: paper                       # results/{name}/ and the MLflow experiment {name}
    description: ...
    preset: mini                      # default scale preset; `--config preset=X` overrides it
    seeds: [0]                        # every arm runs once per seed (the seed goes to train.seed)
    base: {rollout: {precision: fp8}} # RunConfig overrides shared by every arm
    figures:
      fig1_on_policy:
        title: On-policy (N=1)
        paper_figure: 1               # optional: the paper's figure number
        base: {train: {n_minibatches: 1}}   # overrides shared by the figure's arms
        horizon: 2                    # optional: train.steps and eval.every x 2 (see stretch)
        arms:
          minirl: {label: MiniRL}
          minirl_r3: {label: MiniRL + R3, config: {replay: {mode: r3}}}
        axes: {train.n_minibatches: [2, 4]} # optional, crossed with the arms (see expand_axes)
    findings: []                      # conclusions to check (items defined by the analysis package)

One run's config is ``defaults <- preset <- grid base <- figure base <- arm config <- seed``, then the
figure's ``horizon`` stretches its train.steps and eval.every (:func:`stretch`): the more
specific layer wins, so a preset sizes every run but never erases what the grid compares (an
``axes: {train.lr: [...]}`` sweep keeps its three lrs under any preset). A key that the grid, the figure or
the arm sets over the preset is listed per run (:attr:`RunSpec.over_preset`, shown by
``python -m rl_core.orchestration.grid``). Every run is resolved through the typed RunConfig while the grid
loads, so a misspelt key fails before any job starts, and the message names the file, the figure, the arm and
the key. The grid's ``findings:`` are validated too (:mod:`rl_core.orchestration.finding_schema`): an unknown
arm, figure, kind or metric fails while the grid loads.

The base model and the cold starts are shared by every arm of a grid: their config is
``defaults <- preset <- grid base``, and an arm may not change the sections that define them
(:data:`SHARED_SECTIONS`), unless it brings its own checkpoint (``init``). A run with its own ``init``
starts from no cold start: its meta (meta.json, the MLflow tag, the report) records ``cold_start`` as
``(own init)``, whatever the config's ``cold_start`` field says, and no SFT job is planned for it; the
trainer then checks its ``model.*`` against the checkpoint's config.json (rl_core.train.check_init).

Imports no torch (docs/conventions.md §8): Snakemake calls this module while it builds the DAG.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from rl_core.cli import one_line
from rl_core.config import (
    ConfigError,
    DuplicateKeyError,
    RunConfig,
    config_hash,
    deep_merge,
    flatten,
    resolve,
    to_dict,
    unflatten,
    yaml_load,
)
from rl_core.orchestration.capabilities import impossible
from rl_core.orchestration.finding_schema import FindingError, validate_findings
from rl_core.paths import REPO

SCHEMA_PATH = REPO / "workflow" / "schemas" / "grid.schema.yaml"
PRESETS_PATH = REPO / "experiments" / "presets.yaml"
DEFAULT_PRESET = "mini"
#: Config sections that define the base model and the cold starts, hence shared by a grid's arms.
SHARED_SECTIONS = ("model", "pipeline")
#: Workflow options that may sit beside the grid in Snakemake's config (`--config results=... `).
WORKFLOW_OPTIONS = {"results": "results", "tracking_uri": "", "live_tracking": True,
                    "confirm_long": False, "grid": "", "only_figures": ""}
#: A grid estimated (rl_core.orchestration.cost, on this machine's cores) to take longer than this many hours
#: is refused on the local executor unless `--config confirm_long=true` (e.g. preset full on a CPU: ~1,100 h).
LONG_GRID_HOURS = 24
#: The cold starts (SFT teachers), in the order the typed config lists them.
TEACHERS: tuple[str, ...] = next(f.metadata["choices"] for f in dataclasses.fields(RunConfig)
                                 if f.name == "cold_start")
#: What the pretrain / sft / eval stages are given of the base config (plus cold_start and train.threads):
#: only what shapes a checkpoint or its eval, so that an RL knob in a grid's `base` (loss, replay, ...)
#: does not rebuild the base model and the cold starts.
STAGE_SECTIONS = {"pretrain": ("model", "task", "pipeline"), "sft": ("model", "task", "pipeline"),
                  "eval": ("model", "task", "pipeline", "eval", "rollout")}
#: What meta.json records as `cold_start` for a run that brings its own `init` checkpoint.
OWN_INIT = "(own init)"
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


class GridError(ValueError):
    """A problem in a grid file; the message names the file and, where it applies, figure, arm and key."""


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run: one arm of one figure, one seed; `config` is resolved except `init` (see config_json)."""

    grid: str
    figure: str
    figure_title: str
    arm: str
    label: str
    seed: int
    preset: str
    config: RunConfig
    paper_figure: int | None = None
    #: "key=value" for each key the grid base, figure base or arm sets over a value of the preset.
    over_preset: tuple[str, ...] = ()

    @property
    def run_dir(self) -> str:
        """Relative to the grid's results directory."""
        return f"runs/{self.figure}/{self.arm}/seed{self.seed}"

    @property
    def meta(self) -> dict[str, Any]:
        """What the trainer writes to meta.json and the analysis reads. config_hash is of `config`
        (init as the grid gives it, usually empty), so it does not depend on where results live."""
        return {"grid": self.grid, "figure": self.figure, "figure_title": self.figure_title,
                "arm": self.arm, "label": self.label, "seed": self.seed, "preset": self.preset,
                "config_hash": config_hash(self.config), "paper_figure": self.paper_figure,
                "cold_start": OWN_INIT if self.config.init else self.config.cold_start}

    def config_json(self, init: str = "") -> str:
        """The resolved config as compact JSON; `init` fills the checkpoint when the arm left it empty."""
        cfg = self.config if self.config.init or not init else dataclasses.replace(self.config, init=init)
        return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))


@dataclass(eq=False)
class Grid:
    """A loaded grid: the file's data (with the effective preset) and its expanded runs, in file order."""

    name: str
    description: str
    preset: str
    seeds: list[int]
    source: str
    data: dict
    base_config: RunConfig
    runs: list[RunSpec]

    @property
    def trained_by(self) -> dict[tuple[str, str, int], RunSpec]:
        """(figure, arm, seed) -> the run that trains it: itself, or the first run in file order with the same
        resolved config and seed (e.g. fig6's fp8 MiniRL is fig1's MiniRL), whose files it shares instead of
        training the same thing twice."""
        first: dict[str, RunSpec] = {}
        return {(r.figure, r.arm, r.seed): first.setdefault(config_hash(r.config), r) for r in self.runs}

    @property
    def trained_runs(self) -> list[RunSpec]:
        """The runs that train (the others share their files): what the grid costs."""
        by = self.trained_by
        return [r for r in self.runs if by[(r.figure, r.arm, r.seed)] is r]

    @property
    def cold_starts(self) -> list[str]:
        """Teachers some run starts from (runs with their own `init` need none): one SFT job each."""
        used = {r.config.cold_start for r in self.runs if not r.config.init}
        return [t for t in TEACHERS if t in used]

    def coldstart_config(self, teacher: str) -> RunConfig:
        """Config of the cold start made by `teacher` (the base model's config is `base_config`)."""
        return dataclasses.replace(self.base_config, cold_start=teacher)

    def stage_config(self, stage: str, teacher: str | None = None) -> dict:
        """The partial config tree for `python -m rl_core.coldstart STAGE` (see STAGE_SECTIONS)."""
        full = to_dict(self.base_config if teacher is None else self.coldstart_config(teacher))
        out = {section: full[section] for section in STAGE_SECTIONS[stage]}
        out["train"] = {"threads": full["train"]["threads"]}
        if "eval" not in out:  # unused by the stage; the default (128) must fit the task's benchmark, and a
            out["eval"] = {"n_problems": full["task"]["n_bench"]}  # function of task.* rebuilds nothing
        if teacher is not None:
            out["cold_start"] = teacher
        return out

    def run(self, figure: str, arm: str, seed: int | str) -> RunSpec:
        for r in self.runs:
            if (r.figure, r.arm, r.seed) == (figure, arm, int(seed)):
                return r
        raise GridError(f"{self.source}: no run figure={figure} arm={arm} seed={seed}")

    @property
    def figures(self) -> dict[str, list[str]]:
        """Figure key -> arm keys, in file order."""
        out: dict[str, list[str]] = {}
        for r in self.runs:
            arms = out.setdefault(r.figure, [])
            if r.arm not in arms:
                arms.append(r.arm)
        return out


# ------------------------------------------------------------------------------------------- loading


def read_yaml(path: str | Path, what: str = "grid file") -> Any:
    """A grid or presets file; a missing file, bad YAML or a key given twice in one mapping (two arms of
    one name, ...) is a GridError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: no such {what}")
    try:
        return yaml_load(path.read_text())
    except DuplicateKeyError as e:
        raise GridError(f"{path}, {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = " ".join(str(e).replace('"<unicode string>"', "the file").split())
        raise GridError(f"{path}: not valid YAML: {where}") from None


_read_yaml = read_yaml


def load_presets(path: str | Path | None = None) -> dict[str, dict]:
    """Preset name -> RunConfig overrides (scale only); each preset is checked by the typed config."""
    path = Path(path or PRESETS_PATH)
    data = _read_yaml(path, "presets file")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GridError(f"{path}: expected a mapping of preset name -> config overrides")
    for name, over in data.items():
        _resolve(str(path), f"preset '{name}'", over)
    return data


def load_grid(path: str | Path, preset: str | None = None, *, presets: str | Path | dict | None = None,
              schema: str | Path | None = None) -> Grid:
    """Load, validate and expand a grid file; `preset` overrides the file's default preset."""
    path = Path(path)
    data = _read_yaml(path, "grid file")
    return grid_from_dict(data, source=str(path), preset=preset, presets=presets, schema=schema)


def split_workflow_options(config: dict) -> tuple[dict, dict]:
    """Snakemake's config (the grid + `--config` options) -> (grid dict, workflow options).

    `--config 'seeds=[0,1,2]'` reaches Snakemake's config as strings; digit strings become ints here.
    """
    grid = {k: v for k, v in config.items() if k not in WORKFLOW_OPTIONS}
    if isinstance(grid.get("seeds"), list):
        grid["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in grid["seeds"]]
    options = {k: (config.get(k) if config.get(k) is not None else d) for k, d in WORKFLOW_OPTIONS.items()}
    for key, default in WORKFLOW_OPTIONS.items():
        if isinstance(default, bool):
            options[key] = _switch(key, options[key])
    if options["only_figures"] and grid.get("figures"):
        grid = only_figures(grid, options["only_figures"])
    return grid, options


_SWITCH = {"true": True, "1": True, "yes": True, "on": True,
           "false": False, "0": False, "no": False, "off": False}


def _switch(key: str, value) -> bool:
    """An on/off workflow option as given (`--config live_tracking=false` arrives as a string or a bool);
    anything else is refused, naming the key: a misspelt `flase` must not silently mean on."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _SWITCH:
        raise GridError(f"--config {key}={value}: not an on/off value (one of {', '.join(_SWITCH)})")
    return _SWITCH[word]


def only_figures(grid: dict, figures: str | list, option: str = "--config only_figures") -> dict:
    """The grid with only the named figures (`--config only_figures=a,b`; `make reproduce FIGURES=a,b`,
    `make replicate FIGURES=a,b`) and the findings on them; everything else (base, seeds, levels, rules)
    unchanged. An unknown name is refused with the grid's figures listed."""
    names = [str(f).strip() for f in (figures.split(",") if isinstance(figures, str) else figures)]
    names = [n for n in names if n]
    known = list(grid.get("figures") or {})
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise GridError(f"{option}: {', '.join(unknown) or '(empty)'} is not a figure of this grid (its "
                        f"figures: {', '.join(known)})")
    out = dict(grid, figures={k: v for k, v in grid["figures"].items() if k in names})
    if isinstance(grid.get("findings"), list):
        out["findings"] = [f for f in grid["findings"] if not isinstance(f, dict) or f.get("figure") in names]
    return out


def grid_from_dict(data: Any, source: str = "<grid>", preset: str | None = None, *,
                   presets: str | Path | dict | None = None, schema: str | Path | None = None) -> Grid:
    """Validate a grid (schema, then every run through the typed config) and expand it into runs."""
    validate_schema(data, source, schema)
    data = json.loads(json.dumps(data))  # a plain copy: no YAML anchors shared with the caller
    preset_map = presets if isinstance(presets, dict) else load_presets(presets)
    preset = preset or data.get("preset") or DEFAULT_PRESET
    if preset not in preset_map:
        raise GridError(f"{source}: unknown preset '{preset}' (presets: {sorted(preset_map)})")
    data["preset"] = preset
    scale = preset_map[preset] or {}
    base = data.get("base") or {}
    base_config = _resolve(source, "base", scale, base)
    seeds = data.get("seeds") or [0]
    runs: list[RunSpec] = []
    for fig_key, fig in data["figures"].items():
        runs += _figure_runs(source, data["name"], preset, fig_key, fig, base, scale, base_config, seeds)
    expanded: dict[str, dict] = {}
    for r in runs:
        expanded.setdefault(r.figure, {"arms": {}})["arms"][r.arm] = r.label
    for fig_key, fig in data["figures"].items():
        if fig.get("stress"):  # more_stable findings name base arms, read across the stress levels
            expanded.setdefault(fig_key, {"arms": {}})["stress_arms"] = expand_axes(
                fig.get("arms") or {}, fig.get("axes") or {})
    try:
        validate_findings(data.get("findings") or [], expanded)
    except FindingError as e:
        raise GridError(f"{source}: {e}") from None
    return Grid(name=data["name"], description=data.get("description", ""), preset=preset, seeds=seeds,
                source=source, data=data, base_config=base_config, runs=runs)


def _figure_runs(source: str, grid: str, preset: str, fig_key: str, fig: dict, base: dict, scale: dict,
                 base_config: RunConfig, seeds: list[int]) -> list[RunSpec]:
    where = f"figure '{fig_key}'"
    fig_base = fig.get("base") or {}
    _resolve(source, f"{where}, base", scale, base, fig_base)
    try:
        arms = expand_axes(fig.get("arms") or {}, {**(fig.get("axes") or {}), **check_stress(fig)})
    except GridError as e:
        raise GridError(f"{source}: {where}: {e}") from None
    runs = []
    for arm_key, arm in arms.items():
        at = f"{where}, arm '{arm_key}'"
        layers = (base, fig_base, arm.get("config") or {})
        for layer, named in zip(layers, ("base", f"{where}, base", at), strict=True):
            if "seed" in ((layer or {}).get("train") or {}):
                seed = layer["train"]["seed"]
                raise GridError(f"{source}: {named}: train.seed is set ({seed!r}), but in a grid every arm "
                                f"runs once per seed of `seeds:` (the seed goes to train.seed); remove it "
                                f"and list the seeds, e.g. `seeds: [{seed}]`")
        cfg = stretch(_resolve(source, at, scale, *layers), fig.get("horizon", 1))
        _check_shared(source, at, cfg, base_config)
        if problems := impossible(cfg):
            raise GridError(f"{source}: {at}: no backend can run this arm: {'; '.join(problems)}")
        over = over_preset(scale, layers, cfg)
        for seed in seeds:
            seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
            runs.append(RunSpec(grid=grid, figure=fig_key, figure_title=fig["title"], arm=arm_key,
                                label=arm["label"], seed=seed, preset=preset, config=seeded,
                                paper_figure=fig.get("paper_figure"), over_preset=over))
    return runs


def stretch(cfg: RunConfig, horizon: float) -> RunConfig:
    """A figure's ``horizon``: train.steps x horizon to the nearest multiple of N (at least N), eval.every
    x horizon to the nearest integer (at least 1)."""
    if horizon == 1:
        return cfg
    n = cfg.train.n_minibatches
    steps = max(n, n * math.floor(cfg.train.steps * horizon / n + 0.5))
    every = max(1, math.floor(cfg.eval.every * horizon + 0.5))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps),
                               eval=dataclasses.replace(cfg.eval, every=every))


def over_preset(scale: dict, layers: tuple[dict, ...], cfg: RunConfig) -> tuple[str, ...]:
    """"key=value" for every preset key that a grid layer sets to another value (the grid's value wins)."""
    preset_flat = flatten(scale or {})
    set_by_grid: set[str] = set()
    for layer in layers:
        set_by_grid |= set(flatten(layer or {}))
    resolved = flatten(cfg)
    return tuple(f"{k}={resolved[k]!r}" if isinstance(resolved[k], str) else f"{k}={resolved[k]}"
                 for k in sorted(set_by_grid & set(preset_flat)) if resolved[k] != preset_flat[k])


def _resolve(source: str, where: str, *layers: dict) -> RunConfig:
    try:
        return resolve(*layers)
    except ConfigError as e:
        raise GridError(f"{source}: {where}: {e}") from None


def _check_shared(source: str, where: str, cfg: RunConfig, base_config: RunConfig) -> None:
    """An arm may not change what its cold start was built with (it would not match the checkpoint)."""
    if cfg.init:
        return
    for section in SHARED_SECTIONS:
        mine, shared = flatten(getattr(cfg, section)), flatten(getattr(base_config, section))
        for key in mine:
            if mine[key] != shared[key]:
                raise GridError(
                    f"{source}: {where}: {section}.{key} = {mine[key]!r} differs from the grid's base model "
                    f"({shared[key]!r}); the base model and cold starts are shared by every arm of a grid, "
                    f"so set {section}.* in the grid's `base` (or give the arm its own `init` checkpoint)")


# --------------------------------------------------------------------------------------------- axes


def _leaf_keys() -> list[str]:
    return list(flatten(to_dict(RunConfig())))


def _token(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


#: A learning-rate stress axis: at least this many levels, each at most LR_MAX_STEP x the one before, so
#: that the critical learning rate is located to within a factor of two.
LR_MIN_LEVELS, LR_MAX_STEP = 5, 2.0


def check_stress(fig: dict) -> dict:
    """A figure's ``stress`` axis ({key: levels}), checked: not also an axis, levels distinct; numeric
    levels increasing; a train.lr axis with at least LR_MIN_LEVELS levels at most LR_MAX_STEP apart."""
    stress = fig.get("stress") or {}
    for key, levels in stress.items():
        if key in (fig.get("axes") or {}):
            raise GridError(f"stress key '{key}' is also one of the figure's axes")
        if len(set(map(str, levels))) != len(levels):
            raise GridError(f"stress '{key}': levels repeat: {levels}")
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in levels)
        if numeric and any(b <= a for a, b in itertools.pairwise(levels)):
            raise GridError(f"stress '{key}': levels must increase (in stress): {levels}")
        if key == "train.lr":
            if len(levels) < LR_MIN_LEVELS:
                raise GridError(f"stress 'train.lr' needs at least {LR_MIN_LEVELS} levels, got {len(levels)}")
            wide = [(a, b) for a, b in itertools.pairwise(levels) if b / a > LR_MAX_STEP * (1 + 1e-9)]
            if wide:
                raise GridError(f"stress 'train.lr': adjacent levels at most {LR_MAX_STEP:g}x apart; "
                                f"{wide[0][0]:g} -> {wide[0][1]:g} is {wide[0][1] / wide[0][0]:.3g}x")
    return stress


def expand_axes(arms: dict, axes: dict) -> dict[str, dict]:
    """Cross `axes` (dotted key -> values) with `arms`; without axes the arms are returned unchanged.

    Each arm x each combination of axis values becomes an arm named ``{arm}-{leaf}={value}[-...]`` (leaf =
    the last part of the dotted key) labelled ``{label} (leaf=value, ...)``; without arms the combinations
    alone are the arms (``n_minibatches=2``). The axis values override the arm's config.
    """
    if not axes:
        return dict(arms)
    leaves = set(_leaf_keys())
    for key in axes:
        if key not in leaves:
            hint = difflib.get_close_matches(key, sorted(leaves), n=1)
            raise GridError(f"axis '{key}' is not a RunConfig key"
                            + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    keys = list(axes)
    out: dict[str, dict] = {}
    for arm_key, arm in (arms or {"": {"label": "", "config": {}}}).items():
        for combo in itertools.product(*(axes[k] for k in keys)):
            parts = [f"{k.rsplit('.', 1)[-1]}={_token(v)}" for k, v in zip(keys, combo, strict=True)]
            name = "-".join([arm_key, *parts] if arm_key else parts)
            if name in out or not _ARM_NAME.match(name):
                raise GridError(f"axes give a duplicate or unusable arm name '{name}'")
            said = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, combo, strict=True))
            config = deep_merge(arm.get("config") or {}, unflatten(dict(zip(keys, combo, strict=True))))
            out[name] = {"label": f"{arm['label']} ({said})" if arm.get("label") else said, "config": config}
    return out


# ------------------------------------------------------------------------------------------- schema


def _schema(path: str | Path | None) -> dict:
    return yaml.safe_load(Path(path or SCHEMA_PATH).read_text())


def _where(path: list) -> str:
    """["figures", "f1", "arms", "a", "config"] -> "figure 'f1', arm 'a', config"."""
    parts, rest = [], list(path)
    for name, word in (("figures", "figure"), ("arms", "arm")):
        if len(rest) >= 2 and rest[0] == name:
            parts.append(f"{word} '{rest[1]}'")
            rest = rest[2:]
    if rest:
        parts.append(".".join(str(p) for p in rest))
    return ", ".join(parts) or "top level"


def validate_schema(data: Any, source: str = "<grid>", schema: str | Path | None = None) -> None:
    """Check the grid's structure; raise GridError listing every problem with where it is."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: a grid file is a YAML mapping, got {type(data).__name__}")
    validator = jsonschema.Draft202012Validator(_schema(schema))
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        message = err.message
        if err.validator == "anyOf" and list(err.absolute_path)[:1] == ["figures"]:
            message = "a figure needs `arms`, `axes` or `stress`"
        problems.append(f"{_where(list(err.absolute_path))}: {message}")
    if problems:
        raise GridError(f"{source}: " + "\n  ".join(problems))


# ------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m rl_core.orchestration.grid GRID.yaml [--preset P] [--seeds 0,1,2] [--figures a,b]
    [--estimate [--cores N]]`:
    validate a grid and list its runs, or estimate its wall time (rl_core.orchestration.cost, coefficients
    from `make bench`)."""
    parser = argparse.ArgumentParser(prog="python -m rl_core.orchestration.grid", description=main.__doc__)
    parser.add_argument("grid", help="grid file (experiments/*.yaml)")
    parser.add_argument("--preset", help="scale preset (default: the grid's)")
    parser.add_argument("--seeds", help="comma-separated seeds replacing the grid's `seeds` (e.g. 0,1,2)")
    parser.add_argument("--figures", help="comma-separated figures: only these and their findings")
    parser.add_argument("--estimate", action="store_true", help="print the grid's estimated wall time")
    parser.add_argument("--cores", type=int, default=2, help="cores the workflow runs on (--estimate)")
    args = parser.parse_args(argv)
    try:
        data = read_yaml(args.grid)
        if args.seeds and isinstance(data, dict):
            bad = [x for x in args.seeds.split(",") if not x.strip().isdigit()]
            if bad:
                raise GridError(f"--seeds: {bad[0]!r} is not a seed (comma-separated integers >= 0, "
                                f"e.g. --seeds 0,1,2)")
            data["seeds"] = [int(x) for x in args.seeds.split(",")]
        if args.figures and isinstance(data, dict) and isinstance(data.get("figures"), dict):
            data = only_figures(data, args.figures, "--figures")
        grid = grid_from_dict(data, source=args.grid, preset=args.preset)
    except (GridError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.estimate:
        from rl_core.orchestration.cost import format_estimate, grid_estimate

        print(format_estimate(grid_estimate(grid, args.cores)))
        return 0
    for r in grid.runs:
        print(f"{r.figure:24s} {r.arm:28s} seed{r.seed:<3d} {r.meta['config_hash']}  {r.label}")
        if r.over_preset:
            print(f"{'':24s}   over preset {grid.preset}: {', '.join(r.over_preset)}")
    print(f"{grid.name}: {len(grid.runs)} runs, preset {grid.preset}, cold starts {grid.cold_starts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
