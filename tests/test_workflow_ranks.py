"""Arms of several ranks from the workflow (train.world_size): the rule launches them under torchrun with
W x train.threads cores (and W GPUs for a GPU arm), the rows record the world size they ran at, and an arm
interrupted at one world size resumes at another from its checkpoint.

The end-to-end case runs a tiny grid (the smoke preset: pretrain, SFT, its eval, one arm) through real
Snakemake on gloo ranks on this CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rl_core import config as C
from rl_core.orchestration import cost
from rl_core.orchestration.grid import load_grid

REPO = Path(__file__).resolve().parents[1]


def grid(world: int) -> dict:
    return {"name": "ranks", "description": "an arm of train.world_size ranks", "preset": "smoke",
            "seeds": [0],
            "base": {"cold_start": "chain", "rollout": {"precision": "bf16"}},
            "figures": {"ranks": {"title": "ranks", "arms": {
                "minirl": {"label": "MiniRL", "config": {"train": {"world_size": world}}}}}}}


def write_grid(path: Path, world: int) -> Path:
    path.write_text(yaml.safe_dump(grid(world)))
    return path


def snakemake(wd: Path, grid_file: Path, *args, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
           "--cores", "2", "--configfile", str(grid_file), "--printshellcmds", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=wd, env={**os.environ, **(env or {})},
                          timeout=1200)


RUN = "results/ranks/runs/ranks/minirl/seed0"


def test_a_world_size_the_config_cannot_split_is_refused_before_any_work():
    with pytest.raises(C.ConfigError, match="train.batch_prompts: 3 does not split over the 2 data-parallel"):
        C.resolve({"train": {"world_size": 2, "batch_prompts": 3}})
    with pytest.raises(C.ConfigError, match="train.compile: true runs in one process"):
        C.resolve({"train": {"world_size": 2, "compile": True}})
    with pytest.raises(C.ConfigError, match="train.world_size: 0 is out of range"):
        C.resolve({"train": {"world_size": 0}})


def test_the_resume_identity_leaves_out_the_world_size_only():
    one, two = C.resolve(), C.resolve({"train": {"world_size": 2}})
    assert C.resume_hash(one) == C.resume_hash(two) and C.config_hash(one) != C.config_hash(two)
    assert C.resume_hash(one) != C.resume_hash(C.resolve({"train": {"lr": 2e-3}}))


def test_a_trainer_started_with_another_number_of_ranks_refuses(monkeypatch):
    from rl_core.training import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(C.ConfigError, match=r"train.world_size: 2, but this process is one of 1 ranks .*"
                                            r"--nproc-per-node 2 --standalone"):
        D.from_env(C.resolve({"train": {"world_size": 2, "device": "cpu"}}))


def test_the_rule_launches_w_ranks_under_torchrun_with_w_times_the_threads(tmp_path):
    """A dry run: the W = 2 arm's command is torchrun with 2 ranks of train.threads each, and the job takes
    2 cores (threads) in one task on one node; a W = 1 arm is one plain process."""
    for world in (1, 2):
        out = snakemake(tmp_path, write_grid(tmp_path / f"g{world}.yaml", world), "-n", f"{RUN}/DONE")
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout + out.stderr
        job = text[text.index("rule rl_run:"):]
        launch = "-m torch.distributed.run --nproc-per-node 2 --standalone -m rl_core.train"
        assert (launch in job) == (world == 2), job
        assert "OMP_NUM_THREADS=1 " in job
        assert ("threads: 2" in job) == (world == 2)
        resources = next(line for line in job.splitlines() if line.strip().startswith("resources:"))
        assert all(r in resources for r in ("gpu=0", "nodes=1", "tasks=1", "tasks_per_gpu=0"))


def test_the_estimate_gives_a_w_rank_arm_w_cores():
    """The cost model: W ranks split the updates, and the arm holds W cores for its wall (module
    docstring of rl_core.orchestration.cost), so two W = 2 arms on 2 cores run one after the other."""
    c = cost.load()
    g1 = load_grid(write_grid(Path(os.environ.get("TMPDIR", "/tmp")) / "est1.yaml", 1),
                   presets=REPO / "experiments" / "presets.yaml")
    g2 = load_grid(write_grid(Path(os.environ.get("TMPDIR", "/tmp")) / "est2.yaml", 2),
                   presets=REPO / "experiments" / "presets.yaml")
    (_, a1), = cost.grid_estimate(g1, 2, c)["arms"]
    (_, a2), = cost.grid_estimate(g2, 2, c)["arms"]
    assert a2["world_size"] == 2 and a2["core_s"] == 2 * a2["total_s"]
    assert a2["rl_s"] < a1["rl_s"]  # the updates are split; the rollout is not
    assert cost._schedule([10.0, 10.0], 2, widths=[2, 2]) == [20.0, 20.0]
    assert cost._schedule([10.0, 10.0], 2) == [10.0, 10.0]


@pytest.mark.slow
def test_the_workflow_runs_a_two_rank_arm_and_resumes_it_at_one_rank(tmp_path):
    """train.world_size 2 through Snakemake on gloo: killed after step 6 (checkpoint at 4), the same run at
    world_size 1 resumes from step 4; the rows of steps 1-4 say 2 ranks, those of 5-8 say 1."""
    t0 = time.time()
    first = snakemake(tmp_path, write_grid(tmp_path / "g2.yaml", 2), f"{RUN}/DONE",
                      env={"RLCORE_KILL_AT_STEP": "6"})
    t1 = time.time()
    assert first.returncode != 0, "the kill at step 6 did not happen"
    assert "--nproc-per-node 2 --standalone" in first.stdout + first.stderr
    run = tmp_path / RUN
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["perf/world_size"] for r in rows if "minibatch" in r} == {2}
    assert max(r["step"] for r in rows if "minibatch" in r) == 6
    second = snakemake(tmp_path, write_grid(tmp_path / "g1.yaml", 1), f"{RUN}/DONE")
    t2 = time.time()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "minibatch" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["perf/world_size"] for r in train] == [2] * 4 + [1] * 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 1
    assert summary["world_sizes"] == [1, 2]
    assert json.loads((run / "config.json").read_text())["train"]["world_size"] == 1
    print(f"workflow, 2 gloo ranks killed at step 6: {t1 - t0:.0f} s (cold start included); "
          f"resumed at 1 rank: {t2 - t1:.0f} s; rows' world sizes {[r['perf/world_size'] for r in train]}")
