"""The rollout engine's contract: what the trainer needs from a sampler (mu_old) and the batch it returns.

The embedded engine (rl_core.rollout.embedded) and the vLLM one (rl_core.rollout.vllm.engine) implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class RolloutBatch:
    """G responses per prompt, laid out as left-padded prompt (P columns) then right-padded response."""

    input_ids: torch.Tensor       # (B, P+R) long; pad_token_id in the padding
    attention_mask: torch.Tensor  # (B, P+R) long; 1 on real prompt tokens and generated tokens
    response_mask: torch.Tensor   # (B, P+R) bool; True on generated tokens including EOS
    logp_behavior: torch.Tensor   # (B, P+R) fp32; log mu_old of each generated token, 0 elsewhere
    routing: torch.Tensor         # (B, P+R, L, k) long; experts the engine used, -1 where never processed
    finish_reason: list[str]      # "stop" (EOS sampled) | "length" (max_new_tokens reached)
    prompt_len: int               # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The rows ``rows`` (LongTensor) of the batch, e.g. one mini-batch; tensors are indexed copies."""
        return RolloutBatch(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows],
                            self.logp_behavior[rows], self.routing[rows],
                            [self.finish_reason[i] for i in rows.tolist()], self.prompt_len)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a sampler (embedded here; vLLM implements the same)."""

    capabilities: frozenset[str]  # e.g. {"routed_experts"}: returns RolloutBatch.routing (needed by R3)

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                 generator: torch.Generator) -> RolloutBatch: ...


__all__ = ["RolloutBatch", "RolloutEngine"]
