"""The training engine's contract: what the run (rl_core.train, rl_core.step) needs from the policy it trains.

rl_core.policy.model.MoEPolicy (``train.engine: torch``) and rl_core.training.megatron.engine.MegatronPolicy
(``train.engine: megatron``) implement it, so scoring (rl_core.training.scoring), the objectives and AdamW
are shared. What only some engines do is named in ``capabilities``, each with the methods it brings:

* :data:`OWN_GRAD_REDUCTION`: ``clip_grad_norm(max_norm) -> Tensor`` reduces the gradients over the ranks
  itself and clips them by the global norm; FSDP2 leaves such an engine unsharded (Megatron's TP / EP).
* :data:`OWN_OPTIMIZER_STATE`: ``optimizer_state(opt) -> dict`` and ``load_optimizer_state(opt, state)``:
  AdamW's state as full tensors in our layout, gathered and sliced by the engine (any TP / EP resumes it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from rl_core.policy.model import PolicyOutput

OWN_GRAD_REDUCTION = "own_grad_reduction"
OWN_OPTIMIZER_STATE = "own_optimizer_state"


@runtime_checkable
class TrainingEngine(Protocol):
    """What the trainer needs from the policy it trains (MoEPolicy here; Megatron implements the same)."""

    config: dict  # the checkpoint's config.json (Hugging Face names)
    capabilities: frozenset[str]  # e.g. {OWN_GRAD_REDUCTION}: the engine's methods beyond this contract

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 replay: torch.Tensor | None = None) -> PolicyOutput: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]): ...


__all__ = ["TrainingEngine", "OWN_GRAD_REDUCTION", "OWN_OPTIMIZER_STATE"]
