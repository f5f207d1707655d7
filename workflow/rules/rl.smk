# One RL job per (figure, arm, seed): `python -m rl_core.train` (the trainer's file contract).
#
# Outputs are only summary.json and the DONE marker (written last): Snakemake deletes the outputs of a
# failed job, and metrics.jsonl / ckpt/ must survive so that the re-run resumes from ckpt/ with every row.
# The resolved config is a param, so editing one arm's config reruns that arm only (Snakemake's params
# rerun trigger); the meta (label, ...) is a param too: relabelling re-runs the job, which resumes from
# its final checkpoint. A diverged run exits 0: it is a result, and the workflow goes on to the report.


rule rl_run:
    input:
        lambda w: [] if run_of(w).config.init else model_files(run_of(w).config.cold_start),
    output:
        summary=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/summary.json",
        done=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/DONE",
    log:
        f"{LOGS}/runs/{{figure}}/{{arm}}/seed{{seed}}.log",
    params:
        run_dir=lambda w, output: os.path.dirname(output.done),
        config=lambda w: run_of(w).config_json(init=init_dir(run_of(w))),
        meta=lambda w: compact(run_of(w).meta),
    threads: lambda w: run_of(w).config.train.threads
    resources:
        gpu=lambda w: run_gpus(run_of(w)),
        slurm_partition=lambda w: run_partition(run_of(w)),
    shell:
        # tee: progress on the terminal and in the log (appended: a resumed run keeps its history).
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
        "{PYTHON} -m rl_core.train --out {params.run_dir} --config-json {params.config:q} "
        "--meta-json {params.meta:q} 2>&1 | tee -a {log}"
