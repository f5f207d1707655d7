"""Rollout engines (the sampler mu_old): the contract, the embedded engine and its number formats.

    embedded.py   RolloutBatch, RolloutEngine (the contract) and EmbeddedRolloutEngine
    formats.py    fp8 (W8A8 block), fp8_w8a16, mxfp4, the fp8 KV cache
The vLLM backend is rl_core.vllm_engine (an optional extra).
"""

from rl_core.rollout.embedded import PRECISIONS, EmbeddedRolloutEngine, RolloutBatch, RolloutEngine

__all__ = ["RolloutBatch", "RolloutEngine", "EmbeddedRolloutEngine", "PRECISIONS"]
