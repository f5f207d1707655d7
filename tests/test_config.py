"""The typed config tree: errors name the key, serialisation round-trips."""

import json

import pytest

from rl_core import config as C


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_misspelt_key_names_the_key_and_the_allowed_ones(tmp_path):
    p = write(tmp_path, "loss:\n  is_cpa: 5\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert "loss.is_cpa" in msg and "is_cap" in msg and str(p) in msg


def test_string_where_number_belongs(tmp_path):
    p = write(tmp_path, "train:\n  lr: fast\n")
    with pytest.raises(C.ConfigError, match=r"train\.lr: expected float, got str 'fast'"):
        C.load(p)


def test_negative_batch_size(tmp_path):
    p = write(tmp_path, "train:\n  batch_prompts: -4\n")
    with pytest.raises(C.ConfigError, match=r"train\.batch_prompts: -4 is out of range \(must be >= 1\)"):
        C.load(p)


def test_choice_error_lists_allowed_values():
    with pytest.raises(C.ConfigError, match=r"replay\.mode: 'r4' is not one of \['none', 'r2', 'r3'\]"):
        C.resolve(overrides=["replay.mode=r4"])


def test_bool_is_not_an_int_and_int_is_not_a_bool():
    with pytest.raises(C.ConfigError, match="train.steps"):
        C.resolve({"train": {"steps": True}})
    with pytest.raises(C.ConfigError, match="replay.replay_prompt"):
        C.resolve({"replay": {"replay_prompt": 1}})


def test_section_given_a_scalar():
    with pytest.raises(C.ConfigError, match="loss: expected a mapping"):
        C.resolve({"loss": 3})


def test_cross_field_checks():
    with pytest.raises(C.ConfigError, match="train.steps: 10 is not a multiple of train.n_minibatches=4"):
        C.resolve({"train": {"steps": 10, "n_minibatches": 4}})
    with pytest.raises(C.ConfigError, match="model.num_experts_per_tok"):
        C.resolve({"model": {"num_experts": 2, "num_experts_per_tok": 3}})


def test_dotted_overrides_win_and_parse_yaml_scalars(tmp_path):
    p = write(tmp_path, "loss:\n  is_cap: 2\nreplay:\n  mode: r2\n")
    cfg = C.load(p, overrides=["loss.is_cap=5", "replay.replay_prompt=false"])
    assert cfg.loss.is_cap == 5.0 and isinstance(cfg.loss.is_cap, float)
    assert cfg.replay.mode == "r2" and cfg.replay.replay_prompt is False


def test_malformed_override():
    with pytest.raises(C.ConfigError, match="expected KEY=VALUE"):
        C.parse_overrides(["loss.is_cap"])


def test_layers_merge_in_order():
    cfg = C.resolve({"train": {"lr": 1e-2, "steps": 8}}, {"train": {"lr": 3e-3}})
    assert cfg.train.lr == 3e-3 and cfg.train.steps == 8


def test_json_and_flat_round_trip():
    cfg = C.resolve(overrides=["loss.objective=cispo", "train.n_minibatches=4", "train.steps=8"])
    assert C.from_json(C.to_json(cfg)) == cfg
    flat = C.flatten(cfg)
    assert flat["loss.objective"] == "cispo" and flat["train.n_minibatches"] == 4
    assert all(not isinstance(v, dict) for v in flat.values())
    assert C.from_flat(flat) == cfg
    assert json.loads(C.to_json(cfg))["train"]["steps"] == 8


def test_hash_changes_with_any_field():
    a = C.resolve()
    assert C.config_hash(a) == C.config_hash(C.resolve())
    assert C.config_hash(a) != C.config_hash(C.resolve(overrides=["loss.eps_high=0.28"]))


def test_every_field_is_documented():
    rows = C.describe()
    assert len(rows) > 40
    undocumented = [key for key, _, doc in rows if not doc]
    assert undocumented == []
