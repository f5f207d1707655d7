"""The Snakemake DAG, built in dry runs (no job runs): every arm of paper.yaml once; adding an arm plans
only its jobs; editing one arm's config reruns only that arm (Snakemake's params trigger)."""

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rl_core.orchestration.grid import load_grid

REPO = Path(__file__).resolve().parents[1]
DOWNSTREAM = {"grid_file", "report", "index", "all"}  # what any change to the runs of a grid replans


def snakemake(workdir, *args, snakefile=REPO / "Snakefile", check=True):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def planned(output):
    """Jobs of a dry run: [{"rule", "wildcards", "output", "reason"}] from Snakemake's job listing."""
    jobs = []
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            jobs.append({"rule": m[1], "wildcards": {}, "output": [], "reason": ""})
        elif jobs and line.startswith("    ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            if key == "wildcards":
                jobs[-1]["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key in ("output", "reason"):
                jobs[-1][key] = value.split(", ") if key == "output" else value
    return jobs


def arm_jobs(jobs, rules=("rl_run", "rl_shared")):
    """(figure, arm) -> planned jobs; every run is made by exactly one of rl_run (trains) and rl_shared (a run
    the grid repeats, linked to the one that trains it)."""
    return Counter((j["wildcards"]["figure"], j["wildcards"]["arm"]) for j in jobs if j["rule"] in rules)


# ------------------------------------------------------------------------------------- paper.yaml


def test_dry_run_of_paper_lists_every_arm_of_every_figure_once_per_seed(tmp_path):
    out = snakemake(tmp_path, "-n", "--configfile", str(REPO / "experiments" / "paper.yaml"))
    jobs = planned(out)
    expected = Counter((r.figure, r.arm) for r in load_grid(REPO / "experiments" / "paper.yaml").runs)
    assert len(expected) == 36 and set(expected.values()) == {3}  # three seeds
    assert arm_jobs(jobs) == expected
    rules = Counter(j["rule"] for j in jobs)
    once = {"pretrain": 1, "sft": 3, "coldstart_eval": 4, "mlflow": 1, "report": 1, "index": 1}
    assert {k: rules[k] for k in once} == once
    assert not (tmp_path / "results").exists()  # a dry run writes no results


def test_bad_grid_fails_before_any_job(tmp_path):
    grid = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    grid["figures"]["on_policy"]["arms"]["minirl"]["config"] = {"replay": {"mdoe": "r3"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = snakemake(tmp_path, "-n", "--configfile", str(path), check=False)
    assert "invalid grid" in out and str(path) in out
    assert "figure 'on_policy', arm 'minirl': unknown key 'replay.mdoe'" in out


def test_config_grid_names_a_missing_file_or_the_line_of_a_yaml_error(tmp_path):
    # `--configfile nope.yaml` is read by Snakemake's CLI before the Snakefile runs (a FileNotFoundError
    # traceback, or "not valid JSON or YAML" with no line); `--config grid=FILE` is read by rl_core.
    out = snakemake(tmp_path, "-n", "--config", f"grid={tmp_path / 'nope.yaml'}", check=False)
    assert f"invalid grid: {tmp_path / 'nope.yaml'}: no such grid file" in out and "Traceback" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nseeds: [0\n")
    out = snakemake(tmp_path, "-n", "--config", f"grid={bad}", check=False)
    assert f"invalid grid: {bad}: not valid YAML" in out and "line 2, column 8" in out
    smoke = REPO / "experiments" / "smoke.yaml"
    jobs = planned(snakemake(tmp_path, "-n", "--config", f"grid={smoke}"))
    assert arm_jobs(jobs) == Counter((r.figure, r.arm) for r in load_grid(smoke).runs)
    out = snakemake(tmp_path, "-n", "--configfile", str(smoke), "--config", f"grid={smoke}", check=False)
    assert "give the grid once" in out


def test_a_cluster_executor_without_cores_gets_past_the_workflow_start(tmp_path):
    """SLURM's executor runs Snakemake without --cores, where ``workflow.cores`` raises. The workflow's start
    (the live follower, the progress line's plan) must not need it: a stand-in non-local executor
    (tests/executor_standin; it submits nothing, every job fails at once) gets to its first job, and the
    plan counts --jobs slots. `make test-slurm` runs the real executor outside CI; this guards the default
    suite (the progress line once stopped every SLURM grid at start with "requires a total number of
    cores")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests" / "executor_standin"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--executor", "standin", "--jobs", "3", "--configfile",
           str(REPO / "experiments" / "smoke.yaml"), "--config", f"results={tmp_path / 'r'}",
           "live_tracking=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert "the stand-in executor runs nothing" in out, out[-3000:]  # precondition: it reached a job
    assert "total number of cores" not in out
    assert json.loads((tmp_path / "r" / "smoke" / "logs" / "plan.json").read_text())["cores"] == 3


def test_only_figures_plans_those_figures_alone(tmp_path):
    smoke = REPO / "experiments" / "smoke.yaml"
    runs = load_grid(smoke).runs
    assert len({r.figure for r in runs}) > 1 and "on_policy" in {r.figure for r in runs}  # precondition
    jobs = planned(snakemake(tmp_path, "-n", "--configfile", str(smoke), "--config",
                             "only_figures=on_policy"))
    assert arm_jobs(jobs) == Counter((r.figure, r.arm) for r in runs if r.figure == "on_policy")
    out = snakemake(tmp_path, "-n", "--configfile", str(smoke), "--config", "only_figures=nope", check=False)
    assert "invalid grid: --config only_figures: nope is not a figure of this grid" in out


def test_a_grid_without_figures_says_how_to_give_one(tmp_path):
    # A bare `snakemake` runs the paper's grid (tests/test_readme_snippets.py); a grid file given with
    # --configfile replaces it whole, so one without figures is no grid.
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\n")
    out = snakemake(tmp_path, "-n", "--configfile", str(empty), check=False)
    assert "no grid given: run with --configfile experiments/paper.yaml" in out


# -------------------------------------------------------------------------- reruns, against a done grid


@pytest.fixture(scope="module")
def done_workspace(tmp_path_factory):
    """A copy of the workflow and of smoke.yaml where every job's outputs exist and are recorded as done
    with their params (create the outputs a dry run lists, then `--touch --forceall` records metadata)."""
    wd = tmp_path_factory.mktemp("wf")
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    shutil.copytree(REPO / "workflow", wd / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    (wd / "experiments").mkdir()
    shutil.copy(REPO / "experiments" / "presets.yaml", wd / "experiments" / "presets.yaml")
    grid = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    (wd / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    args = ("--configfile", str(wd / "grid.yaml"))
    for job in planned(snakemake(wd, "-n", *args, snakefile=wd / "Snakefile")):
        for out in job["output"]:
            (wd / out).parent.mkdir(parents=True, exist_ok=True)
            (wd / out).touch()
    (wd / "results" / "mlflow.db").touch()  # the store the mirror records point to (not an output)
    snakemake(wd, "--touch", "--forceall", *args, snakefile=wd / "Snakefile")
    out = snakemake(wd, "-n", *args, snakefile=wd / "Snakefile")
    assert "Nothing to be done" in out, out
    return wd, grid


def dry_run_with(done_workspace, edit):
    wd, grid = done_workspace
    changed = yaml.safe_load(yaml.safe_dump(grid))
    edit(changed)
    (wd / "changed.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    return planned(snakemake(wd, "-n", "--configfile", str(wd / "changed.yaml"), snakefile=wd / "Snakefile"))


def test_adding_an_arm_plans_only_its_jobs(done_workspace):
    def add_arm(g):
        g["figures"]["on_policy"]["arms"]["minirl_no_is"] = {
            "label": "MiniRL - train-infer-IS", "config": {"loss": {"objective": "minirl_no_is"}}}

    jobs = dry_run_with(done_workspace, add_arm)
    assert arm_jobs(jobs) == {("on_policy", "minirl_no_is"): 1}
    assert Counter(j["rule"] for j in jobs) == Counter(["rl_run", "mlflow", *DOWNSTREAM])


def test_changing_one_arms_config_reruns_that_arm_only(done_workspace):
    def edit(g):
        g["figures"]["off_policy_n2"]["arms"]["minirl_r2"]["config"]["loss"] = {"is_cap": 2.0}

    jobs = dry_run_with(done_workspace, edit)
    assert arm_jobs(jobs) == {("off_policy_n2", "minirl_r2"): 1}
    assert Counter(j["rule"] for j in jobs) == Counter(["rl_run", "mlflow", *DOWNSTREAM])
    rl = next(j for j in jobs if j["rule"] == "rl_run")
    assert "Params have changed" in rl["reason"]


def test_an_rl_knob_in_the_grid_base_does_not_rebuild_the_cold_starts(done_workspace):
    def edit(g):
        g["base"]["loss"]["eps_high"] = 0.3

    jobs = dry_run_with(done_workspace, edit)
    assert len(arm_jobs(jobs)) == 6 and len(arm_jobs(jobs, ("rl_run",))) == 5   # one run is shared
    assert not {"pretrain", "sft", "coldstart_eval"} & {j["rule"] for j in jobs}


def test_a_new_seed_plans_one_run_per_arm(done_workspace):
    jobs = dry_run_with(done_workspace, lambda g: g.update(seeds=[0, 1]))
    seeds = Counter(j["wildcards"]["seed"] for j in jobs if j["rule"] in ("rl_run", "rl_shared"))
    assert seeds == {"1": 6}


# ------------------------------------------------------------------------------------------ profiles


def test_profiles():
    local = yaml.safe_load((REPO / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert local["cores"] == 2 and local["keep-going"] and local["rerun-incomplete"]
    assert local["show-failed-logs"]
    # quiet: the arms' and the grid's progress lines, not 2,000-character commands (those go to commands.log)
    assert not local["printshellcmds"] and set(local["quiet"]) == {"rules", "progress"}
    slurm_text = (REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text()
    slurm = yaml.safe_load(slurm_text)
    assert slurm["executor"] == "slurm" and "slurm_partition" in slurm["default-resources"]
    assert "pip install snakemake-executor-plugin-slurm" in slurm_text
    assert "rl_run" in slurm["set-resources"]


def test_a_deleted_run_or_mlflow_record_is_rebuilt(done_workspace):
    wd, _ = done_workspace
    args = ("-n", "--configfile", str(wd / "grid.yaml"))
    run_done = wd / "results" / "smoke" / "runs" / "on_policy" / "minirl" / "seed0" / "DONE"
    record = wd / "results" / "smoke" / "runs" / "off_policy_n2" / "minirl_r3" / "seed0" / "mlflow_run.json"
    # on_policy/minirl is also precision/minirl-precision=fp8 (shared): its link is remade too.
    for path, rules in ((run_done, ["rl_run", "rl_shared", "mlflow", *DOWNSTREAM - {"grid_file"}]),
                        (record, ["mlflow", *DOWNSTREAM - {"grid_file"}])):
        path.rename(path.with_suffix(".bak"))
        try:
            jobs = planned(snakemake(wd, *args, snakefile=wd / "Snakefile"))
        finally:
            path.with_suffix(".bak").rename(path)
        assert Counter(j["rule"] for j in jobs) == Counter(rules), path


def test_a_deleted_mlflow_store_re_mirrors_every_run(done_workspace):
    """Every grid of the results folder lost its MLflow runs: this grid's mirror re-runs, and so does each
    other grid's (rule remirror_grid, which also remakes its report), before the index."""
    wd, _ = done_workspace
    db, parent = wd / "results" / "mlflow.db", wd / "results" / "smoke" / "mlflow_parent.json"
    other = wd / "results" / "other"  # a grid run earlier into the same results folder
    (other / "runs" / "fig" / "arm" / "seed0").mkdir(parents=True)
    for name in ("runs/fig/arm/seed0/DONE", "runs/fig/arm/seed0/summary.json", "mlflow_parent.json"):
        (other / name).write_text("{}")
    db.unlink()
    try:
        out = snakemake(wd, "-n", "--configfile", str(wd / "grid.yaml"), snakefile=wd / "Snakefile")
    finally:
        db.touch()
        for p in (parent, other / "mlflow_parent.json"):
            if p.with_name("mlflow_parent.json.stale").exists():
                p.with_name("mlflow_parent.json.stale").rename(p)
        shutil.rmtree(other)
    assert "mlflow.db is gone" in out
    jobs = planned(out)
    rules = ["mlflow", "remirror_grid", *DOWNSTREAM - {"grid_file"}]
    assert Counter(j["rule"] for j in jobs) == Counter(rules)
    assert "Missing output files" in next(j for j in jobs if j["rule"] == "mlflow")["reason"]
    assert next(j for j in jobs if j["rule"] == "remirror_grid")["wildcards"] == {"other": "other"}


# ------------------------------------------------------------------ issue #27: late, unclear, logs


def smoke_variant(tmp_path, old, new):
    text = (REPO / "experiments" / "smoke.yaml").read_text()
    assert old in text
    path = tmp_path / "grid.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_snakemake_reads_1e_3_as_rl_core_grid_does(tmp_path):
    """`train.lr: 1e-3` passed rl_core.orchestration.grid and was refused by Snakemake (YAML 1.1: the string
    '1e-3')."""
    grid = smoke_variant(tmp_path, "train: {precision: fp32}", "train: {precision: fp32, lr: 1e-3}")
    assert load_grid(grid).runs[0].config.train.lr == 1e-3
    out = snakemake(tmp_path, "-n", "--configfile", str(grid), "--config", f"results={tmp_path / 'r'}")
    assert "rl_run" in out


def test_an_arm_this_machine_cannot_run_is_refused_when_the_grid_loads(tmp_path):
    """train.device: cuda on a machine without a GPU passed -n, built pretraining and SFT, then every arm
    failed; jobs run here (the local executor), so the grid is refused before any job."""
    from rl_core.orchestration.capabilities import probe

    if probe().cuda_gpu:
        pytest.skip("this machine has a GPU")
    grid = smoke_variant(tmp_path, "train: {precision: fp32}", "train: {precision: fp32, device: cuda}")
    out = snakemake(tmp_path, "-n", "--configfile", str(grid), "--config", f"results={tmp_path / 'r'}",
                    check=False)
    assert "jobs run on this machine (local executor), which cannot run 5 arm(s): figure 'on_policy', " \
           "arm 'minirl': train.device='cuda' needs capability 'cuda'" in out
    assert "rule pretrain" not in out


def test_the_capability_check_job_names_each_arm_its_node_cannot_run(tmp_path, capsys):
    """The non-local executor's first job (rule check_capabilities), on the node kind that runs the arms."""
    import json

    from rl_core.orchestration.capabilities import main, probe

    cuda = {"arm": "f/a", "config": {"train": {"device": "cuda"}}}
    cpu = {"arm": "f/b", "config": {"train": {"device": "cpu"}}}
    assert main(["--check", json.dumps([cpu]), "--out", str(tmp_path / "cpu.ok")]) == 0
    assert (tmp_path / "cpu.ok").exists()
    if not probe().cuda_gpu:
        assert main(["--check", json.dumps([cpu, cuda]), "--out", str(tmp_path / "gpu.ok")]) == 2
        assert "error: this node cannot run f/a: train.device='cuda'" in capsys.readouterr().err
        assert not (tmp_path / "gpu.ok").exists()


def test_a_grid_estimated_over_the_bound_is_refused_unless_confirmed(tmp_path):
    """--config preset=full on this CPU started a 20,000-step pretraining (estimated 1,096 h) without a
    word."""
    out = snakemake(tmp_path, "--configfile", str(REPO / "experiments" / "smoke.yaml"), "--config",
                    "preset=full", f"results={tmp_path / 'r'}", check=False)
    assert re.search(r"grid 'smoke' \(preset full\) is estimated at [\d,]+ h on this machine \(2 cores", out)
    assert "--config confirm_long=true" in out and not (tmp_path / "r").exists()


def test_each_job_log_keeps_the_history_of_every_process():
    """Snakemake empties a job's `log:` before the job runs, so `tee -a {log}` kept only the last process:
    every rule that promises a history appends to a file that is not Snakemake's log."""
    rules = REPO / "workflow" / "rules"
    mirror = (rules / "tracking.smk").read_text().split("rule mlflow:")[1].split("\nrule ")[0]
    texts = [(n, (rules / n).read_text()) for n in ("rl.smk", "coldstart.smk")]
    for name, text in [*texts, ("rule mlflow", "rule mlflow:" + mirror)]:
        shells = re.findall(r"shell:\n((?:\s+(?:#.*|\".*\")\n)+)", text)
        logs = re.findall(r"log:\n\s+f\"(.*)\"", text)
        assert shells and all("tee -a {params.history:q}" in s for s in shells), name
        assert logs and all(p.endswith(".last.log") for p in logs), name


def test_make_reproduce_stops_when_the_validator_refuses(tmp_path):
    """`make reproduce` piped the validator into `tail`, so Snakemake started on a refused grid."""
    out = subprocess.run(["make", "-n", "reproduce", "GRID=nope.yaml"], cwd=REPO, capture_output=True,
                         text=True).stdout
    assert "set -o pipefail; " in out and "| tail -n 1" in out
    text = (REPO / "Makefile").read_text()
    assert "SHELL := /bin/bash" in text and "\nunlock:" in text


def test_make_replicate_reads_the_grid_name_before_a_comment(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: smoke  # the CI grid\n")
    out = subprocess.run(["make", "-s", "replicate", f"GRID={grid}", "STAMP="], cwd=REPO, capture_output=True,
                         text=True)
    assert "no results/smoke/report/findings.csv" in out.stdout + out.stderr
    out = subprocess.run(["make", "-s", "replicate", f"GRID={tmp_path / 'none.yaml'}", "STAMP="], cwd=REPO,
                         capture_output=True, text=True)
    assert f"GRID={tmp_path / 'none.yaml'}: no such grid file" in out.stdout + out.stderr
