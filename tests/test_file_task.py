"""task.kind: file with any local Qwen3-MoE checkpoint as init: problems from JSONL/Parquet, the checkpoint's
BPE tokenizer and chat template, math-verify rewards, tied or untied embeddings, bf16 weights, end to end."""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from rl_core import config as C
from rl_core.policy.model import load_pretrained, save_pretrained
from rl_core.tasks import evaluate, make_task
from rl_core.tasks.math_file import math_reward

sys.path.insert(0, str(Path(__file__).parent))
from hf_checkpoint import DATA, MODEL, build_checkpoint  # noqa: E402

TASK = {"kind": "file", "train_file": str(DATA / "math_train.jsonl"),
        "bench_file": str(DATA / "math_bench.jsonl"),
        "prompt_template": "{prompt} Put your final answer within \\boxed{}.", "max_prompt_tokens": 64,
        "n_bench": 16}


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("hf") / "tied", tied=True)


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("hf") / "untied", tied=False, seed=1)


def file_cfg(init: Path, **over) -> C.RunConfig:
    return C.resolve({"init": str(init), "model": MODEL, "task": TASK, "eval": {"n_problems": 8}},
                     C.unflatten(over))


# ------------------------------------------------------------------------------------------ verifier


@pytest.mark.parametrize("response, answer, expected", [
    ("so the answer is \\boxed{5}.", "5", 1.0),
    ("The answer is 5", "5", 1.0),             # no box: the last expression
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),      # symbolic equality
    ("\\boxed{\\frac{10}{2}}", "5", 1.0),
    ("\\boxed{4}", "5", 0.0),
    ("no number here", "5", 0.0),
    ("", "5", 0.0),
    (None, "5", 0.0),                          # never raises
    ("\\boxed{\\frac{1}{", "5", 0.0),
])
def test_math_verify_reward(response, answer, expected):
    assert math_reward(response, answer) == expected


# ------------------------------------------------------------------------------------------ problems


def test_file_task_reads_jsonl_with_the_checkpoints_tokenizer_and_chat_template(tied):
    task = make_task(file_cfg(tied).task, str(tied))
    assert len(task.train_problems) == 48 and len(task.bench_problems) == 16
    p = task.train_problems[0]
    text = task.prompt_text(p)
    assert text.startswith("<|im_start|>user\nWhat is 2 + 1? Put your final answer within \\boxed{}.")
    assert text.endswith("<|im_start|>assistant\n")
    ids = task.encode_prompt(p)
    assert ids[0] == task.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert len(ids) < len(text) / 2  # BPE merges, not characters
    config = json.loads((tied / "config.json").read_text())
    assert (task.eos_id, task.pad_id) == (config["eos_token_id"], config["pad_token_id"])
    reply = task.encode("It is \\boxed{3}") + [task.eos_id, task.pad_id, task.pad_id]
    assert task.decode(reply) == "It is \\boxed{3}"
    assert task.reward(task.decode(reply), p) == 1.0


def test_file_task_reads_parquet_chats_and_nested_answers(tied, tmp_path):
    rows = [json.loads(line) for line in (DATA / "math_bench.jsonl").open()]
    frame = pd.DataFrame({"prompt": [[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": r["prompt"]}] for r in rows],
                          "reward_model": [{"ground_truth": r["answer"]} for r in rows]})  # verl's layout
    frame.to_parquet(tmp_path / "bench.parquet")
    cfg = file_cfg(tied, **{"task.bench_file": str(tmp_path / "bench.parquet"),
                            "task.answer_key": "reward_model.ground_truth", "task.n_train": 4})
    with pytest.raises(ValueError, match="no column 'reward_model.ground_truth'"):
        make_task(cfg.task, str(tied))  # the training JSONL has a flat 'answer'
    cfg = file_cfg(tied, **{"task.train_file": str(tmp_path / "bench.parquet"),
                            "task.bench_file": str(tmp_path / "bench.parquet"),
                            "task.answer_key": "reward_model.ground_truth"})
    task = make_task(cfg.task, str(tied))
    p = task.bench_problems[1]
    assert p.messages == (("system", "Be brief."), ("user", rows[1]["prompt"]))
    assert p.answer == rows[1]["answer"]
    assert task.prompt_text(p).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_file_task_limits_and_errors(tied, tmp_path, capsys):
    task = make_task(file_cfg(tied, **{"task.n_train": 5, "task.chat_template": False}).task, str(tied))
    assert len(task.train_problems) == 5 and task.prompt_text(task.train_problems[0]).startswith("What is")
    task = make_task(file_cfg(tied, **{"task.max_prompt_tokens": 10, "task.chat_template": False,
                                       "task.prompt_template": "{prompt}"}).task, str(tied))
    assert "dropped" in capsys.readouterr().err and 0 < len(task.bench_problems) < 16
    with pytest.raises(ValueError, match="no such file"):
        make_task(file_cfg(tied, **{"task.train_file": str(tmp_path / "nope.jsonl")}).task, str(tied))
    with pytest.raises(ValueError, match="needs init"):
        make_task(file_cfg(tied).task, "")
    with pytest.raises(C.ConfigError, match="task.bench_file"):
        C.resolve({"task": {"kind": "file", "train_file": "a.jsonl"}})
    with pytest.raises(C.ConfigError, match="task.train_file: 'a.csv'"):
        C.resolve({"task": {"kind": "file", "train_file": "a.csv", "bench_file": "b.jsonl"}})
    with pytest.raises(C.ConfigError, match="task.max_prompt_tokens"):
        C.resolve({"task": {**TASK, "max_prompt_tokens": 250}, "eval": {"n_problems": 8}})


# --------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_a_transformers_checkpoint_loads_with_its_embeddings_and_matches_transformers(which, request,
                                                                                      tmp_path):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(which)
    ours = load_pretrained(path)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == (which == "tied")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 40, 99, 3, 250, 11]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-5)
    # written back: tied stays tied (no lm_head tensor), and transformers reads it as before
    save_pretrained(ours, tmp_path / "again", path / "tokenizer.json")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-5)


def test_a_sharded_checkpoint_loads(untied, tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(untied, tmp_path / "sharded")
    state = load_file(str(tmp_path / "sharded" / "model.safetensors"))
    (tmp_path / "sharded" / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / "sharded" / shard))
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = load_pretrained(untied), load_pretrained(tmp_path / "sharded")
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)


# ---------------------------------------------------------------------------------------- end to end


def test_an_arm_on_the_file_task_runs_end_to_end(tied, tmp_path):
    """BPE tokenizer + chat template + math-verify rewards through the trainer; the exported policy loads
    in transformers with its tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_core.train import run

    cfg = file_cfg(tied, **{"rollout.max_new_tokens": 24, "rollout.group_size": 4,
                            "rollout.precision": "bf16",
                            "train.batch_prompts": 4, "train.steps": 2, "eval.every": 2, "eval.k": 1,
                            "eval.n_problems": 8})
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps_done"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and all(0.0 <= r["reward/mean"] <= 1.0 for r in steps)
    assert [r["step"] for r in rows if "eval/score" in r] == [0, 2]
    assert all(r["kl/train_infer_k3"] >= 0 for r in steps)
    policy = tmp_path / "run" / "policy"
    assert "chat_template" in json.loads((policy / "tokenizer_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 1?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=True)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_the_benchmark_scores_a_file_task(tied):
    from rl_core.rollout.embedded import EmbeddedRolloutEngine

    task = make_task(file_cfg(tied).task, str(tied))
    engine = EmbeddedRolloutEngine.from_model(load_pretrained(tied), "fp32")
    res = evaluate(engine, task, task.bench_problems[:4], 2, 1.0, 8, torch.Generator().manual_seed(0))
    assert res["n"] == 8 and 0.0 <= res["score"] <= 1.0 and res["score_level0"] == res["score"]


def test_a_grid_on_its_own_checkpoint_and_dataset_plans_no_cold_start(tmp_path):
    """Every arm brings its own init: no base model, no SFT, no cold-start eval; braces in task strings (the
    prompt template's {prompt} and \\boxed{}) pass through the rules' params untouched."""
    import subprocess

    import yaml

    grid = {"name": "mine", "preset": "smoke", "seeds": [0],
            "base": {"init": str(tmp_path / "ckpt"), "model": MODEL, "task": TASK, "eval": {"n_problems": 8}},
            "figures": {"math": {"title": "Math", "arms": {
                "minirl": {"label": "MiniRL"},
                "grpo": {"label": "GRPO", "config": {"loss": {"objective": "grpo"}}}}}}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    snakemake = Path(sys.executable).with_name("snakemake")
    out = subprocess.run([str(snakemake), "-n", "--nolock", "--configfile", str(tmp_path / "grid.yaml"),
                          "--config", f"results={tmp_path / 'results'}"], cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    stats = out.stdout.split("Job stats:")[1].strip().split("\n\n")[0].splitlines()[2:]  # job / count
    jobs = dict(line.split() for line in stats if not line.startswith("total"))
    assert jobs == {"grid_file": "1", "rl_run": "2", "mlflow": "1", "report": "1", "index": "1", "all": "1"}


@pytest.mark.parametrize(("line", "named"), [
    ('{"prompt": "What is 1 + 1?"}', "line 2: no column 'answer'"),
    ('{"prompt": "What is 1 + 1?", "answer": null}', "line 2: the answer ('answer') is missing (None)"),
    ('{"prompt": "What is 1 + 1?", "answer": ""}', "line 2: the answer ('answer') is empty ('')"),
    ('{"prompt": "What is 1 + 1?", "answer": "  "}', "line 2: the answer ('answer') is empty"),
    ('["What is 1 + 1?", "2"]', "line 2: a row is a JSON object"),
    ('{"prompt": "What is 1 + 1?", "answer": "2"', "line 2: not valid JSON"),
])
def test_a_bad_jsonl_row_is_refused_naming_file_and_line(tied, tmp_path, line, named):
    """A missing or null answer became the reference "nan" (and \\boxed{nan} scored 1.0), an empty one was
    accepted, a row that is a list was a 73-line TypeError."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 2 + 1?", "answer": "3"}\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        make_task(file_cfg(tied, **{"task.train_file": str(bad)}).task, str(tied))
    assert f"task: {bad} {named}" in str(e.value) and "\n" not in str(e.value)


def test_file_task_fields_under_the_arithmetic_task_are_refused():
    """task.kind left `arithmetic` with file-task fields trained arithmetic through the char tokenizer."""
    for key, value in (("train_file", "a.jsonl"), ("prompt_template", "{prompt}!"), ("chat_template", False)):
        with pytest.raises(C.ConfigError, match=rf"^task\.{key}: set .* only task\.kind=file reads it, and "
                                                r"task\.kind is 'arithmetic'"):
            C.resolve({"task": {key: value}})
