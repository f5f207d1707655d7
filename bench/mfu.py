"""Training-engine efficiency: achieved FLOP/s of forward+backward over the measured fp32 matmul peak.

    .venv/bin/python bench/mfu.py SPEC_JSON      (run by bench/driver.py; prints BENCH_JSON {...})

SPEC: ckpt, B, T, threads, rounds, peak_n. The work is what an RL update does:
rl_core.training.scoring.token_logprobs (full-sequence forward, log-softmax, gather) on a (B, T) batch without
padding, then backward of sum(c * logp). Its FLOPs come from bench/driver.py's train_flops_per_token
(documented there). The peak is torch.matmul of two (peak_n x peak_n) fp32 matrices, 2 n^3 FLOPs, in the same
process and thread count; the two are measured in turns (`rounds` times) and each reported as its best round
(least disturbed by the other jobs on a shared machine). One profiled step gives the share of time per op.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def timed(fn, min_s: float, clock) -> float:
    """`clock` seconds per call of fn, over at least min_s wall seconds."""
    n, t0, c0 = 0, time.perf_counter(), clock()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 >= min_s:
            return (clock() - c0) / n


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    import torch
    from driver import train_flops_per_token
    from torch.profiler import ProfilerActivity, profile

    from rl_core.policy.model import load_pretrained
    from rl_core.training.scoring import token_logprobs

    model = load_pretrained(s["ckpt"])
    B, T, n = s["B"], s["T"], s["peak_n"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config["vocab_size"], (B, T), generator=gen)
    mask = torch.ones_like(ids)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)

    def step():
        model.zero_grad(set_to_none=True)
        (token_logprobs(model, ids, mask).logp * 1e-2).sum().backward()

    def forward():
        with torch.no_grad():
            token_logprobs(model, ids, mask)

    # One thread: CPU time of this process, so time spent waiting for a core on a shared machine is left
    # out of peak and engine alike; more threads: wall time.
    clock = time.process_time if s["threads"] == 1 else time.perf_counter
    step(), forward(), a @ b  # warm-up
    peak, fb, fwd = [], [], []
    for _ in range(s["rounds"]):
        peak.append(2 * n**3 / timed(lambda: a @ b, 1.0, clock))
        fb.append(timed(step, 1.5, clock))
        fwd.append(timed(forward, 0.5, clock))
    flops_tok = train_flops_per_token(model.config, T)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    emit({
        "clock": clock.__name__, "peak_flops": max(peak), "peak_rounds": peak,
        "fwd_bwd_s": min(fb), "fwd_bwd_rounds": fb, "fwd_s": min(fwd),
        "flops_per_token": flops_tok, "tokens": B * T,
        "achieved_flops": flops_tok * B * T / min(fb),
        "achieved_fwd_flops": flops_tok / 3 * B * T / min(fwd),
        "profile_top": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
                        for e in events[:8]],
    })


if __name__ == "__main__":
    main()
