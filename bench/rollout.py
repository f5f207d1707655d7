"""Rollout tokens/s: the embedded rollout engine vs transformers `generate`, on the same checkpoint.

    .venv/bin/python bench/rollout.py SPEC_JSON      (run by bench/driver.py; prints BENCH_JSON {...})

SPEC: ckpt, prompts (token id lists), L, threads, reps, impls (any of "ours-fp32", "ours-bf16", "hf").
Identical work on every side: the same left-padded prompts, sampling at temperature 1 from the full
distribution (no top-k/top-p), and exactly L new tokens per sequence: EOS is disabled (ours: an
eos_token_id no token can equal; transformers: generation_config.eos_token_id = None), so no side
stops early. transformers runs with its KV cache (use_cache=True), fp32, its default attention (sdpa)
and experts (grouped_mm) implementations. Each impl: one warm-up call, then `reps` timed calls, taken in
turns (ours, hf, ours, hf, ...) so machine noise hits both alike; the median is reported.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def ours(ckpt: str, precision: str, prompts: list[list[int]], L: int):
    import torch

    from rl_core.rollout.embedded import EmbeddedRolloutEngine

    engine = EmbeddedRolloutEngine.from_pretrained(ckpt, precision)
    engine.eos_token_id = -1  # no sampled token equals it: every row runs L steps

    def call(seed: int) -> int:
        batch = engine.generate(prompts, L, 1.0, torch.Generator().manual_seed(seed))
        return int(batch.response_mask.sum())
    return call


def hf(ckpt: str, prompts: list[list[int]], L: int, pad_id: int):
    import torch
    import transformers

    model = transformers.Qwen3MoeForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    P = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])

    def call(seed: int) -> int:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=L, use_cache=True,
                                 pad_token_id=pad_id, eos_token_id=None)
        return int(out[:, P:].numel())
    return call


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    import json

    cfg = json.loads((Path(s["ckpt"]) / "config.json").read_text())
    makers = {"ours-fp32": lambda: ours(s["ckpt"], "fp32", s["prompts"], s["L"]),
              "ours-bf16": lambda: ours(s["ckpt"], "bf16", s["prompts"], s["L"]),
              "hf": lambda: hf(s["ckpt"], s["prompts"], s["L"], cfg["pad_token_id"])}
    calls = {name: makers[name]() for name in s["impls"]}
    for call in calls.values():
        call(0)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in calls}
    cpu_rates: dict[str, list[float]] = {name: [] for name in calls}
    tokens: dict[str, int] = {}
    for rep in range(s["reps"]):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            tokens[name] = call(rep + 1)
            rates[name].append(tokens[name] / (time.perf_counter() - t0))
            cpu_rates[name].append(tokens[name] / (time.process_time() - c0))
    emit({name: {"tokens_per_s": statistics.median(r), "rates": r, "tokens": tokens[name],
                 "tokens_per_cpu_s": statistics.median(cpu_rates[name]), "cpu_rates": cpu_rates[name]}
          for name, r in rates.items()})


if __name__ == "__main__":
    main()
