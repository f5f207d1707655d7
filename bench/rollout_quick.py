"""Quick rollout benchmark and train-inference gap of the default tiny model (ModelConfig defaults).

Random checkpoint, vocab 24, init_std 0.1 (at the default 0.02 the next-token distribution is close to
uniform, entropy ~3.17 of log 24 = 3.18 nats; at 0.1 it is ~2.6). Per rollout precision it reports the
response tokens/s at batch 128 x 48 new tokens on one thread (median of 3 after a warm-up; rows that sample
EOS stop early, so "row-steps/s" = 128 x decode steps / s is also given), the train-inference KL estimate
mean(logp_behavior - logp_old) over response tokens, and the fraction of processed (token, layer) pairs
whose top-k set differs between the rollout engine and the training engine.

    .venv/bin/python bench/rollout_quick.py [--threads 1] [--seed 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's rl_core (bench/common.py)

from rl_core.config import ModelConfig
from rl_core.policy.model import MoEPolicy, hf_config, routing_disagreement
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.training.scoring import token_logprobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--init-std", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = hf_config(ModelConfig(init_std=args.init_std), vocab_size=24, eos_token_id=1, pad_token_id=0)
    model = MoEPolicy(cfg, seed=args.seed).eval()
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(3, 12, (args.batch,), generator=gen).tolist()
    prompts = [torch.randint(2, 24, (n,), generator=gen).tolist() for n in lengths]
    for precision in ("fp32", "bf16", "fp8"):
        engine = EmbeddedRolloutEngine.from_model(model, precision)
        engine.generate(prompts, args.new_tokens, 1.0, torch.Generator().manual_seed(99))  # warm-up
        rates, steps = [], []
        for rep in range(3):
            t0 = time.perf_counter()
            batch = engine.generate(prompts, args.new_tokens, 1.0, torch.Generator().manual_seed(rep))
            dt = time.perf_counter() - t0
            rates.append(batch.response_mask.sum().item() / dt)
            steps.append(len(batch) * (batch.input_ids.shape[1] - batch.prompt_len) / dt)
        with torch.no_grad():
            old = token_logprobs(model, batch.input_ids, batch.attention_mask)
        resp = batch.response_mask
        kl = (batch.logp_behavior - old.logp)[resp].mean().item()
        dis = routing_disagreement(batch.routing, old.routing, batch.attention_mask).item()
        print(f"{precision}: {statistics.median(rates):7.0f} response tok/s ({statistics.median(steps):7.0f} "
              f"row-steps/s) | KL {kl:.3e} | routing disagreement {dis:.4f} | "
              f"{resp.sum().item()} response tokens, {batch.finish_reason.count('stop')} stopped")


if __name__ == "__main__":
    main()
