# Per-grid report (analysis.report) and the index over all grids (analysis.index). The grid as run
# (effective preset, seeds, findings) is written to grid.yaml first: the report reads that file. The
# report job then logs the report into the grid's MLflow parent run (the mirror job made it), so MLflow
# holds what the files hold; that is why the report waits for the mirror.

localrules:
    grid_file,
    report,
    index,


rule grid_file:
    output:
        f"{GDIR}/grid.yaml",
    log:
        f"{LOGS}/grid_file.log",
    params:
        grid=lambda w: compact(GRID.data),  # a function: braces in task strings are not wildcards
    run:
        write_grid_file(params.grid, output[0], log[0])


rule report:
    input:
        grid=f"{GDIR}/grid.yaml",
        runs=[run_file(r, "DONE") for r in GRID.runs],
        mlflow=[run_file(r, "mlflow_run.json") for r in GRID.runs],
        parent=f"{GDIR}/mlflow_parent.json",
        evals=[f"{GDIR}/models/eval_{m}.json" for m in EVALUATED],
    output:
        # Files that analysis.report always writes (its HTML page's name is the analysis package's).
        md=f"{GDIR}/report/report.md",
        stability=f"{GDIR}/report/stability.csv",
    log:
        f"{LOGS}/report.log",
    params:
        grid_dir=lambda w, input: os.path.dirname(input.grid),
        out=lambda w, output: os.path.dirname(output.md),
        uri=TRACKING_URI,
    shell:
        "{PYTHON} -m analysis.report --grid-dir {params.grid_dir} --grid-file {input.grid} "
        "--out {params.out} 2>&1 | tee -a {log} && "
        "{PYTHON} -m rl_core.orchestration.tracking report --parent-file {input.parent} --report-dir {params.out} "
        "--uri={params.uri:q} >> {log} 2>&1"


rule index:
    input:
        f"{GDIR}/report/report.md",
        [f"{RESULTS}/{g}/mlflow_parent.json" for g in OTHER_GRIDS],  # re-mirrored after a lost store
    output:
        INDEX_HTML,
    log:
        f"{LOGS}/index.log",
    params:
        results=lambda w, output: os.path.dirname(output[0]) or ".",
    shell:
        "{PYTHON} -m analysis.index --results {params.results} --out {output} >> {log} 2>&1"
