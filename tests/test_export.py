"""Checkpoints as Hugging Face sees them: an arm's exported final policy loads with AutoTokenizer and
AutoModelForCausalLM, pads inside the vocabulary and generates in a batch; the special tokens are the
tokenizer's own."""

import json
import subprocess
import sys

import pytest
import torch
from tiny import build_cold_start

from rl_core import config as C
from rl_core.policy.export import special_tokens
from rl_core.tasks import build_tokenizer
from rl_core.train import run

transformers = pytest.importorskip("transformers")

TINY = {
    "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "task": {"min_operands": 2, "max_operands": 2, "max_operand": 3, "ops": "+", "n_train": 32, "n_bench": 8},
    "pipeline": {"pretrain_steps": 10, "sft_steps": 10, "batch_size": 16},
    "rollout": {"max_new_tokens": 12, "group_size": 2},
    "train": {"batch_prompts": 2, "steps": 2, "n_minibatches": 1},
    "eval": {"every": 2, "k": 1, "n_problems": 8},
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def arm_dir(tmp_path_factory):
    """One arm of two gradient steps from a minimal cold start; returns its run directory."""
    root = tmp_path_factory.mktemp("export")
    build_cold_start(root, TINY)
    summary = run(C.resolve(TINY, {"init": str(root / "sft")}), root / "run")
    assert summary["status"] == "completed"
    return root / "run"


def test_special_tokens_are_inside_the_vocabulary():
    tok = build_tokenizer()
    names = special_tokens(json.loads(tok.to_str()), {"pad_token_id": 0, "eos_token_id": 1})
    assert names == {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": None, "unk_token": "<unk>"}
    assert all(tok.token_to_id(t) < tok.get_vocab_size() for t in ("<pad>", "<eos>", "<unk>"))
    with pytest.raises(ValueError, match="eos_token_id 99"):
        special_tokens(json.loads(tok.to_str()), {"eos_token_id": 99})


def test_exported_arm_policy_generates_in_a_batch_with_padding(arm_dir):
    policy = arm_dir / "policy"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (policy / name).is_file(), name
    tok = transformers.AutoTokenizer.from_pretrained(policy)
    model = transformers.AutoModelForCausalLM.from_pretrained(policy)
    vocab = model.config.vocab_size
    assert len(tok) == vocab  # no token added on load (Qwen2Tokenizer's <|endoftext|> would be id 23)
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<pad>", "<eos>", "left")
    assert model.generation_config.pad_token_id == tok.pad_token_id < vocab
    assert model.generation_config.eos_token_id == tok.eos_token_id < vocab

    prompts = ["Q1+2=", "Q3+3+1=", "Q2="]  # three lengths: two rows are padded
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"].sum(1).tolist() == [5, 7, 3]
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=8)
    assert "max_length" not in json.loads((policy / "generation_config.json").read_text())
    assert out.shape[0] == 3 and out.shape[1] <= enc["input_ids"].shape[1] + 8
    assert int(out.max()) < vocab
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(texts) == 3 and all("<pad>" not in t for t in texts)

    # The exported weights are the arm's final ones: its last checkpoint holds the same policy.
    state = torch.load(arm_dir / "ckpt" / "state.pt", weights_only=False)["policy"]
    name = next(k for k in state if k.endswith("embed_tokens.weight"))
    hf = dict(model.named_parameters())
    assert torch.equal(hf[next(k for k in hf if k.endswith("embed_tokens.weight"))], state[name])


def test_generate_with_max_new_tokens_says_nothing(arm_dir):
    """A user's generate(max_new_tokens=...) on the exported policy, in a fresh process (transformers says
    it once per process): no warning that max_length is also set."""
    code = ("import sys, transformers; p = sys.argv[1]; tok = transformers.AutoTokenizer.from_pretrained(p); "
            "m = transformers.AutoModelForCausalLM.from_pretrained(p); "
            "m.generate(**tok(['Q1+2='], return_tensors='pt'), max_new_tokens=4)")
    proc = subprocess.run([sys.executable, "-c", code, str(arm_dir / "policy")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max_length" not in proc.stderr + proc.stdout, proc.stderr


def test_the_mirrored_child_holds_the_policy_as_a_model_mlflow_loads(arm_dir, tmp_path):
    """rl_core.orchestration.tracking logs RUN_DIR/policy as an MLflow model (transformers flavour): a user
    loads it with mlflow.transformers or mlflow.pyfunc from the run, offline, and it generates."""
    import mlflow

    from rl_core.orchestration import tracking as T

    T.mirror_grid(tmp_path / "results" / "g", "g", [arm_dir])
    record = json.loads((arm_dir / "mlflow_run.json").read_text())
    run = mlflow.MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert run.data.tags["model"].startswith("models:/"), run.data.tags["model"]
    assert run.info.status == "FINISHED"
    mlflow.set_tracking_uri(record["tracking_uri"])
    pipe = mlflow.transformers.load_model(run.data.tags["model"])
    assert pipe.tokenizer.pad_token == "<pad>"
    out = mlflow.pyfunc.load_model(run.data.tags["model"]).predict(["Q1+2="], params={"max_new_tokens": 4})
    assert len(out) == 1 and isinstance(out[0], str)
