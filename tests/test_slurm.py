"""The smoke grid through workflow/profiles/slurm on a real (single-node) SLURM: `make test-slurm` starts
slurmctld and slurmd on localhost (tests/slurm/cluster.sh), runs this with SLURM_CONF set, and stops them.

The command line is how a user points the profile at a cluster: the partition and the memory the node has
(`--default-resources`, `--set-resources`: the profile's 64 GB would not fit it), no accounting database
(`--slurm-status-command squeue`, `--slurm-no-account`). The smoke arms use no GPU, so none is asked for.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_core.orchestration.grid import load_grid

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
RUNS = len(load_grid(REPO / "experiments" / "smoke.yaml",
                     presets=REPO / "experiments" / "presets.yaml").runs)
RULES = ("rl_run", "pretrain", "sft", "coldstart_eval")  # the rules that run as SLURM jobs


def slurm_command(results: Path, grid: str = "experiments/smoke.yaml", *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *targets, "--profile", "workflow/profiles/slurm",
            "--configfile", grid, "--config", f"results={results}",
            "--default-resources", "slurm_partition=cpu", "mem_mb=1500", "runtime=30",
            "--set-resources", *(f"{rule}:mem_mb=1500" for rule in RULES),
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-no-account", "--slurm-logdir", str(results.parent / "slurm_logs"),
            "--slurm-keep-successful-logs",
            "--jobs", "2", "--latency-wait", "5"]


@pytest.fixture(scope="module")
def slurm_results(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        pytest.fail("no SLURM here: run `make test-slurm`, which starts one on localhost")
    results = tmp_path_factory.mktemp("slurm") / "results"
    proc = subprocess.run(slurm_command(results), cwd=REPO, capture_output=True, text=True, timeout=1500)
    return results, proc


def test_the_smoke_grid_runs_through_the_slurm_profile(slurm_results):
    results, proc = slurm_results
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summaries = sorted((results / "smoke" / "runs").glob("*/*/seed0/summary.json"))
    assert len(summaries) == RUNS
    assert all(json.loads(p.read_text())["status"] == "completed" for p in summaries)
    report = results / "smoke" / "report" / "report.html"
    assert report.is_file() and "Stability" in report.read_text()
    assert (results / "smoke" / "mlflow_parent.json").is_file()


def test_every_non_local_job_was_a_slurm_job(slurm_results):
    """pretrain, sft, the cold-start evals and the arms ran as SLURM jobs that completed; the MLflow mirror,
    grid file, report and index (and a run that shares an identical run's files) ran where Snakemake ran."""
    results, proc = slurm_results
    log = proc.stdout + proc.stderr
    assert "sbatch" in log.lower() or "slurm jobid" in log.lower(), log[-3000:]
    jobs = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i %T %P %C"], capture_output=True,
                          text=True, check=True).stdout.split("\n")
    done = [j for j in jobs if " COMPLETED " in j]
    logs = list((results.parent / "slurm_logs").glob("rule_rl_run/**/*.log"))
    assert 1 <= len(logs) <= RUNS, "the executor's per-job logs (--slurm-logdir) are missing"
    assert len(done) >= 4 + len(logs), jobs  # pretrain, sft, the evals of base and the cold start, the arms


def test_live_tracking_followed_the_arms_from_the_submitting_host(slurm_results):
    """One follower beside Snakemake (not in the SLURM jobs) saw every trained arm start and finish."""
    results, _ = slurm_results
    log = results / "smoke" / "logs" / "live.log"
    deadline = time.time() + 60  # it ends right after Snakemake does
    while time.time() < deadline and '"status": "ended"' not in log.read_text():
        time.sleep(0.5)
    record = json.loads(log.read_text().strip().splitlines()[-1])
    trained = len(list((results.parent / "slurm_logs").glob("rule_rl_run/**/*.log")))
    assert record["status"] == "ended" and record["arms"] == record["finished"]
    assert trained <= record["arms"] <= RUNS  # a run that shares an identical run's files is seen too


@pytest.fixture(scope="module")
def slurm_ranks(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """A tiny grid whose one arm has train.world_size 2 (tests/test_workflow_ranks.py's), to its DONE."""
    from test_workflow_ranks import RUN, write_grid

    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        pytest.fail("no SLURM here: run `make test-slurm`, which starts one on localhost")
    root = tmp_path_factory.mktemp("slurm_ranks")
    grid = write_grid(root / "ranks.yaml", 2)
    t0 = time.time()
    proc = subprocess.run(slurm_command(root / "results", str(grid), f"{root}/{RUN}/DONE"), cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    return root, proc, time.time() - t0


def test_an_arm_of_two_ranks_is_one_slurm_job_of_two_cpus_under_torchrun(slurm_ranks):
    """The W = 2 arm ran as one SLURM job (one task, --cpus-per-task=2: train.threads x W) that started 2
    gloo ranks under torchrun; its rows and summary say 2 ranks."""
    from test_workflow_ranks import RUN

    root, proc, seconds = slurm_ranks
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = root / RUN
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["perf/world_size"] for r in rows if "minibatch" in r]
    assert summary["status"] == "completed" and summary["world_size"] == 2 and train == [2] * 8
    log = proc.stdout + proc.stderr
    assert "--nproc-per-node 2 --standalone" in log
    jobs = subprocess.run(["squeue", "--states=all", "-h", "-o", "%j %T %C %D"], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    slurm_logs = list((root / "results").parent.glob("slurm_logs/rule_rl_run/**/*.log"))
    assert slurm_logs, "the arm's SLURM job log is missing"
    assert any(j.split()[1:] == ["COMPLETED", "2", "1"] for j in jobs), jobs  # 2 CPUs on 1 node
    print(f"SLURM, a 2-rank gloo arm (cold start included): {seconds:.0f} s; rows' world sizes {train}")
