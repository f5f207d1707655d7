"""The HF (Qwen3-MoE) <-> Megatron-core GPTModel state-dict converter (local layer spec, SequentialMLP
experts): full tensors both ways; rl_core.training.megatron.parallel slices them per rank.

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
"""

from __future__ import annotations

import torch

from rl_core.policy.model import config_value, from_hub_layout, to_hub_layout

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


__all__ = ["hf_to_megatron", "megatron_to_hf"]
