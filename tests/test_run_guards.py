"""What the trainer refuses before any work, and what it survives: model.* that the init checkpoint does
not have, a second trainer on the same run directory, a finished run of another config, a corrupt
checkpoint. No training here except where a checkpoint is needed (a one-step run of a tiny cold start)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_core import config as C
from rl_core.policy.model import hf_config
from rl_core.train import check_init, run

REPO = Path(__file__).resolve().parents[1]


def fake_init(tmp_path, model=None, edit=None):
    """A checkpoint directory holding only config.json (check_init reads nothing else)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    hf = hf_config(model or C.ModelConfig(), vocab_size=23, eos_token_id=1, pad_token_id=0)
    if edit:
        edit(hf)
    (ckpt / "config.json").write_text(json.dumps(hf))
    return ckpt


def test_model_fields_equal_to_the_checkpoint_pass(tmp_path):
    check_init(C.resolve({"init": str(fake_init(tmp_path))}))


def test_a_model_field_the_checkpoint_does_not_have_is_refused_naming_key_values_and_path(tmp_path):
    ckpt = fake_init(tmp_path)
    cfg = C.resolve({"init": str(ckpt), "model": {"num_experts": 16}})
    with pytest.raises(C.ConfigError) as e:
        check_init(cfg)
    msg = str(e.value)
    assert "model.num_experts" in msg and "16" in msg and "8" in msg and str(ckpt / "config.json") in msg


def test_transformers_5_spellings_are_read(tmp_path):
    def respell(hf):
        hf["num_local_experts"] = hf.pop("num_experts")
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": hf.pop("rope_theta")}
    ckpt = fake_init(tmp_path, edit=respell)
    check_init(C.resolve({"init": str(ckpt)}))
    with pytest.raises(C.ConfigError, match=r"model\.rope_theta: .* 500000\.0 .* 10000\.0"):
        check_init(C.resolve({"init": str(ckpt), "model": {"rope_theta": 5e5}}))


def test_init_std_is_compared_under_its_hf_name(tmp_path):
    ckpt = fake_init(tmp_path)
    with pytest.raises(C.ConfigError, match=r"model\.init_std: .*0\.05.*0\.02"):
        check_init(C.resolve({"init": str(ckpt), "model": {"init_std": 0.05}}))


def test_run_refuses_a_model_mismatch_before_touching_the_run_directory(tmp_path):
    cfg = C.resolve({"init": str(fake_init(tmp_path)), "model": {"hidden_size": 64}})
    with pytest.raises(C.ConfigError, match=r"model\.hidden_size"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_grid_run_with_its_own_init_records_no_cold_start():
    from rl_core.orchestration import grid as G

    data = {"name": "t", "preset": "smoke", "figures": {"f": {"title": "F", "arms": {
        "own": {"label": "own", "config": {"init": "/ckpt/mine"}}, "cs": {"label": "cs"}}}}}
    runs = {r.arm: r for r in G.grid_from_dict(data).runs}
    assert runs["own"].meta["cold_start"] == G.OWN_INIT and runs["cs"].meta["cold_start"] == "chain"


def test_cli_mismatch_is_one_line_exit_2(tmp_path):
    ckpt = fake_init(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rl_core.train", "--out", str(tmp_path / "r"),
                           f"init={ckpt}", "model.num_hidden_layers=2"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "model.num_hidden_layers" in proc.stderr


# ------------------------------------------------------------------ run directories and checkpoints


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A tiny cold start (the one of tests/test_train.py)."""
    from test_train import TINY
    from tiny import build_cold_start

    return build_cold_start(tmp_path_factory.mktemp("cold"), TINY)


def tiny_cfg(cold, *overrides):
    from test_train import TINY

    return C.resolve(TINY, {"init": str(cold)}, overrides=["train.steps=6", *overrides])


def steps_and_values(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_each_checkpoint_keeps_the_one_before(cold, tmp_path):
    import torch

    run(tiny_cfg(cold), tmp_path / "r")
    ckpt = tmp_path / "r" / "ckpt"
    steps = [torch.load(ckpt / n, weights_only=False)["step"] for n in ("state.pt", "state.prev.pt")]
    assert steps == [6, 4]


def test_a_truncated_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(cold, tmp_path, capsys):
    cfg = tiny_cfg(cold)
    run(cfg, tmp_path / "clean")
    run(cfg, tmp_path / "r")
    state = tmp_path / "r" / "ckpt" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy cut short
    (tmp_path / "r" / "DONE").unlink()
    capsys.readouterr()
    assert run(cfg, tmp_path / "r")["status"] == "completed"
    err = capsys.readouterr().err
    assert f"checkpoint {state}: cannot be read" in err and "resuming from" in err and "(step 4)" in err
    assert (state.parent / "state.pt.corrupt").exists()
    assert steps_and_values(tmp_path / "r") == steps_and_values(tmp_path / "clean")  # steps 5-6 redone


def test_with_no_usable_checkpoint_the_run_restarts_from_scratch_and_says_so(cold, tmp_path, capsys):
    cfg = tiny_cfg(cold)
    run(cfg, tmp_path / "r")
    for name in ("state.pt", "state.prev.pt"):
        (tmp_path / "r" / "ckpt" / name).write_bytes(b"not a checkpoint")
    (tmp_path / "r" / "DONE").unlink()
    capsys.readouterr()
    run(cfg, tmp_path / "r")
    err = capsys.readouterr().err
    assert "no usable checkpoint; restarting from scratch" in err
    assert sorted(p.name for p in (tmp_path / "r" / "ckpt").iterdir()) == [
        "state.prev.pt", "state.prev.pt.corrupt", "state.pt", "state.pt.corrupt"]
    assert [r["step"] for r in steps_and_values(tmp_path / "r") if "minibatch" in r] == list(range(1, 7))


def test_a_second_trainer_on_the_same_directory_refuses_at_once(cold, tmp_path, capsys):
    from rl_core.rundir import hold_lock
    from rl_core.train import main

    out = tmp_path / "r"
    with hold_lock(out):  # the first trainer (flock conflicts between two open files, in one process too)
        assert main(["--out", str(out), "--config-json", C.to_json(tiny_cfg(cold))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and f"pid {os.getpid()}" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written


def test_a_finished_run_of_another_config_is_moved_aside_not_wiped(cold, tmp_path, capsys):
    out = tmp_path / "r"
    run(tiny_cfg(cold), out)
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    run(tiny_cfg(cold, "loss.eps_high=0.3"), out)
    (aside,) = tmp_path.glob("r.replaced-*")
    assert f"{out}: holds a finished run of another config; moved it to {aside}" in capsys.readouterr().err
    assert (aside / "DONE").exists() and (aside / "metrics.jsonl").read_text() == before
    assert json.loads((aside / "config.json").read_text())["loss"]["eps_high"] == 0.27
    assert json.loads((out / "config.json").read_text())["loss"]["eps_high"] == 0.3


def test_a_truncated_init_checkpoint_is_named_before_any_work(cold, tmp_path, capsys):
    import shutil

    from rl_core.train import main

    broken = tmp_path / "broken"
    shutil.copytree(cold, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["--out", str(tmp_path / "r"), "--config-json", C.to_json(tiny_cfg(broken))]) == 2
    assert f"error: init: {weights} cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, named", [
    (["--config-json", "{not json"], "--config-json: not valid JSON"),
    (["--config-json", "[1, 2]"], "--config-json: expected a JSON object"),
    (["--config", "/no/such.yaml"], "--config: no such file /no/such.yaml"),
    (["--meta-json", "{", "init=/x"], "--meta-json: not valid JSON"),
    (["init=/x"], "init: '/x' is not a Hugging Face checkpoint"),
    (["loss.objective=ppo"], "loss.objective: 'ppo' is not one of"),
    (["train.lr"], "override 'train.lr': expected KEY=VALUE"),
    # was recorded in config.json but not used: the trainer starts from init
    (["cold_start=terse", "init=/x"], "cold_start='terse': the trainer starts from init (/x)"),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args, named):
    from rl_core.train import main

    assert main(["--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


# ----------------------------------------------------------------- runs shared through links (rl_shared)


def share(source, run_dir):
    """workflow/scripts/share_run.py as the rl_shared rule runs it."""
    subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / "share_run.py"), str(source),
                    str(run_dir), json.dumps({"arm": "b"}), "runs/f/a/seed0"], check=True,
                   capture_output=True)


def test_an_arm_that_shared_a_run_and_is_trained_itself_never_writes_through_the_links(cold, tmp_path,
                                                                                          capsys):
    """Editing an arm that shared another's run (or the one it shared) trains it: the links are replaced by
    the trainer's own files before it writes, so the other run keeps its rows, unmixed (issue #27: both
    held one interleaved metrics.jsonl and a shared policy/)."""
    a, b = tmp_path / "runs" / "f" / "a" / "seed0", tmp_path / "runs" / "g" / "b" / "seed0"
    run(tiny_cfg(cold), a)
    share(a, b)
    assert (b / "metrics.jsonl").is_symlink() and (b / "policy").is_symlink() and (b / "DONE").exists()
    before = {n: (a / n).read_bytes() for n in ("metrics.jsonl", "summary.json", "config.json")}
    capsys.readouterr()
    run(tiny_cfg(cold, "train.lr=3e-3"), b)
    err = capsys.readouterr().err
    assert f"{b}: shared the run {a} through links; removed the links" in err
    assert not any(p.is_symlink() for p in b.iterdir()) and (b / "policy").is_dir()
    assert {n: (a / n).read_bytes() for n in before} == before  # the source run is untouched
    steps = [r["step"] for r in steps_and_values(b) if "minibatch" in r]
    assert steps == list(range(1, 7))  # its own rows only, once each
    assert json.loads((b / "config.json").read_text())["train"]["lr"] == 3e-3


def test_sharing_into_a_directory_that_holds_its_own_run_moves_that_run_aside(tmp_path):
    """An arm edited to equal another: its own trained files are set aside (not deleted, not mixed with
    links; before: metrics.jsonl and summary.json deleted, and `File exists: .../policy`)."""
    a, b = tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"
    for d, rows in ((a, "a"), (b, "b")):
        (d / "policy").mkdir(parents=True)
        (d / "policy" / "model.safetensors").write_text(rows)
        for name in ("metrics.jsonl", "summary.json", "config.json", "DONE"):
            (d / name).write_text(rows)
    share(a, b)
    (aside,) = (tmp_path / "b").glob("seed0.replaced-*")
    assert (aside / "metrics.jsonl").read_text() == "b" and (aside / "policy" / "model.safetensors").exists()
    assert (b / "metrics.jsonl").is_symlink() and (b / "metrics.jsonl").read_text() == "a"
    assert (b / "policy").is_symlink() and json.loads((b / "meta.json").read_text())["trained_by"]


def test_a_full_disk_is_named_and_leaves_no_partial_row_or_temporary_file(tmp_path, monkeypatch):
    """A full disk while a trainer wrote metrics.jsonl: a traceback and a torn last line. Now DiskFull
    names the file, the append is undone to the last complete row, and temporary files are removed."""
    import errno

    from rl_core import rundir

    files = rundir.RunFiles(tmp_path)
    files.append({"step": 1, "loss/value": 0.5})
    files.write_json("summary.json", {"status": "running"})
    before_rows, before_summary = files.metrics.read_bytes(), (tmp_path / "summary.json").read_text()
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills in the middle of the row
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.os, "write", half_then_full)
    with pytest.raises(rundir.DiskFull, match=r"metrics\.jsonl: no space left on the device"):
        files.append({"step": 2, "loss/value": 0.25})
    assert files.metrics.read_bytes() == before_rows and files.rows() == 1
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (self.write_bytes(b"{\"sta"), full()))
    with pytest.raises(rundir.DiskFull, match=r"summary\.json: no space left"):
        files.write_json("summary.json", {"status": "completed"})
    assert (tmp_path / "summary.json").read_text() == before_summary
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(rundir.torch, "save", lambda state, f: (Path(f).write_bytes(b"PK"), full()))
    with pytest.raises(rundir.DiskFull, match=r"state\.pt: no space left"):
        files.save_ckpt({"step": 2})
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
