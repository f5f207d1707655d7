"""A small random Qwen3-MoE checkpoint as transformers saves one (bf16 safetensors, per-expert hub layout,
tied or untied embeddings) with a real byte-level BPE tokenizer trained here, a ChatML chat template and
Qwen's special tokens: what a user brings as `init` with `task.kind: file`, at test size."""

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: model.* of a run from this checkpoint (check_init compares them with config.json)
MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
         "rope_theta": 10000.0, "max_position_embeddings": 160, "rms_norm_eps": 1e-6, "init_std": 0.02}


def build_bpe_tokenizer(vocab_size: int = 400):
    """Byte-level BPE (as Qwen's) trained on the fixture dataset, with Qwen's three special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [json.loads(line)["prompt"] + " " + json.loads(line)["answer"]
             for name in ("math_train.jsonl", "math_bench.jsonl") for line in (DATA / name).open()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 4 + ["The answer is \\boxed{7}."] * 8, trainer)
    return tok


def build_checkpoint(out: Path, tied: bool = True, seed: int = 0) -> Path:
    """Save a random Qwen3MoeForCausalLM (bf16) and its tokenizer into `out` with transformers."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tok = build_bpe_tokenizer()
    m = MODEL
    cfg = Qwen3MoeConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=m["hidden_size"], intermediate_size=64,
        moe_intermediate_size=m["moe_intermediate_size"], num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"],
        head_dim=m["head_dim"], num_experts=m["num_experts"], num_experts_per_tok=m["num_experts_per_tok"],
        max_position_embeddings=m["max_position_embeddings"], rope_theta=m["rope_theta"],
        rms_norm_eps=m["rms_norm_eps"], initializer_range=m["init_std"], norm_topk_prob=True,
        tie_word_embeddings=tied, eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"), bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg)
    with torch.no_grad():  # larger than the default init, so the untrained policy's samples vary
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "chat_template": CHATML, "model_max_length": m["max_position_embeddings"]}))
    return out
