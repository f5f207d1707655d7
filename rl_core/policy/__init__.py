"""The policy: the Qwen3-MoE model with routing record / replay, its bf16 attention, its exported files.

    model.py       MoEPolicy, Hugging Face checkpoints, compile_layers
    attention.py   FlashBF16: the training engine's bf16 attention as one autograd Function
    export.py      the tokenizer / generation files of an exported checkpoint
"""
