"""What Snakemake, make and analysis/ import: no torch (a test checks each module in a fresh process).

    grid.py             grid files -> resolved runs (python -m rl_core.orchestration.grid)
    finding_schema.py   the schema of a grid's findings (validated while the grid loads)
    cost.py             what a grid costs before it runs
    tracking.py         the MLflow mirror of the run files (python -m rl_core.orchestration.tracking)
    live.py             live tracking of running arms (python -m rl_core.orchestration.live)
    capabilities.py     what each backend can do here, checked at config validation
    progress.py         the grid's progress line (python -m rl_core.orchestration.progress)
"""
