"""The side files that make a checkpoint directory usable as is by `transformers` (and vLLM).

:func:`rl_core.policy.model.save_pretrained` writes config.json, model.safetensors and tokenizer.json, then
:func:`write_side_files` adds:

* ``tokenizer_config.json``: the tokenizer class and which of tokenizer.json's own tokens are pad, eos and
  unk; padding on the left (decoder-only generation). Without it ``AutoTokenizer`` falls back to the model
  type's tokenizer class (Qwen2Tokenizer for ``qwen3_moe``), which appends its own ``<|endoftext|>`` as pad
  and eos with id = vocabulary size, one past the embedding table: batched ``generate`` then fails with an
  IndexError on the first padded row.
* ``special_tokens_map.json``: the same names, for readers older than tokenizer_config's fields.
* ``generation_config.json``: eos and pad ids, and the sampling the rollout engine uses (temperature 1, no
  top-p / top-k truncation), so that ``generate()`` samples the distribution RL trained on. No length: a
  ``max_length`` there makes every ``generate(max_new_tokens=...)`` warn that both are set (the context
  length is config.json's ``max_position_embeddings``).

A checkpoint that already has these files (a real Hugging Face checkpoint used as ``init``) keeps its own:
given the folder the tokenizer came from, its files are copied instead of written.

Imports no torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
#: Tokenizer files of real checkpoints copied along when present (ours need none of them).
EXTRA_TOKENIZER_FILES = ("chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def _token(vocab: dict[str, int], token_id, role: str) -> str | None:
    """The token string of `token_id` in `vocab`; an id outside it is an error naming the role."""
    if token_id is None:
        return None
    by_id = {i: t for t, i in vocab.items()}
    if token_id not in by_id:
        raise ValueError(f"{role}_token_id {token_id} is not in the tokenizer's vocabulary "
                         f"({len(vocab)} tokens)")
    return by_id[token_id]


def special_tokens(tokenizer_json: dict, config: dict) -> dict[str, str | None]:
    """{pad_token, eos_token, unk_token, bos_token}: tokenizer.json's strings for the config's ids."""
    vocab = dict(tokenizer_json["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})
    names = {f"{role}_token": _token(vocab, config.get(f"{role}_token_id"), role)
             for role in ("pad", "eos", "bos")}
    names["unk_token"] = tokenizer_json["model"].get("unk_token")
    return names


def tokenizer_config(names: dict, model_max_length: int) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", **names, "padding_side": "left",
            "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
            "add_bos_token": False, "add_eos_token": False}


def generation_config(config: dict, temperature: float = 1.0) -> dict:
    """Untruncated sampling at `temperature` (the rollout engine's), stopping at eos."""
    return {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
            "pad_token_id": config.get("pad_token_id"), "do_sample": True, "temperature": temperature,
            "top_p": 1.0, "top_k": 0}


def write_side_files(out_dir: str | Path, config: dict, source: str | Path | None = None) -> list[Path]:
    """Write (or copy from `source`, the tokenizer's folder, where it has them) the side files into
    `out_dir`, which already holds tokenizer.json. Returns the paths written."""
    out = Path(out_dir)
    written = []
    if source is not None and Path(source).resolve() != out.resolve():
        for name in (*SIDE_FILES, *EXTRA_TOKENIZER_FILES):
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, out / name)
                written.append(out / name)
    names = special_tokens(json.loads((out / "tokenizer.json").read_text()), config)
    content = {"tokenizer_config.json": tokenizer_config(names, config.get("max_position_embeddings", 2048)),
               "special_tokens_map.json": {k: v for k, v in names.items() if v is not None},
               "generation_config.json": generation_config(config)}
    for name, data in content.items():
        if out / name not in written:
            (out / name).write_text(json.dumps(data, indent=2) + "\n")
            written.append(out / name)
    return written
