"""Training engines (pi_old, pi_theta): the contract, scoring, the optimizer, where they run.

    base.py          TrainingEngine (the contract) and its capabilities
    scoring.py       token_logprobs: per-token log-probabilities and entropy, fp32 or bf16
    adamw.py         torch's AdamW bitwise, without torch.optim's compile wrappers
    distributed.py   the device, data parallel under torchrun (FSDP2), a rollout engine on a device
    megatron/        the Megatron-core engine (an optional extra): engine.py, convert.py, parallel.py
"""
