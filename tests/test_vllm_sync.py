"""vLLM's in-place weight sync, the parts that run without vLLM or a GPU: the capability that chooses it,
the map from the trainer's tensors to vLLM's fused parameters, the check after every sync, the fall-back
to a restart from disk, and the worker extension's methods on a stand-in worker. The GPU path itself runs
in `make gpu-check` (vllm_bf16 arm)."""

import random

import pytest
import torch

from rl_core.config import ModelConfig
from rl_core.orchestration.capabilities import Environment, rollout_capabilities
from rl_core.policy.model import MoEPolicy, hf_config, to_hub_layout
from rl_core.rollout.vllm.engine import VLLMRolloutEngine, WeightSyncError, vllm_layout_sample
from rl_core.rollout.vllm.worker import WeightSync

CFG = hf_config(ModelConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8),
                vocab_size=20, eos_token_id=1, pad_token_id=0)


def test_only_the_gpu_build_syncs_in_place():
    gpu = Environment(vllm=True, vllm_build="gpu", triton=True, megatron=False, cuda_gpu=True)
    cpu = Environment(vllm=True, vllm_build="cpu", triton=True, megatron=False, cuda_gpu=False)
    assert "inplace_sync" in rollout_capabilities("vllm", gpu)
    assert "inplace_sync" not in rollout_capabilities("vllm", cpu)


def test_layout_sample_fuses_qkv_and_experts_the_way_vllm_holds_them():
    sd = MoEPolicy(CFG, seed=0).state_dict()
    out = vllm_layout_sample(sd, CFG, random.Random(0), n_layers=3)
    p = "model.layers.1."
    assert torch.equal(out[p + "self_attn.qkv_proj.weight"],
                       torch.cat([sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
                                  sd[p + "self_attn.v_proj.weight"]]))
    w13 = out[p + "mlp.experts.w13_weight"]
    assert w13.shape == (4, 2 * 8, 32)  # (E, 2I, d): [gate; up] per expert
    assert torch.equal(w13[:, :8], sd[p + "mlp.experts.gate_proj"])
    assert torch.equal(w13[:, 8:], sd[p + "mlp.experts.up_proj"])
    assert torch.equal(out[p + "mlp.experts.w2_weight"], sd[p + "mlp.experts.down_proj"])
    assert len(vllm_layout_sample(sd, CFG, random.Random(0), n_layers=2)) == 3 + 2 * 9


class FakeLLM:
    """Holds vLLM-named tensors (bf16 values, vocabulary padded to 64 rows as VocabParallelEmbedding does)."""

    def __init__(self, sd):
        full = vllm_layout_sample(sd, CFG, random.Random(0), n_layers=CFG["num_hidden_layers"])
        self.params = {k: v.to(torch.bfloat16).float() for k, v in full.items()}
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            self.params[k] = torch.cat([self.params[k], torch.zeros(64 - 20, 32)])
        self.calls = []

    def collective_rpc(self, method, args=()):
        self.calls.append(method)
        if method == "rl_weight_sample":
            return [[self.params.get(n) for n in args[0]]]
        return [None]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


def engine_with(llm, sync="in_place") -> VLLMRolloutEngine:
    """A VLLMRolloutEngine around a stand-in LLM (no vLLM started)."""
    eng = object.__new__(VLLMRolloutEngine)
    eng.hf_cfg, eng.precision, eng.sync_mode, eng.asleep, eng._version = CFG, "bf16", sync, False, 1
    eng.fp8_checkpoint = False  # bf16: the plain checkpoint on a restart
    eng._live = {"llm": llm}
    return eng


def test_the_check_accepts_the_trainers_weights_and_names_a_tensor_that_differs():
    sd = MoEPolicy(CFG, seed=0).state_dict()
    llm = FakeLLM(sd)
    eng = engine_with(llm)
    eng.check_weights(sd)                      # trainer layout
    eng.check_weights(to_hub_layout(sd))       # hub layout
    for layer in range(3):  # whichever two layers the check samples
        llm.params[f"model.layers.{layer}.mlp.experts.w2_weight"][1, 0, 0] += 1.0
    with pytest.raises(WeightSyncError, match=r"mlp.experts.w2_weight: max \|engine - trainer\| 1"):
        eng.check_weights(sd)
    del llm.params["model.norm.weight"]
    with pytest.raises(WeightSyncError, match="model.norm.weight: the engine has None"):
        eng.check_weights(sd)


def test_an_in_place_sync_that_fails_its_check_falls_back_to_restarting_from_disk(tmp_path, capsys,
                                                                                 monkeypatch):
    old, new = MoEPolicy(CFG, seed=0).state_dict(), MoEPolicy(CFG, seed=1).state_dict()
    eng = engine_with(FakeLLM(old))  # the stand-in never takes the new weights
    eng._work = tmp_path
    started = []
    monkeypatch.setattr(VLLMRolloutEngine, "_start", lambda self, d: started.append(d) or FakeLLM(new))
    monkeypatch.setattr("rl_core.rollout.vllm.engine._stop", lambda live: live.pop("llm", None))
    eng.sync_weights(new)
    assert eng.sync_mode == "restart" and len(started) == 1 and (started[0] / "model.safetensors").is_file()
    assert "restarts from disk at this and every later weight sync" in capsys.readouterr().err


def test_an_in_place_sync_loads_every_tensor_then_post_processes_resets_the_cache_and_checks():
    sd = MoEPolicy(CFG, seed=0).state_dict()
    llm = FakeLLM(sd)
    eng = engine_with(llm)
    eng.sync_weights(sd)
    assert eng.sync_mode == "in_place"
    assert llm.calls == ["rl_load_weights", "rl_after_load", "reset_prefix_cache", "rl_weight_sample"]


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2, 3))
        self.loaded = []

    def load_weights(self, weights):
        for name, t in weights:
            self.loaded.append(name)
            self.w.data.copy_(t)


class FakeWorker(WeightSync):
    def __init__(self):
        self.model_runner = type("Runner", (), {})()
        self.model_runner.model = FakeModel()


def test_the_worker_extension_loads_and_reads_back_through_the_model():
    worker = FakeWorker()
    assert worker.rl_load_weights([("w", torch.ones(2, 3))]) == 1
    assert worker.model_runner.model.loaded == ["w"]
    got = worker.rl_weight_sample(["w", "absent"])
    assert torch.equal(got[0], torch.ones(2, 3)) and got[1] is None
