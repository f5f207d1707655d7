"""Rollout tokens/s of vLLM (the CPU build) on the same checkpoint and prompts as bench/rollout.py.

    .venv-vllm/bin/python bench/rollout_vllm.py SPEC_JSON    (run by bench/driver.py; prints BENCH_JSON {...})

Needs only vllm (not rl_core): prompts arrive as token ids (skip_tokenizer_init). Same work as the other
sides: temperature 1, no top-k/top-p, ignore_eos=True and max_tokens = L, so every sequence gets exactly
L new tokens; all prompts are submitted in one `generate` call (continuous batching runs them together).
Offline engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), threads fixed to SPEC threads.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def main() -> None:
    s = spec()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    pin_threads(s["threads"])
    import vllm

    prompts = s["prompts"]
    results, errors = {}, {}
    for dtype in s.get("dtypes", ["float32", "bfloat16"]):
        try:
            llm = vllm.LLM(model=s["ckpt"], skip_tokenizer_init=True, dtype=dtype, max_model_len=256,
                           max_num_seqs=len(prompts), enforce_eager=True, seed=0)
        except Exception as e:  # a dtype the CPU build lacks: try the next one
            errors[dtype] = f"{type(e).__name__}: {e}"[:300]
            continue
        params = vllm.SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=s["L"], ignore_eos=True,
                                     detokenize=False)
        inputs = [{"prompt_token_ids": p} for p in prompts]
        llm.generate(inputs, params, use_tqdm=False)  # warm-up
        rates, cpu_rates, n, cpu, wall = [], [], 0, 0.0, 0.0
        for _ in range(s["reps"]):
            t0, c0 = time.perf_counter(), time.process_time()
            outs = llm.generate(inputs, params, use_tqdm=False)
            n = sum(len(o.outputs[0].token_ids) for o in outs)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rates.append(n / dt)
            cpu_rates.append(n / dc)
            cpu, wall = cpu + dc, wall + dt
        # cpu_per_wall ~ 1 confirms one busy thread (vLLM binds its own OpenMP pool).
        results[dtype] = {"tokens_per_s": statistics.median(rates), "rates": rates, "tokens": n,
                          "tokens_per_cpu_s": statistics.median(cpu_rates), "cpu_rates": cpu_rates,
                          "cpu_per_wall": cpu / wall}
        del llm
    emit({"vllm": vllm.__version__, "results": results, "errors": errors})


if __name__ == "__main__":
    main()
