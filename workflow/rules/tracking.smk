# MLflow mirror of the run files (rl_core.tracking): one experiment per grid, a parent run per grid, a
# child run per (figure, arm, seed). Files stay the contract; a mirror job only reads a finished run dir
# and writes mlflow_run.json beside it. Local rules: on a cluster they run where the sqlite store lives.

localrules:
    mlflow_parent,
    mlflow_run,


rule mlflow_parent:
    output:
        f"{GDIR}/mlflow_parent.json",
    log:
        f"{LOGS}/mlflow/parent.log",
    params:
        grid_dir=lambda w, output: os.path.dirname(output[0]),
        grid=GRID.name,
        uri=TRACKING_URI,
    shell:
        "{PYTHON} -m rl_core.tracking parent --grid-dir {params.grid_dir} --grid {params.grid} "
        "--uri={params.uri:q} --out {output} > {log} 2>&1"


rule mlflow_run:
    input:
        summary=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/summary.json",
        done=f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/DONE",
        parent=f"{GDIR}/mlflow_parent.json",
    output:
        f"{GDIR}/runs/{{figure}}/{{arm}}/seed{{seed}}/mlflow_run.json",
    log:
        f"{LOGS}/mlflow/{{figure}}/{{arm}}/seed{{seed}}.log",
    params:
        run_dir=lambda w, input: os.path.dirname(input.done),
        uri=TRACKING_URI,
    shell:
        "{PYTHON} -m rl_core.tracking run --run-dir {params.run_dir} --parent-file {input.parent} "
        "--uri={params.uri:q} --out {output} > {log} 2>&1"
