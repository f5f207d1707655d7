"""The starting regime of each cold start, measured before any RL (the paper's starting conditions).

    .venv/bin/python bench/regime_table.py MODELS_DIR [--grid experiments/paper.yaml] [--preset mini]
    make regime-table          (the paper grid's cold starts, built by the workflow if missing)

For every cold start under MODELS_DIR (``terse``, ``chain``, ``scratchpad``, the ones present) and the
grid's run config (its base, at the preset): the rollout engine in the grid's number format samples G
responses to the first ``--prompts`` training prompts (temperature 1, one fixed seed), and the grid's
training engine scores them at theta_old. Per response token: the entropy of the training engine's
distribution (nats), k1 = mean(log mu_old - log pi_old) and k3 = mean(d - 1 - log d), d = pi_old / mu_old;
per response: the training reward, the length in tokens (``<eos>`` included) and the share cut at
rollout.max_new_tokens; per cold start, the workflow's benchmark (``MODELS_DIR/eval_NAME.json``: avg@k on
the held-out problems, fp32 engine). The training reward is on prompts the teacher solved in SFT, so it
runs above the benchmark.
Prints a markdown table beside the paper's figures; --json writes the numbers. Nothing here is tuned to a
target: it is how the regime was chosen (docs/results.md, "The starting regime").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import print_table

from rl_core.orchestration.grid import TEACHERS, load_grid
from rl_core.paths import REPO
from rl_core.policy.model import load_pretrained
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.step import train_infer_kl
from rl_core.tasks import make_task
from rl_core.training.scoring import token_logprobs

#: The paper's MiniRL starting point (figure 1; docs/objective.md §11): entropy ~0.30 nats/token,
#: train-inference KL ~3e-3 (FP8 rollout against the BF16 trainer). Its initial scores and lengths differ per
#: cold start.
PAPER = {"entropy": 0.30, "kl": 3e-3}


def measure(ckpt: Path, cfg, n_prompts: int, seed: int) -> dict:
    policy = load_pretrained(ckpt).eval()
    task = make_task(cfg.task)
    problems = [p for p in task.train_problems[:n_prompts] for _ in range(cfg.rollout.group_size)]
    engine = EmbeddedRolloutEngine.from_model(policy, cfg.rollout.precision, cfg.rollout.kv_cache)
    ro = engine.generate([task.encode_prompt(p) for p in problems], cfg.rollout.max_new_tokens,
                         cfg.rollout.temperature, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        old = token_logprobs(policy, ro.input_ids, ro.attention_mask, cfg.rollout.temperature,
                             with_entropy=True, precision=cfg.train.precision)
    mask = ro.response_mask
    log_d = (old.logp - ro.logp_behavior)[mask]
    lengths = mask.sum(1)
    texts = [task.decode(ro.input_ids[i, ro.prompt_len:]) for i in range(len(problems))]
    return {
        "cold_start": ckpt.name, "rollout": cfg.rollout.precision, "train": cfg.train.precision,
        "score": sum(task.reward(t, p) for t, p in zip(texts, problems, strict=True)) / len(problems),
        "entropy": float(old.entropy[mask].mean()), "length": float(lengths.float().mean()),
        **{k: float(v.mean()) for k, v in zip(("k1", "k3"), train_infer_kl(log_d), strict=True)},
        "truncated": sum(r == "length" for r in ro.finish_reason) / len(problems),
        "responses": len(problems),
    }


def markdown(rows: list[dict]) -> str:
    cols = ["cold start", "benchmark", "train reward", "entropy (nats/token)", "KL k3", "KL k1",
            "length (tokens)", "cut at limit"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [f"| {r['cold_start']} | {r.get('benchmark', float('nan')):.3f} | {r['score']:.3f} | "
              f"{r['entropy']:.3f} | {r['k3']:.2e} | {r['k1']:.2e} | {r['length']:.1f} | "
              f"{r['truncated']:.1%} |" for r in rows]
    paper = f"| paper (MiniRL, fig. 1) | 0.6-0.65 | - | ~{PAPER['entropy']:.2f} | ~{PAPER['kl']:.0e} |"
    lines.append(paper + " - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, help="a grid's models/ directory (one folder per cold start)")
    ap.add_argument("--grid", type=Path, default=REPO / "experiments" / "paper.yaml")
    ap.add_argument("--preset", default=None, help="default: the grid's own")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    grid = load_grid(args.grid, preset=args.preset)
    present = [t for t in TEACHERS if (args.models / t / "config.json").exists()]
    if not present:
        ap.error(f"{args.models}: no cold start ({', '.join(TEACHERS)}) found")
    rows = [measure(args.models / t, grid.base_config, args.prompts, args.seed) for t in present]
    for r in rows:  # the workflow's benchmark of each cold start (avg@k on the held-out problems), if run
        bench = args.models / f"eval_{r['cold_start']}.json"
        r["benchmark"] = json.loads(bench.read_text())["score"] if bench.exists() else float("nan")
    print_table(markdown(rows), rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
