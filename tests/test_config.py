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


def test_megatron_parallel_sizes_apply_only_to_megatron_and_must_split_the_model():
    """train.megatron_tp / megatron_ep: another engine with a size other than 1 is refused (never silently
    ignored); a size that does not divide the heads, query groups, expert width or experts names the
    field and the sizes that would (the world size is checked under torchrun: test_distributed)."""
    with pytest.raises(C.ConfigError, match=r"train.megatron_tp: 2 applies only to train.engine=megatron "
                                            r"\(this run trains with 'torch'\); allowed here: 1"):
        C.resolve({"train": {"megatron_tp": 2}})
    with pytest.raises(C.ConfigError, match="train.megatron_ep: 2 applies only to train.engine=megatron"):
        C.resolve({"train": {"megatron_ep": 2}})
    mega = {"engine": "megatron"}
    with pytest.raises(C.ConfigError, match=r"train.megatron_tp: 3 does not divide "
                                            r"model.num_attention_heads=8; allowed: \[1, 2\]"):
        C.resolve({"model": {"num_attention_heads": 8, "num_key_value_heads": 2},
                   "train": {**mega, "megatron_tp": 3}})
    with pytest.raises(C.ConfigError, match=r"train.megatron_ep: 3 does not divide model.num_experts=8; "
                                            r"allowed: \[1, 2, 4, 8\]"):
        C.resolve({"model": {"num_experts": 8}, "train": {**mega, "megatron_ep": 3}})
    cfg = C.resolve({"model": {"num_attention_heads": 8, "num_key_value_heads": 2, "num_experts": 8},
                     "train": {**mega, "megatron_tp": 2, "megatron_ep": 4, "world_size": 8}})
    assert (cfg.train.megatron_tp, cfg.train.megatron_ep) == (2, 4)
    with pytest.raises(C.ConfigError, match=r"train.world_size: 1 is not a multiple of train.megatron_tp x "
                                            r"train.megatron_ep = 2 x 4"):
        C.resolve({"model": {"num_attention_heads": 8, "num_key_value_heads": 2, "num_experts": 8},
                   "train": {**mega, "megatron_tp": 2, "megatron_ep": 4}})


@pytest.mark.parametrize(("low", "high"), [("icepop_low", "icepop_high"), ("seq_mis_low", "seq_mis_high")])
def test_a_correction_band_must_not_be_empty(low, high):
    with pytest.raises(C.ConfigError, match=rf"loss\.{low}: 2\.0 is not below loss\.{high}=1\.5"):
        C.resolve({"loss": {low: 2.0, high: 1.5}})
    objective = low.rsplit("_", 1)[0]  # the objective that reads the band (another's knob is refused)
    assert getattr(C.resolve({"loss": {"objective": objective, low: 1.0, high: 1.5}}).loss, low) == 1.0


def test_dotted_overrides_win_and_parse_yaml_scalars(tmp_path):
    p = write(tmp_path, "loss:\n  is_cap: 2\nreplay:\n  mode: r2\n")
    cfg = C.load(p, overrides=["loss.is_cap=5", "replay.replay_prompt=false"])
    assert cfg.loss.is_cap == 5.0 and isinstance(cfg.loss.is_cap, float)
    assert cfg.replay.mode == "r2" and cfg.replay.replay_prompt is False


def test_malformed_override():
    with pytest.raises(C.ConfigError, match="expected KEY=VALUE"):
        C.parse_overrides(["loss.is_cap"])


def test_a_string_field_takes_the_command_line_text_as_written():
    # The README's own file-task template is not valid YAML unquoted ("{prompt} ..." opens a flow mapping),
    # and "*" is a YAML alias: a str field takes the text; a quoted YAML string is unquoted.
    readme = r"{prompt} Put your final answer within \boxed{}."
    cfg = C.resolve({"task": {"kind": "file", "train_file": "t.jsonl", "bench_file": "b.jsonl",
                              "max_prompt_tokens": 64}},
                    overrides=[f"task.prompt_template={readme}", "task.prompt_key='q'"])
    assert cfg.task.prompt_template == readme and cfg.task.prompt_key == "q"
    assert C.parse_overrides(["task.ops=*"]) == {"task": {"ops": "*"}}


def test_an_override_that_is_not_a_yaml_value_names_its_key():
    with pytest.raises(C.ConfigError, match=r"override loss\.is_cap: '\{a' is not a YAML value"):
        C.parse_overrides(["loss.is_cap={a"])


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


def test_eval_may_not_ask_for_more_problems_than_the_benchmark_has():
    with pytest.raises(C.ConfigError, match=r"eval\.n_problems: 300 exceeds task\.n_bench=256"):
        C.resolve({"eval": {"n_problems": 300}})
    assert C.resolve({"eval": {"n_problems": 256}}).eval.n_problems == 256


def test_longest_prompt_plus_response_must_fit_the_position_embeddings():
    bound = C.prompt_length_bound(C.TaskConfig())  # Q: + 2 digits + 3 x (op + 2 digits) + = -> 14
    assert bound == 14
    C.resolve({"rollout": {"max_new_tokens": 256 - 14}})
    with pytest.raises(C.ConfigError, match=r"rollout\.max_new_tokens: 243 \+ the longest prompt \(14 tokens"
                                            r".* = 257 exceeds model\.max_position_embeddings=256"):
        C.resolve({"rollout": {"max_new_tokens": 243}})


@pytest.mark.parametrize("task", [{}, {"max_operand": 9, "max_operands": 6},
                                  {"max_operand": 150, "max_value": 999, "ops": "+-"},
                                  {"max_operand": 5, "ops": "*", "max_value": 50}])
def test_prompt_length_bound_holds_for_drawn_prompts(task):
    from rl_core.tasks import make_task

    cfg = C.resolve({"task": {"n_train": 400, "n_bench": 40, **task}, "eval": {"n_problems": 40}}).task
    t = make_task(cfg)
    longest = max(len(t.encode_prompt(p)) for p in t.train_problems + t.bench_problems)
    assert longest <= C.prompt_length_bound(cfg)
    assert longest >= C.prompt_length_bound(cfg) - 3  # a bound, but not a loose one


def test_a_duplicate_key_in_a_config_file_names_the_line(tmp_path):
    path = tmp_path / "arm.yaml"
    path.write_text("loss:\n  is_cap: 2\n  is_cap: 3\n")
    with pytest.raises(C.ConfigError, match=r"arm\.yaml: not valid YAML: line 3: duplicate key 'is_cap' "
                                            r"\(first given on line 2\)"):
        C.load(path)
