"""The policy (rl_core.policy.model) and the training engine's scoring (rl_core.training.scoring).

Models are random inits of the default tiny architecture (ModelConfig defaults, vocab 24) with
init_std = 0.1: at the default 0.02 the next-token distribution is almost uniform and the router's
probabilities are almost flat, which would make parity and replay checks weaker than they look.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rl_core.config import ModelConfig
from rl_core.policy.model import (
    MoEPolicy,
    from_hub_layout,
    hf_config,
    load_pretrained,
    routing_disagreement,
    save_pretrained,
    to_hub_layout,
)
from rl_core.training.scoring import token_logprobs

torch.set_num_threads(1)
V = 24


def tiny(seed: int = 3, **over) -> MoEPolicy:
    return MoEPolicy(hf_config(ModelConfig(init_std=0.1, **over), V, eos_token_id=1, pad_token_id=0),
                     seed=seed).eval()


def left_padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 12) ids and mask: row 0 full, rows 1 and 2 left-padded by 4 and 7 (pad id 0)."""
    ids = torch.randint(2, V, (3, 12), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------- checkpoint and parity


def test_hf_config_is_qwen3_moe_with_every_layer_moe_and_renormalised_gates():
    cfg = hf_config(ModelConfig(), V, eos_token_id=1, pad_token_id=0)
    assert cfg["model_type"] == "qwen3_moe" and cfg["architectures"] == ["Qwen3MoeForCausalLM"]
    assert cfg["norm_topk_prob"] is True and cfg["decoder_sparse_step"] == 1 and cfg["mlp_only_layers"] == []
    assert cfg["tie_word_embeddings"] is False and cfg["intermediate_size"] == 128 * 2
    assert (cfg["head_dim"], cfg["rope_theta"], cfg["num_experts"]) == (32, 10000.0, 8)
    json.dumps(cfg)  # config.json content must be serialisable


def test_default_model_parameter_count():
    # embed 24*128 + lm_head 24*128 + final norm 128 + 4 layers x (q 128*128 + k,v 2*64*128 + o 128*128
    # + q/k norms 2*32 + 2 layer norms 2*128 + router 8*128 + experts 8*3*128*128) = 1,781,120
    assert sum(p.numel() for p in tiny().parameters()) == 1_781_120


def test_checkpoint_is_hub_layout_and_roundtrips_bitwise(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.3.self_attn.q_norm.weight", "model.layers.0.mlp.gate.weight",
                 "model.layers.2.mlp.experts.7.down_proj.weight", "model.layers.0.input_layernorm.weight"):
        assert name in keys
    assert not any(k.endswith("experts.gate_proj") for k in keys)
    assert len(keys) == 3 + 4 * (9 + 8 * 3)
    loaded = load_pretrained(tmp_path)
    ids, mask = left_padded_batch()
    assert torch.equal(loaded(ids, mask).logits, model(ids, mask).logits)
    sd = model.state_dict()
    back = from_hub_layout(to_hub_layout(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_logits_match_transformers_qwen3moe_with_and_without_left_padding(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny()
    save_pretrained(model, tmp_path)
    hf, info = transformers.Qwen3MoeForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager", dtype=torch.float32)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ours_full, theirs_full = model(ids).logits, hf(input_ids=ids).logits
        # transformers takes positions from the caller; ours derives the same ones from the mask.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ours = model(ids, mask).logits
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert rel_err(ours_full, theirs_full) <= 1e-5
    real = mask.bool()
    assert rel_err(ours[real], theirs[real]) <= 1e-5


def test_left_padding_does_not_change_logits_of_real_tokens():
    model = tiny()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        padded = model(ids, mask).logits[2, 7:]
        alone = model(ids[2:3, 7:]).logits[0]
    assert rel_err(padded, alone) <= 1e-5


def test_bf16_autocast_returns_fp32_logits_close_to_fp32():
    model = tiny()
    ids, mask = left_padded_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    ref = model(ids, mask).logits.detach()
    assert out.logits.dtype == torch.float32
    # bf16 has 8 mantissa bits (~0.4% per rounding); a few percent after 4 layers is expected.
    assert rel_err(out.logits[mask.bool()], ref[mask.bool()]) < 0.1


# ----------------------------------------------------------------------------------- routing replay


def test_replaying_recorded_routing_is_bitwise_identical():
    model = tiny()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        natural = model(ids, mask)
        replayed = model(ids, mask, replay=natural.routing)
    assert torch.equal(replayed.logits, natural.logits)
    assert torch.equal(replayed.routing, natural.routing)
    assert torch.equal(natural.routing, natural.routing_natural)


def test_replay_forces_recorded_experts_under_a_perturbed_router_and_router_gets_gradients():
    model = tiny()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        recorded = model(ids, mask).routing
        for layer in model.model.layers:
            layer.mlp.gate.weight.add_(0.3 * torch.randn(layer.mlp.gate.weight.shape,
                                                         generator=torch.Generator().manual_seed(7)))
    replay = recorded.clone()
    replay[0, :3] = -1  # a row of -1 routes naturally
    out = model(ids, mask, replay=replay)
    forced = replay[..., 0] >= 0
    assert torch.equal(out.routing[forced], recorded[forced])
    assert torch.equal(out.routing[~forced], out.routing_natural[~forced])
    # The perturbation really moved the router, so the forcing above was not vacuous.
    assert (out.routing_natural.sort(-1).values != recorded.sort(-1).values).any(-1).float().mean() > 0.05
    out.logits[mask.bool()].logsumexp(-1).sum().backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad.abs().sum() > 0


def test_replay_changes_nothing_when_top_k_equals_num_experts():
    model = tiny(num_experts=4, num_experts_per_tok=4)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        natural = model(ids, mask)
        # Any replay is then the full expert set; only the slot order changes: a random permutation.
        keys = torch.rand(natural.routing.shape, generator=torch.Generator().manual_seed(1))
        replay = keys.argsort(-1)
        replayed = model(ids, mask, replay=replay)
    real = mask.bool()
    assert torch.equal(replayed.routing[real], replay[real])
    assert (replayed.routing[~real] == -1).all()  # pads are never routed
    # Not bitwise: the gate normaliser sums the same k probabilities in another order (a few fp32 ulps).
    assert rel_err(replayed.logits, natural.logits) <= 1e-6


def test_routing_disagreement_compares_sets_on_masked_processed_pairs():
    a = torch.tensor([[[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]])     # (1, 4, 1, 2)
    b = torch.tensor([[[[1, 0]], [[2, 4]], [[0, 1]], [[-1, -1]]]])
    mask = torch.tensor([[1, 1, 0, 1]])
    # token 0: same set in another order -> agree; token 1: {2,3} vs {2,4} -> differ;
    # token 2: masked out; token 3: never processed by b -> left out.  1 differing of 2 counted.
    assert routing_disagreement(a, b, mask).item() == 0.5
    assert routing_disagreement(a, a, torch.zeros_like(mask)).item() == 0.0


# --------------------------------------------------------------------------------- token_logprobs


def test_token_logprobs_and_entropy_match_their_definitions():
    model = tiny()
    ids, mask = left_padded_batch()
    T = 0.7
    scores = token_logprobs(model, ids, mask, temperature=T, with_entropy=True)
    with torch.no_grad():
        logp_all = torch.log_softmax(model(ids, mask).logits.double() / T, dim=-1)
    both_real = mask[:, 1:] * mask[:, :-1]  # a row's first real token has no context: logp 0
    ref = logp_all[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * both_real
    ent = -(logp_all[:, :-1].exp() * logp_all[:, :-1]).sum(-1) * both_real
    assert torch.equal(scores.logp[:, 0], torch.zeros(3))
    assert torch.equal(scores.entropy[:, 0], torch.zeros(3))
    assert (scores.logp[:, 1:].double() - ref).abs().max() <= 1e-5
    assert (scores.entropy[:, 1:].double() - ent).abs().max() <= 1e-5
    assert scores.entropy[:, 1:][both_real.bool()].min() > 0.1  # a non-degenerate distribution
    assert scores.logp.requires_grad and not scores.entropy.requires_grad


def test_token_logprobs_replay_reproduces_logp_and_passes_routing_through():
    model = tiny()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        first = token_logprobs(model, ids, mask)
        again = token_logprobs(model, ids, mask, replay=first.routing)
    assert torch.equal(first.logp, again.logp) and torch.equal(again.routing, first.routing)


def test_token_logprobs_skip_all_pad_columns_and_pads_never_reach_real_tokens():
    """Extra all-pad columns (a short mini-batch of a long global batch) are trimmed away, and what a pad
    slot holds cannot change a real token's score: pads are never computed (rl_core.policy.model.Layout)."""
    model = tiny()
    ids, mask = left_padded_batch()
    wide_ids = torch.cat([torch.zeros(3, 2, dtype=torch.long), ids, torch.zeros(3, 5, dtype=torch.long)], 1)
    wide_mask = torch.cat([torch.zeros(3, 2, dtype=torch.long), mask, torch.zeros(3, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        ref = token_logprobs(model, ids, mask, with_entropy=True)
        wide = token_logprobs(model, wide_ids, wide_mask, with_entropy=True)
        junk = wide_ids.masked_fill(~wide_mask.bool(), V - 1)  # other token ids in every pad slot
        other = token_logprobs(model, junk, wide_mask, with_entropy=True)
    assert torch.equal(wide.logp[:, 2:-5], ref.logp) and (wide.logp[:, :2] == 0).all()
    assert (wide.logp[:, -5:] == 0).all() and (wide.routing[:, -5:] == -1).all()
    assert torch.equal(wide.entropy[:, 2:-5], ref.entropy)
    assert torch.equal(wide.routing[:, 2:-5], ref.routing)
    assert torch.equal(other.logp, wide.logp) and torch.equal(other.routing, wide.routing)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_grouped_matmul_fallback_multiplies_each_group_by_its_own_matrix(dtype):
    """rl_core.policy.grouped: an older torch without F.grouped_mm (a GPU image) loops over the groups.
    Groups of 5, 0 (an empty expert) and 3 rows. Each output row is one dot product per column in both, so
    they may differ only by accumulation order over k = 32 terms: bound 32 ulp of the result's magnitude
    in fp32 and, in bf16 (rounded outputs), one bf16 ulp (2^-8 relative)."""
    from rl_core.policy.grouped import grouped_mm, grouped_mm_loop

    assert grouped_mm is F.grouped_mm  # torch 2.13 has it: the loop is the fallback only
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 32, generator=gen).to(dtype)
    b = torch.randn(3, 32, 16, generator=gen).to(dtype)
    offs = torch.tensor([5, 5, 8], dtype=torch.int32)
    got, want = grouped_mm_loop(a, b, offs), F.grouped_mm(a, b, offs=offs)
    exact = torch.cat([a[:5].double() @ b[0].double(), a[5:].double() @ b[2].double()])
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (8, 16)
    scale = (a.double().abs() @ b.double().abs().amax(0)).amax()  # |a| |b| bounds every product sum
    tol = 32 * torch.finfo(torch.float32).eps * scale if dtype == torch.float32 else 2 ** -8 * scale
    assert (got.double() - exact).abs().max() <= tol and (want.double() - exact).abs().max() <= tol
