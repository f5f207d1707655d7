"""Rollout engines (the sampler mu_old): the contract, the engines and their number formats.

    base.py       RolloutBatch, RolloutEngine (the contract)
    factory.py    the run's rollout engine from its config (make_rollout_engine)
    embedded.py   EmbeddedRolloutEngine
    formats.py    fp8 (W8A8 block), fp8_w8a16, mxfp4, the fp8 KV cache
    vllm/         the vLLM backend (an optional extra): engine.py, worker.py (its worker extension)
Nothing is imported here: vLLM's worker processes import rl_core.rollout.vllm.worker without the engines.
"""
