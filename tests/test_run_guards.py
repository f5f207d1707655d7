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
from rl_core.model import hf_config
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
    from rl_core import grid as G

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
