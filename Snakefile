"""The ablation workflow: one grid -> base model -> cold starts -> RL runs -> MLflow -> report -> index.

    snakemake --profile workflow/profiles/default --configfile experiments/paper.yaml [--config preset=mini]
    snakemake -n --configfile experiments/paper.yaml      # list the jobs without running anything
    snakemake -n                                          # the same: the paper's grid is the default
    snakemake -n --config grid=experiments/paper.yaml     # the same; a missing file or a YAML error is named

Snakemake's config IS the grid file given with --configfile, else experiments/paper.yaml (checked by
rl_core.orchestration.grid against workflow/schemas/grid.schema.yaml and the typed RunConfig before any job starts).
A grid given with --configfile replaces the default whole (Snakemake would merge it over a `configfile:`
default, and a smoke grid would inherit the paper's figures): the default is read only without one.
One run's config is defaults <- preset <- grid base <- figure base <- arm config <- seed (the more
specific layer wins). Options beside it:

    --config preset=NAME       scale preset of experiments/presets.yaml (default: the grid's `preset`)
             results=DIR       results root (default: results)
             tracking_uri=URI  MLflow tracking server (default: sqlite:///<abs DIR>/mlflow.db)
             'seeds=[0,1,2]'   run every arm once per seed
             grid=FILE         the grid file, read by rl_core (instead of --configfile FILE)
             only_figures=a,b  only these figures and their findings (the report then covers only
                               them; a run without it restores the full report, training nothing again)

Layout under DIR/{grid}/: models/{base,terse,chain,scratchpad}/ (HF checkpoints), models/eval_*.json,
runs/{figure}/{arm}/seed{seed}/ (the trainer's files), logs/, grid.yaml, mlflow_parent.json, report/;
and DIR/index.html over all grids. Files are the contract between rules; MLflow mirrors them.
Nothing here imports torch (docs/conventions.md §8): every job runs `python -m ...` in its own process.
"""

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# Jobs run with the interpreter that runs Snakemake (the project's venv, also when make calls
# .venv/bin/snakemake without activating it). Not a param: moving the venv must not rerun every job.
PYTHON = sys.executable
sys.path.insert(0, workflow.basedir)

DEFAULT_GRID = "experiments/paper.yaml"
# --config grid=FILE: the same as --configfile FILE, but read by rl_core's loader, which names a missing
# file or the line of a YAML error (Snakemake reads --configfile itself, before this file runs, and answers
# either with a traceback).
GRID_OPTION = str((workflow.config_settings.config or {}).get("grid") or "")
if GRID_OPTION and workflow.overwrite_configfiles:
    raise WorkflowError("give the grid once: --configfile FILE or --config grid=FILE, not both")
GRID_FILES = [str(p) for p in workflow.overwrite_configfiles] or [GRID_OPTION or DEFAULT_GRID]
if not workflow.overwrite_configfiles and not GRID_OPTION:

    configfile: DEFAULT_GRID


include: "workflow/rules/common.smk"
include: "workflow/rules/coldstart.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/report.smk"


# Everything a grid produces, named: deleting any of it (a run's DONE, an MLflow record, the report)
# and re-running the same command rebuilds it and what depends on it.
rule all:
    default_target: True
    input:
        [run_file(r, "DONE") for r in GRID.runs],
        MLFLOW_PARENT,
        [run_file(r, "mlflow_run.json") for r in GRID.runs],
        f"{GDIR}/report/report.md",
        INDEX_HTML,
