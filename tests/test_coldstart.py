"""Base pretraining and SFT cold starts: data, loss masking, checkpoints, reproducibility, the CLI."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from rl_core import coldstart as CS
from rl_core import config as C
from rl_core.policy.model import load_pretrained
from rl_core.tasks import CHARS, MARKER, make_task

torch.set_num_threads(1)

TINY = {
    "model": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
    "task": {"n_train": 64, "n_bench": 16},
    "pipeline": {"pretrain_steps": 3, "sft_steps": 2, "batch_size": 4},
    "eval": {"k": 2, "n_problems": 8},
    "rollout": {"max_new_tokens": 12},
}
CFG_JSON = json.dumps(TINY)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    assert CS.main(["pretrain", "--out", str(out), "--config-json", CFG_JSON]) == 0
    return out


def test_pretrain_documents_are_task_language_without_answers():
    task = make_task(C.from_dict(TINY).task)
    rng = random.Random(0)
    docs = [CS.pretrain_document(task, rng) for _ in range(300)]
    assert all(set(d) <= set(CHARS) and MARKER not in d and len(d) >= CS.DOC_CHARS for d in docs)
    kinds = {"qa": 0, "prompt+facts": 0, "facts": 0}
    for d in docs:
        items = d.split(";")
        kind = "qa" if items[-1].startswith("Q:") else "prompt+facts" if d.startswith("Q:") else "facts"
        kinds[kind] += 1
        if kind == "prompt+facts":
            items[0] = items[0].split("=", 1)[1]  # drop the unrelated prompt
        for fact in items:
            lhs, rhs = fact.removeprefix("Q:").split("=")
            assert eval(lhs) == int(rhs)  # noqa: S307 (digits and + - * only)
    assert min(kinds.values()) > 30, kinds


def test_sft_batch_targets_are_exactly_the_response_tokens():
    data = [([5, 6, 7], [8, 9, 1]), ([5, 6], [8, 1])]
    ids, mask, loss_mask = next(CS.sft_batches(data, seed=0, batch_size=2, pad_id=0))
    for row in range(2):
        prompt, response = data[0] if ids[row, 2] == 7 else data[1]
        targets = ids[row, 1:][loss_mask[row]].tolist()
        assert targets == response
        assert mask[row].sum() == len(prompt) + len(response)


def test_lr_schedule():
    assert CS.lr_at(0, 100, 1.0) == pytest.approx(0.2)  # warm-up over 5 steps
    assert CS.lr_at(5, 100, 1.0) == pytest.approx(1.0)
    assert CS.lr_at(99, 100, 1.0) == pytest.approx(CS.MIN_LR_FRAC, abs=1e-3)


def test_pretrain_and_sft_checkpoints_load_in_both_engines(base, tmp_path):
    from transformers import AutoTokenizer, Qwen3MoeForCausalLM

    log = json.loads((base / "train_log.json").read_text())
    assert log["steps"] == 3 and log["log"][-1]["step"] == 2
    out = tmp_path / "chain"
    assert CS.main(["sft", "--teacher", "chain", "--init", str(base), "--out", str(out),
                    "--config-json", CFG_JSON]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    ours = load_pretrained(out)
    hf = Qwen3MoeForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("Q:12+7*3=")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-4, atol=1e-5)
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_same_seed_gives_bitwise_identical_weights(base, tmp_path):
    again = tmp_path / "again"
    CS.main(["pretrain", "--out", str(again), "--config-json", CFG_JSON])
    assert (again / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    other = tmp_path / "other"
    CS.main(["pretrain", "--out", str(other), "--config-json", CFG_JSON, "pipeline.seed=1"])
    assert (other / "model.safetensors").read_bytes() != (base / "model.safetensors").read_bytes()
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        CS.main(["sft", "--teacher", "scratchpad", "--init", str(base), "--out", str(out),
                 "--config-json", CFG_JSON])
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_eval_cli_writes_the_benchmark(base, tmp_path):
    out = tmp_path / "eval" / "base.json"
    assert CS.main(["eval", "--ckpt", str(base), "--out", str(out), "--config-json", CFG_JSON]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 16 and 0.0 <= res["score"] <= 1.0 and 1.0 <= res["response_length"] <= 12.0
    again = tmp_path / "again.json"
    CS.main(["eval", "--ckpt", str(base), "--out", str(again), "--config-json", CFG_JSON])
    assert json.loads(again.read_text())["score"] == res["score"]


def test_cli_errors_name_the_problem(base, tmp_path, capsys):
    assert CS.main(["pretrain", "--out", str(tmp_path / "x"), "--config-json", CFG_JSON, "task.nope=1"]) == 2
    assert "task.nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        CS.main(["sft", "--teacher", "oracle", "--init", str(base), "--out", str(tmp_path / "y")])


@pytest.mark.slow
def test_default_sizing_gives_three_distinct_cold_starts(tmp_path):
    """The sizing claim (about 2.5 min on one core): base ~0, cold starts above 0 and below the ceiling,
    the terse chain the shortest. The model is the proposed mini default."""
    cfg = json.dumps({"model": {"hidden_size": 64, "head_dim": 16, "moe_intermediate_size": 64},
                      "rollout": {"max_new_tokens": 64}})
    base = tmp_path / "base"
    CS.main(["pretrain", "--out", str(base), "--config-json", cfg])
    results = {}
    for name in ("base", "terse", "chain", "scratchpad"):
        if name != "base":
            CS.main(["sft", "--teacher", name, "--init", str(base), "--out", str(tmp_path / name),
                     "--config-json", cfg])
        CS.main(["eval", "--ckpt", str(tmp_path / name), "--out", str(tmp_path / f"{name}.json"),
                 "--config-json", cfg])
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["base"]["score"] < 0.05
    assert all(0.1 < results[n]["score"] < 0.9 for n in ("terse", "chain", "scratchpad")), results
    lengths = [results[n]["response_length"] for n in ("terse", "chain", "scratchpad")]
    assert 10 < lengths[0] < 0.75 * min(lengths[1:]), lengths
