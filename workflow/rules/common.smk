# The grid, the paths and the small helpers the rules share. The grid is loaded (schema + typed config of
# every run) while Snakemake parses the workflow, so a bad grid fails before any job starts.

import json
import os
import re
import shlex
import sys
from glob import glob
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from rl_core.orchestration.grid import LONG_GRID_HOURS, TEACHERS, GridError, grid_from_dict, read_yaml, split_workflow_options

def _config_as_read():
    """Snakemake's config, with the grid files read by rl_core's loader (YAML 1.2 floats: Snakemake's YAML 1.1
    reads `lr: 1e-3` as the string '1e-3', which rl_core.orchestration.grid reads as 0.001; a duplicate key is named) and
    the --config options over them, as Snakemake merges them."""
    from snakemake.utils import update_config

    merged = {}
    for path in GRID_FILES:
        data = read_yaml(path)
        if isinstance(data, dict):
            update_config(merged, data)
    update_config(merged, dict(workflow.config_settings.config or {}))
    return merged


try:
    _grid_data, OPTIONS = split_workflow_options(_config_as_read())
except GridError as e:
    raise WorkflowError(f"invalid grid: {e}") from None
if not _grid_data.get("figures"):
    raise WorkflowError(
        "no grid given: run with --configfile experiments/paper.yaml (or experiments/smoke.yaml, or your "
        "own grid file)"
    )
try:
    GRID = grid_from_dict(
        _grid_data,
        source=", ".join(GRID_FILES),
        presets=Path(workflow.basedir) / "experiments" / "presets.yaml",
        schema=Path(workflow.basedir) / "workflow" / "schemas" / "grid.schema.yaml",
    )
except GridError as e:
    raise WorkflowError(f"invalid grid: {e}") from None

RESULTS = str(OPTIONS["results"]).rstrip("/")
GDIR = f"{RESULTS}/{GRID.name}"
LOGS = f"{GDIR}/logs"
INDEX_HTML = f"{RESULTS}/index.html"
# "" means the embedded store sqlite:///<abs RESULTS>/mlflow.db (rl_core.orchestration.tracking.default_uri).
TRACKING_URI = str(OPTIONS["tracking_uri"] or "")
# Each arm's metric rows reach MLflow while it runs (rl_core.orchestration.live, started in tracking.smk);
# --config live_tracking=false turns it off.
LIVE = "true" if OPTIONS["live_tracking"] else "false"  # a bool: split_workflow_options refuses other words
RUNS = {(r.figure, r.arm, str(r.seed)): r for r in GRID.runs}
# Every shell job first appends its full command, with the time, to {LOGS}/commands.log: the terminal stays
# quiet (workflow/profiles/default) and the commands stay on record. (Braces doubled twice: once for this
# f-string, once for Snakemake's formatting of the command.)
shell.prefix(
    f'set -euo pipefail; mkdir -p {shlex.quote(LOGS)} && printf "%s %s\\n" "$(date -u +%FT%TZ)" '
    f'"${{{{BASH_EXECUTION_STRING##*: rl-job; }}}}" >> {shlex.quote(LOGS)}/commands.log || true; : rl-job; '
)
# The embedded MLflow store (shared by the grids of RESULTS) when no tracking_uri is given.
MLFLOW_DB = f"{RESULTS}/mlflow.db"
MLFLOW_PARENT = f"{GDIR}/mlflow_parent.json"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# The checkpoints the workflow builds and evaluates: none when every arm brings its own `init` (e.g. a
# real checkpoint on a task.kind file dataset): the base model is built only for cold starts.
EVALUATED = ["base", *GRID.cold_starts] if GRID.cold_starts else []


wildcard_constraints:
    figure=r"[A-Za-z0-9][A-Za-z0-9_.=+-]*",
    arm=r"[A-Za-z0-9][A-Za-z0-9_.=+-]*",
    seed=r"\d+",
    teacher="|".join(TEACHERS),
    model="|".join(("base", *TEACHERS)),


def compact(obj):
    """JSON for a command line and for params (Snakemake reruns a job when its params change)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def run_of(wildcards):
    key = (wildcards.figure, wildcards.arm, wildcards.seed)
    if key not in RUNS:
        raise WorkflowError(f"runs/{key[0]}/{key[1]}/seed{key[2]} is not a run of grid '{GRID.name}'")
    return RUNS[key]


#: An input no rule makes: the rule whose input names it does not apply to that job (see rules/rl.smk).
NOT_THIS_RULE = f"{GDIR}/.no-rule-makes-this"
def trained_by(wildcards):
    return GRID.trained_by[(wildcards.figure, wildcards.arm, int(wildcards.seed))]


def shared(wildcards):
    return trained_by(wildcards) is not run_of(wildcards)


def run_file(run, name=""):
    return f"{GDIR}/{run.run_dir}/{name}" if name else f"{GDIR}/{run.run_dir}"


def model_dir(name):
    return f"{GDIR}/models/{name}"


def model_files(name):
    return [f"{model_dir(name)}/{f}" for f in MODEL_FILES]


def init_dir(run):
    """The run's initial policy: its own `init`, else the cold start its config names."""
    return run.config.init or model_dir(run.config.cold_start)


def step0_eval(run):
    """The benchmark of the cold start a run starts from (rule coldstart_eval): its step-0 eval row."""
    return f"{GDIR}/models/eval_{run.config.cold_start}.json"


def run_gpus(run):
    """GPUs one arm job asks for (a resource for cluster profiles): the GPU backends need one, and so does
    a trainer asked for cuda, one per rank (train.world_size); train.device=auto trains on whatever the job
    got."""
    c = run.config
    return int(c.rollout.engine == "vllm" or c.train.engine == "megatron" or c.train.device == "cuda") \
        * c.train.world_size


def run_threads(run):
    """Cores one arm job takes: train.threads per rank, train.world_size ranks (Snakemake's local
    scheduler counts them against --cores; the SLURM executor asks for them as --cpus-per-task)."""
    return run.config.train.threads * run.config.train.world_size


def run_launcher(run):
    """How an arm's trainer is started: one process, or train.world_size ranks under torchrun on this node
    (--standalone: a private rendezvous on a free local port, so arms side by side do not collide)."""
    w = run.config.train.world_size
    if w == 1:
        return PYTHON
    return f"{PYTHON} -m torch.distributed.run --nproc-per-node {w} --standalone"


def run_partition(run):
    """The SLURM partition of an arm job (only the slurm executor reads it): $RL_GPU_PARTITION (default
    gpu) when the job asks for a GPU, else $RL_CPU_PARTITION (default cpu)."""
    if run_gpus(run):
        return os.environ.get("RL_GPU_PARTITION", "gpu")
    return os.environ.get("RL_CPU_PARTITION", "cpu")


def stage_json(stage, model="base"):
    return compact(GRID.stage_config(stage, None if model == "base" else model))


def write_grid_file(grid_json, path, log_path):
    """The grid as run (effective preset, seeds, findings): what analysis.report reads."""
    header = f"# The grid as run (from {GRID.source}, preset {GRID.preset}); written by the workflow.\n"
    Path(path).write_text(header + yaml.safe_dump(json.loads(grid_json), sort_keys=False))
    with open(log_path, "a") as log:  # appended: a re-run keeps the history
        log.write(f"wrote {path}: {len(GRID.runs)} runs\n")


def set_aside_stale_mirror():
    """The mirror's records (mlflow_parent.json, mlflow_run.json) say what the MLflow store holds; when the
    embedded store was deleted they are false, for every grid of RESULTS, not only this one. Snakemake
    cannot see a file that is not an output, so each grid's parent record is renamed
    mlflow_parent.json.stale: this grid's mirror job is then planned and re-mirrors its runs into a new
    store (and the report follows); the other grids' records are remade by rule remirror_grid (tracking.smk),
    which the index waits for. Returns the other grids to re-mirror: those with a set-aside record and none
    made since."""
    if not TRACKING_URI and not os.path.exists(MLFLOW_DB):
        for parent in sorted(Path(RESULTS).glob("*/mlflow_parent.json")):
            os.replace(parent, f"{parent}.stale")
            print(f"{MLFLOW_DB} is gone: {parent} set aside, the MLflow mirror of grid '{parent.parent.name}' "
                  "will re-run", file=sys.stderr)
    return sorted(p.parent.name for p in Path(RESULTS).glob("*/mlflow_parent.json.stale")
                  if str(p.parent) != GDIR and not p.with_name("mlflow_parent.json").exists()
                  and any(p.parent.glob("runs/*/*/seed*/DONE")))


OTHER_GRIDS = set_aside_stale_mirror()


# Capabilities (device, engines, backends) are checked before any job: when jobs run on this machine (the
# local executor, dry runs included), here, for every arm not yet finished; otherwise (SLURM, ...) in one
# cheap job per kind of node (rule check_capabilities: gpu / cpu, on the partition the arms go to), which
# every arm depends on, so a login node without GPUs still plans a GPU grid and no arm waits for
# pretraining and SFT to learn that its node cannot run it.
def _capability_problems():
    from rl_core.orchestration.capabilities import CapabilityError, check_capabilities, probe

    env, out = probe(), []
    for r in GRID.trained_runs:
        if os.path.exists(run_file(r, "DONE")):
            continue
        try:
            check_capabilities(r.config, env)
        except CapabilityError as e:
            out.append(f"figure '{r.figure}', arm '{r.arm}': {e}")
    return out


if workflow.local_exec and (_problems := _capability_problems()):
    raise WorkflowError(
        f"invalid grid: {GRID.source}: jobs run on this machine (local executor), which cannot run "
        f"{len(_problems)} arm(s): {_problems[0]}" + (f" (and {len(_problems) - 1} more)" if len(_problems) > 1 else "")
    )


if workflow.local_exec and not workflow.dryrun and not OPTIONS["confirm_long"]:
    from rl_core.orchestration.cost import grid_estimate

    _cores = workflow.resource_settings.cores or 1
    _hours = grid_estimate(GRID, _cores)["wall_s"] / 3600
    if _hours > LONG_GRID_HOURS:
        raise WorkflowError(
            f"grid '{GRID.name}' (preset {GRID.preset}) is estimated at {_hours:,.0f} h on this machine "
            f"({_cores} cores; python -m rl_core.orchestration.grid {GRID.source} --estimate), over the {LONG_GRID_HOURS} h "
            f"bound: to start it anyway add --config confirm_long=true (make: CONFIRM_LONG=1), or use a "
            f"smaller preset (--config preset=mini)"
        )


def node_kind(run):
    return "gpu" if run_gpus(run) else "cpu"


def capability_check(run):
    """The check job an arm waits for (not on the local executor: checked above, while the grid loads)."""
    return [] if workflow.local_exec else [ancient(f"{GDIR}/capabilities/{node_kind(run)}.ok")]


def capability_configs(kind):
    from rl_core.orchestration.capabilities import CHECKED_SECTIONS
    from rl_core.config import to_dict

    seen, out = set(), []
    for r in GRID.trained_runs:
        if node_kind(r) != kind:
            continue
        part = {k: v for k, v in to_dict(r.config).items() if k in CHECKED_SECTIONS}
        key = compact(part)
        if key not in seen:
            seen.add(key)
            out.append({"arm": f"{r.figure}/{r.arm}", "config": part})
    return compact(out)
