"""The objectives and their parts: pure functions of tensors.

    objectives.py    MiniRL and its variants, GRPO, CISPO and the registry OBJECTIVES
    corrections.py   the field's corrections (TIS, IcePop, sequence MIS/TIS, GSPO)
    parts.py         aggregation, IS weights, LossParams, stats
    advantages.py    advantages from a group's rewards
"""
