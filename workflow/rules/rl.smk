# One RL job per (figure, arm, seed): `python -m rl_core.train` (the trainer's file contract).
#
# Outputs are only summary.json and the DONE marker (written last): Snakemake deletes the outputs of a
# failed job, and metrics.jsonl / ckpt/ must survive so that the re-run resumes from ckpt/ with every row.
# The resolved config is a param, so editing one arm's config reruns that arm only (Snakemake's params
# rerun trigger); the meta (label, ...) is a param too: relabelling re-runs the job, which resumes from
# its final checkpoint. A diverged run exits 0: it is a result, and the workflow goes on to the report.
# A run whose resolved config and seed equal an earlier run's (GRID.trained_by) is not trained again:
# rl_shared links that run's files under its own meta.json. Each run is made by exactly one of the two
# rules: the other's input names a file no rule makes (NOT_THIS_RULE), which rules it out for that run.
# An arm from a cold start takes the cold start's benchmark as its step-0 eval row when the trainer finds it
# made from the same weights, settings and code (rl_core.tasks.reusable; else it evaluates and says why).

ruleorder: rl_shared > rl_run

localrules:
    rl_shared,


rule rl_run:
    input:
        lambda w: NOT_THIS_RULE if shared(w) else capability_check(run_of(w)) + ([] if run_of(w).config.init
        else model_files(run_of(w).config.cold_start) + [step0_eval(run_of(w))]),
    output:
        summary=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/summary.json",
        done=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/DONE",
    log:
        f"{LOGS}/runs/{{figure}}/{{arm}}/seed{{seed}}.last.log",
    params:
        history=lambda w: f"{LOGS}/runs/{w.figure}/{w.arm}/seed{w.seed}.log",
        run_dir=lambda w, output: os.path.dirname(output.done),
        config=lambda w: run_of(w).config_json(init=init_dir(run_of(w))),
        meta=lambda w: compact(run_of(w).meta),
        step0=lambda w: "" if run_of(w).config.init else f"--step0-eval {step0_eval(run_of(w))}",
        launch=lambda w: run_launcher(run_of(w)),
        rank_threads=lambda w: run_of(w).config.train.threads,
    # train.world_size ranks x train.threads each (common.smk): all on one node, in one SLURM task (torchrun
    # is the per-node launcher that starts the ranks), with one GPU per rank for a GPU arm.
    threads: lambda w: run_threads(run_of(w))
    resources:
        gpu=lambda w: run_gpus(run_of(w)),
        slurm_partition=lambda w: run_partition(run_of(w)),
        # SLURM (snakemake-executor-plugin-slurm 2.8.0): --nodes=1 and one task (--ntasks=1 for a CPU arm;
        # tasks_per_gpu=0 keeps the plugin from adding --ntasks-per-gpu, i.e. W tasks, for a GPU arm), with
        # --cpus-per-task from threads and --gpus from gpu.
        nodes=1,
        tasks=1,
        tasks_per_gpu=0,
    shell:
        # tee: progress on the terminal, in the log of this process ({log}: Snakemake empties a job's log
        # before the job runs) and appended to the history (seed<n>.log: a resumed run keeps every process).
        "OMP_NUM_THREADS={params.rank_threads} MKL_NUM_THREADS={params.rank_threads} "
        "{params.launch} -m rl_core.train --out {params.run_dir} --config-json {params.config:q} "
        "--meta-json {params.meta:q} {params.step0} 2>&1 | tee -a {params.history:q} | tee {log}"


rule rl_shared:
    input:
        lambda w: run_file(trained_by(w), "DONE") if shared(w) else NOT_THIS_RULE,
    output:
        summary=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/summary.json",
        done=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/DONE",
    log:
        f"{LOGS}/runs/{{figure}}/{{arm}}/seed{{seed}}.last.log",
    params:
        history=lambda w: f"{LOGS}/runs/{w.figure}/{w.arm}/seed{w.seed}.log",
        source=lambda w: run_file(trained_by(w)),
        run_dir=lambda w, output: os.path.dirname(output.done),
        meta=lambda w: compact(run_of(w).meta),
        trained_by=lambda w: trained_by(w).run_dir,
    shell:
        "{PYTHON} {workflow.basedir}/workflow/scripts/share_run.py {params.source:q} {params.run_dir:q} "
        "{params.meta:q} {params.trained_by:q} 2>&1 | tee -a {params.history:q} > {log}"


# A non-local executor: the arms' capabilities, checked once per kind of node on such a node, first.
rule check_capabilities:
    output:
        f"{GDIR}/capabilities/{{kind}}.ok",
    wildcard_constraints:
        kind="gpu|cpu",
    log:
        f"{LOGS}/capabilities_{{kind}}.last.log",
    params:
        history=lambda w: f"{LOGS}/capabilities_{w.kind}.log",
        configs=lambda w: capability_configs(w.kind),
    resources:
        gpu=lambda w: int(w.kind == "gpu"),
        slurm_partition=lambda w: os.environ.get("RL_GPU_PARTITION", "gpu") if w.kind == "gpu"
        else os.environ.get("RL_CPU_PARTITION", "cpu"),
    shell:
        "{PYTHON} -m rl_core.orchestration.capabilities --check {params.configs:q} --out {output} 2>&1 | tee -a {params.history:q} > {log}"
