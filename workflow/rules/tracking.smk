# MLflow mirror of the run files (rl_core.orchestration.tracking): one experiment per grid, a parent run per grid, a
# child run per (figure, arm, seed). Files stay the contract: the mirror only reads finished run dirs and
# writes mlflow_parent.json and, beside each run, mlflow_run.json. One job per grid (not per arm): opening
# MLflow costs ~2 s, paid once. Re-mirroring is idempotent (a run whose files did not change is kept), so
# when one arm re-runs, this job re-runs and rewrites only that arm. A local rule: on a cluster it runs
# where the sqlite store lives. A deleted embedded store (results/mlflow.db) re-runs this job: see
# set_aside_stale_mirror in common.smk. mlflow.log is appended to (a re-run keeps the history); mlflow.last.log,
# Snakemake's log, holds the last job's.

localrules:
    mlflow,
    remirror_grid,


rule mlflow:
    input:
        summaries=[run_file(r, "summary.json") for r in GRID.runs],
        done=[run_file(r, "DONE") for r in GRID.runs],
    output:
        parent=MLFLOW_PARENT,
        runs=[run_file(r, "mlflow_run.json") for r in GRID.runs],
    log:
        f"{LOGS}/mlflow.last.log",
    params:
        history=f"{LOGS}/mlflow.log",
        grid_dir=lambda w, output: os.path.dirname(output.parent),
        grid=GRID.name,
        uri=TRACKING_URI,
        run_dirs=lambda w, input: " ".join(shlex.quote(os.path.dirname(d)) for d in input.done),
    shell:
        "{PYTHON} -m rl_core.orchestration.tracking grid --grid-dir {params.grid_dir} --grid {params.grid} "
        "--uri={params.uri:q} {params.run_dirs} 2>&1 | tee -a {params.history:q} > {log}"


# After a deleted embedded store, the other grids of the results folder (OTHER_GRIDS, common.smk) lose
# their MLflow runs too: one job each re-mirrors its finished runs (rewriting mlflow_parent.json and every
# mlflow_run.json), regenerates its report from its grid.yaml (so the run ids the report names exist) and
# logs it into the new parent run. The index waits for these jobs (report.smk). Its runs' files are read,
# never trained: a grid whose arms are not all done keeps what it has (re-run that grid to finish it).
rule remirror_grid:
    input:
        lambda w: sorted(glob(f"{RESULTS}/{w.other}/runs/*/*/seed*/DONE")),
    output:
        f"{RESULTS}/{{other}}/mlflow_parent.json",
    log:
        f"{RESULTS}/{{other}}/logs/mlflow.log",
    wildcard_constraints:
        other="|".join(re.escape(g) for g in OTHER_GRIDS) or "(?!)",
    params:
        grid_dir=lambda w, output: os.path.dirname(output[0]),
        uri=TRACKING_URI,
        run_dirs=lambda w, input: " ".join(shlex.quote(os.path.dirname(d)) for d in input),
    shell:
        "{PYTHON} -m rl_core.orchestration.tracking grid --grid-dir {params.grid_dir} --grid {wildcards.other} "
        "--uri={params.uri:q} {params.run_dirs} >> {log} 2>&1 && "
        "{PYTHON} -m analysis.report --grid-dir {params.grid_dir} --grid-file {params.grid_dir}/grid.yaml "
        "--out {params.grid_dir}/report >> {log} 2>&1 && "
        "{PYTHON} -m rl_core.orchestration.tracking report --parent-file {output} --report-dir {params.grid_dir}/report "
        "--uri={params.uri:q} >> {log} 2>&1"


# Live tracking (rl_core.orchestration.live): one follower per Snakemake invocation tails the metrics.jsonl of every arm
# that starts into a live MLflow run (which the mirror above replaces with the finished files). It starts
# when Snakemake starts executing jobs (not on a dry run, not inside cluster jobs: they run with --no-hooks),
# runs where Snakemake runs and ends with it; its log is {LOGS}/live.log. --config live_tracking=false: off.
def start_live_follower():
    if LIVE != "true":
        return
    import subprocess

    os.makedirs(LOGS, exist_ok=True)
    with open(f"{LOGS}/live.log", "a") as log:
        subprocess.Popen(
            [PYTHON, "-m", "rl_core.orchestration.live", "--grid-dir", GDIR, "--grid", GRID.name, f"--uri={TRACKING_URI}",
             "--pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )


# The grid's progress line (rl_core.orchestration.progress) on Snakemake's terminal, from a plan of the runs' estimates
# (rl_core.orchestration.cost, as `python -m rl_core.orchestration.grid --estimate` prints them); it ends with Snakemake.
def start_progress():
    import subprocess

    from rl_core.orchestration.cost import grid_estimate

    # Locally the jobs share --cores; on a cluster executor (no --cores: workflow.cores raises) up to --jobs
    # arms run at once, each on its own node's cores, so the plan counts --jobs parallel slots.
    slots = workflow.cores if workflow.local_exec else max(1, int(workflow.nodes or 1))
    e = grid_estimate(GRID, slots)
    plan = {"grid": GRID.name, "cores": slots,
            "coldstart_s": e["pretrain_s"] + e["sft_wall_s"] + e["coldstart_eval_s"] * len(EVALUATED),
            "coldstart_files": [f"{GDIR}/models/eval_{m}.json" for m in EVALUATED],
            "runs": [{"dir": os.path.abspath(run_file(r)), "est_s": a["total_s"], "steps": r.config.train.steps}
                     for r, a in e["arms"]]}
    os.makedirs(LOGS, exist_ok=True)
    with open(f"{LOGS}/plan.json", "w") as f:
        json.dump(plan, f, indent=1)
    subprocess.Popen([PYTHON, "-m", "rl_core.orchestration.progress", "--plan", f"{LOGS}/plan.json", "--interval", "10",
                      "--pid", str(os.getpid())],
                     stdin=subprocess.DEVNULL, start_new_session=True)


onstart:
    start_live_follower()
    start_progress()
