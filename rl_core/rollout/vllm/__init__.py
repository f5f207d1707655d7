"""The vLLM rollout backend (an optional extra).

    engine.py   VLLMRolloutEngine: the RolloutEngine contract served by vLLM's offline LLM
    worker.py   WeightSync: the worker extension vLLM loads by name (in-place weight sync)
"""
