"""Megatron-core for the policy: the HF <-> Megatron checkpoint converter and the router it replays with.

What is here, and what is not (megatron-core 0.16.1, CPU torch 2.13):

* :func:`transformer_config_kwargs` / :func:`gpt_model_kwargs`: our Qwen3-MoE config.json as Megatron's
  ``TransformerConfig`` and ``GPTModel`` arguments (plain dicts: no megatron import needed to read them).
* :func:`hf_to_megatron` / :func:`megatron_to_hf`: the state-dict key mapping between the hub layout and
  a ``GPTModel`` built with ``get_gpt_layer_local_spec(num_experts=E, moe_grouped_gemm=False,
  qk_layernorm=True, normalization="RMSNorm")`` (SequentialMLP experts, no Transformer Engine). Checked on
  CPU by tests/test_megatron.py: the converted dict loads into the real GPTModel with strict=True, the
  fused QKV projection with q/k norms and one expert MLP compute what our model computes, and the router
  with its routing replay agrees with rl_core.model.route.
* :func:`build_gpt_model`: that GPTModel, needing torch.distributed and Megatron's parallel state
  initialised by the caller (one process: a gloo group of world size 1 is enough to build it).

Not here: the Megatron **training engine** (forward/backward, optimizer, the R2/R3 replay schedule through
``RouterReplay``). It needs a CUDA GPU: on CPU ``TopKRouter.forward`` fails in ``gating`` and the model
forward fails in RoPE, both with ``AssertionError: Torch not compiled with CUDA enabled`` (they move
tensors to ``torch.cuda.current_device()``). rl_core.backends therefore rejects ``train.engine=megatron``.

Key mapping (layer i, expert j; Megatron name <- hub name)::

    embedding.word_embeddings.weight                      <- model.embed_tokens.weight
    decoder.layers.i.input_layernorm.weight               <- model.layers.i.input_layernorm.weight
    decoder.layers.i.self_attention.linear_qkv.weight     <- q_proj, k_proj, v_proj (interleaved, below)
    decoder.layers.i.self_attention.q_layernorm.weight    <- model.layers.i.self_attn.q_norm.weight
    decoder.layers.i.self_attention.k_layernorm.weight    <- model.layers.i.self_attn.k_norm.weight
    decoder.layers.i.self_attention.linear_proj.weight    <- model.layers.i.self_attn.o_proj.weight
    decoder.layers.i.pre_mlp_layernorm.weight             <- model.layers.i.post_attention_layernorm.weight
    decoder.layers.i.mlp.router.weight                    <- model.layers.i.mlp.gate.weight
    decoder.layers.i.mlp.experts.local_experts.j.linear_fc1.weight
                                        <- cat(model.layers.i.mlp.experts.j.gate_proj, ...experts.j.up_proj)
    decoder.layers.i.mlp.experts.local_experts.j.linear_fc2.weight
                                        <- model.layers.i.mlp.experts.j.down_proj
    decoder.final_layernorm.weight                        <- model.norm.weight
    output_layer.weight                                   <- lm_head.weight

``linear_qkv`` holds, for each of the Hkv query groups g in turn, the H/Hkv query heads of g, then g's key
head, then g's value head (Megatron splits it per group). ``linear_fc1`` is [gate; up]: Megatron's
gated-linear unit applies the activation to the first half.

Routing equivalence: Qwen3's router (softmax over all experts, top-k, renormalise: ``norm_topk_prob``)
equals Megatron's ``moe_router_pre_softmax=False`` path (top-k of the logits, softmax over the k chosen),
because p_i / sum_{j in topk} p_j = exp(l_i) / sum_{j in topk} exp(l_j). Replay in Megatron
(``moe_enable_routing_replay``, ``RouterReplayAction.REPLAY_FORWARD``) gathers the live logits at the
forced ids and softmaxes them: the same live, renormalised gates as rl_core.model.route.
"""

from __future__ import annotations

import torch

from rl_core.model import config_value, from_hub_layout, to_hub_layout


def transformer_config_kwargs(hf_cfg: dict, params_dtype: torch.dtype = torch.float32) -> dict:
    """``megatron.core.transformer.TransformerConfig(**kwargs)`` for our Qwen3-MoE config.json."""
    return dict(
        num_layers=hf_cfg["num_hidden_layers"], hidden_size=hf_cfg["hidden_size"],
        num_attention_heads=hf_cfg["num_attention_heads"], num_query_groups=hf_cfg["num_key_value_heads"],
        kv_channels=hf_cfg["head_dim"], ffn_hidden_size=hf_cfg["intermediate_size"],
        moe_ffn_hidden_size=hf_cfg["moe_intermediate_size"],
        num_moe_experts=config_value(hf_cfg, "num_experts"),
        moe_router_topk=hf_cfg["num_experts_per_tok"], moe_router_pre_softmax=False,
        moe_router_score_function="softmax", moe_router_dtype="fp32", moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0, moe_enable_routing_replay=True,
        normalization="RMSNorm", layernorm_epsilon=hf_cfg["rms_norm_eps"], qk_layernorm=True,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        add_qkv_bias=False, hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        params_dtype=params_dtype, bf16=params_dtype == torch.bfloat16)


def gpt_model_kwargs(hf_cfg: dict) -> dict:
    """The ``GPTModel`` arguments besides config and layer spec."""
    return dict(vocab_size=hf_cfg["vocab_size"], max_sequence_length=hf_cfg["max_position_embeddings"],
                position_embedding_type="rope", rotary_base=int(config_value(hf_cfg, "rope_theta")),
                share_embeddings_and_output_weights=bool(hf_cfg.get("tie_word_embeddings", False)))


def build_gpt_model(hf_cfg: dict, params_dtype: torch.dtype = torch.float32):
    """The Megatron GPTModel of this architecture (torch.distributed and parallel_state set up by the
    caller)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(**transformer_config_kwargs(hf_cfg, params_dtype))
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=False,
                                    qk_layernorm=True, normalization="RMSNorm")
    return GPTModel(config, spec, **gpt_model_kwargs(hf_cfg))


# ------------------------------------------------------------------------------------ conversion

_RENAMES = {  # per-layer, Megatron suffix <- hub suffix
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.router.weight": "mlp.gate.weight",
}
_TOP = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
        "decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight"}


def _qkv_fuse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_groups: int) -> torch.Tensor:
    """q (H*D, d), k and v (Hkv*D, d) -> (Hkv * (H/Hkv + 2) * D, d), grouped [q heads, k, v] per group."""
    d = q.shape[-1]
    D = k.shape[0] // n_groups
    q, k, v = q.view(n_groups, -1, d), k.view(n_groups, D, d), v.view(n_groups, D, d)
    return torch.cat([q, k, v], dim=1).reshape(-1, d)


def _qkv_split(qkv: torch.Tensor, n_groups: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Inverse of :func:`_qkv_fuse`."""
    d = qkv.shape[-1]
    grouped = qkv.view(n_groups, -1, d)
    q_rows = grouped.shape[1] - 2 * head_dim
    q, k, v = grouped.split([q_rows, head_dim, head_dim], dim=1)
    return q.reshape(-1, d), k.reshape(-1, d), v.reshape(-1, d)


def hf_to_megatron(hf_cfg: dict, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hub-layout (or our stacked-expert) state dict -> GPTModel state dict (local spec, SequentialMLP)."""
    sd = to_hub_layout(from_hub_layout(dict(state_dict)))
    G, E = hf_cfg["num_key_value_heads"], config_value(hf_cfg, "num_experts")
    out = {meg: sd[hub] for meg, hub in _TOP.items() if hub in sd}
    for i in range(hf_cfg["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for meg, hub in _RENAMES.items():
            out[dst + meg] = sd[src + hub]
        a = src + "self_attn."
        out[dst + "self_attention.linear_qkv.weight"] = _qkv_fuse(
            sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"], G)
        for j in range(E):
            e, m = f"{src}mlp.experts.{j}.", f"{dst}mlp.experts.local_experts.{j}."
            out[m + "linear_fc1.weight"] = torch.cat([sd[e + "gate_proj.weight"], sd[e + "up_proj.weight"]])
            out[m + "linear_fc2.weight"] = sd[e + "down_proj.weight"]
    return out


def megatron_to_hf(hf_cfg: dict, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPTModel state dict -> hub layout (what save_pretrained writes, vLLM loads); inverse of the above."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("_extra_state")}
    G, E, D = hf_cfg["num_key_value_heads"], config_value(hf_cfg, "num_experts"), hf_cfg["head_dim"]
    out = {hub: sd[meg] for meg, hub in _TOP.items() if meg in sd}
    for i in range(hf_cfg["num_hidden_layers"]):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for meg, hub in _RENAMES.items():
            out[dst + hub] = sd[src + meg]
        q, k, v = _qkv_split(sd[src + "self_attention.linear_qkv.weight"], G, D)
        for name, t in zip("qkv", (q, k, v), strict=True):
            out[f"{dst}self_attn.{name}_proj.weight"] = t.contiguous()
        for j in range(E):
            m, e = f"{src}mlp.experts.local_experts.{j}.", f"{dst}mlp.experts.{j}."
            gate, up = sd[m + "linear_fc1.weight"].chunk(2, dim=0)
            out[e + "gate_proj.weight"], out[e + "up_proj.weight"] = gate.contiguous(), up.contiguous()
            out[e + "down_proj.weight"] = sd[m + "linear_fc2.weight"]
    return out


# ---------------------------------------------------------------------------------------- routing


def megatron_route(router, hidden: torch.Tensor, replay: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Route ``hidden`` (N, d) with a Megatron ``TopKRouter`` on CPU -> (probs (N, E), routing_map (N, E)).

    Runs Megatron's ``TopKRouter.routing`` with its routing-replay feature: ``replay`` (N, k) forces the
    experts (REPLAY_FORWARD), None routes naturally (RECORD, so the recorded ids can be read back).
    The gating linear is computed here as the fp32 ``hidden @ router.weight.T`` that Megatron's
    ``router_gating_linear`` computes with ``moe_router_dtype="fp32"``: neither runs on CPU in 0.16.1
    (``TopKRouter.gating`` moves the weight to CUDA; ``router_gating_linear`` without Transformer Engine
    raises ``NameError: name 'te_general_gemm' is not defined``). Megatron keeps its replay state in
    class-level globals (``RouterReplay.global_router_replay_instances``); the caller clears them.
    """
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    logits = torch.nn.functional.linear(hidden.float(), router.weight.float())
    if replay is None:
        router.router_replay.set_router_replay_action(RouterReplayAction.RECORD)
    else:
        router.router_replay.set_target_indices(replay)
        router.router_replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
    try:
        return router.routing(logits.unsqueeze(1))  # routing() takes [seq, batch, E]
    finally:
        router.router_replay.clear_router_replay_action()


__all__ = ["transformer_config_kwargs", "gpt_model_kwargs", "build_gpt_model", "hf_to_megatron",
           "megatron_to_hf", "megatron_route"]
