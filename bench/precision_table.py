"""The train-inference gap of every rollout number format against the fp32 and the bf16 training engine,
measured on one checkpoint before any RL (a starting condition, never tuned to a target).

    .venv/bin/python bench/precision_table.py CKPT_DIR [--prompts 64] [--group 8] [--seed 0]
    make precision-table          (the paper grid's `chain` cold start at the mini preset)

For each rollout format (and the fp8 KV cache on top of fp8) the rollout engine samples G responses to the
same prompts from the task's training set (temperature 1, one fixed seed); the training engine scores
them at theta_old (pi_old). Per response token: k1 = mean(log mu_old - log pi_old) and k3 = mean(d - 1 -
log d) with d = pi_old / mu_old (Schulman's non-negative estimator of KL(mu_old || pi_old)); the routing
disagreement is the fraction of (token, layer) whose top-k expert sets differ between the two engines;
truncated is the fraction of tokens whose IS weight pi_old / mu_old exceeds C = 5 (on-policy, theta =
theta_old, so the full ratio is this one). Prints a markdown table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import print_table

from rl_core.orchestration.grid import load_grid
from rl_core.paths import REPO
from rl_core.policy.model import load_pretrained, routing_disagreement
from rl_core.rollout.embedded import PRECISIONS, EmbeddedRolloutEngine
from rl_core.step import train_infer_kl
from rl_core.tasks import make_task
from rl_core.training.scoring import token_logprobs

PAPER = REPO / "experiments" / "paper.yaml"

ROLLOUTS = [(p, "auto") for p in PRECISIONS] + [("fp8", "fp8")]


def measure(ckpt: str, n_prompts: int, group: int, seed: int, cap: float = 5.0) -> list[dict]:
    policy = load_pretrained(ckpt).eval()
    task = make_task(load_grid(PAPER).base_config.task)   # the paper grid's task at its default preset
    prompts = [task.encode_prompt(p) for p in task.train_problems[:n_prompts] for _ in range(group)]
    rows = []
    for precision, kv in ROLLOUTS:
        engine = EmbeddedRolloutEngine.from_model(policy, precision, kv)
        ro = engine.generate(prompts, 48, 1.0, torch.Generator().manual_seed(seed))
        mask = ro.response_mask
        for train in ("fp32", "bf16"):
            with torch.no_grad():
                old = token_logprobs(policy, ro.input_ids, ro.attention_mask, precision=train)
            log_d = (old.logp - ro.logp_behavior)[mask]                    # log pi_old / mu_old
            rows.append({
                "rollout": precision + (" + fp8 KV" if kv == "fp8" else ""), "train": train,
                **{k: float(v.mean()) for k, v in zip(("k1", "k3"), train_infer_kl(log_d), strict=True)},
                "route_disagree": float(routing_disagreement(ro.routing, old.routing,
                                                             ro.routing[..., 0, 0] >= 0)),
                "truncated": float((log_d.exp() > cap).float().mean()), "tokens": int(mask.sum()),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| rollout | trainer | KL k1 | KL k3 | routing disagreement | IS weights > 5 | tokens |\n"
    head += "|---|---|---|---|---|---|---|\n"
    return head + "\n".join(
        f"| {r['rollout']} | {r['train']} | {r['k1']:.2e} | {r['k3']:.2e} | {r['route_disagree']:.2%} | "
        f"{r['truncated']:.3%} | {r['tokens']} |" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(args.ckpt, args.prompts, args.group, args.seed)
    print_table(markdown(rows), rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
