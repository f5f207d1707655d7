"""The run's rollout engine from its config (``rollout.engine``): vLLM, or the embedded engine on the training
device."""

from __future__ import annotations

import torch

from rl_core.config import RunConfig
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.training.distributed import OnDevice


def make_rollout_engine(cfg: RunConfig, policy, device: torch.device | None = None,
                        weights: dict | None = None):
    """vLLM (its own devices), else the embedded engine on the training device (a GPU's fallback), from
    ``weights`` (default: the policy's)."""
    if cfg.rollout.engine == "vllm":
        from rl_core.rollout.vllm.engine import VLLMRolloutEngine  # optional extra

        return VLLMRolloutEngine(cfg.init, cfg.rollout.precision,
                                 fp8_checkpoint=cfg.rollout.weight_sync == "checkpoint")
    weights = policy.state_dict() if weights is None else weights
    r = cfg.rollout
    if r.weight_sync == "checkpoint":  # through the block-FP8 checkpoint (rl_core.rollout.fp8_checkpoint)
        from rl_core.rollout.fp8_checkpoint import CheckpointSynced

        make = lambda: CheckpointSynced(  # noqa: E731
            lambda c, sd: EmbeddedRolloutEngine(c, sd, r.precision, r.kv_cache), policy.config, weights)
    else:
        make = lambda: EmbeddedRolloutEngine(policy.config, weights, r.precision, r.kv_cache)  # noqa: E731
    return make() if device is None or device.type == "cpu" else OnDevice(make, device)


__all__ = ["make_rollout_engine"]
