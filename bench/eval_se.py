"""The benchmark's own noise: one checkpoint evaluated under several sampling seeds, so a reader knows how
far apart two evaluations of the same policy land, and how many problems x samples a comparison needs.

    .venv/bin/python bench/eval_se.py CKPT_DIR [--seeds 8] [--n-problems 128] [--k 4]

The benchmark (rl_core.tasks.evaluate's sampling: avg@k, fp32 engine, temperature 1, the paper grid's
max_new_tokens) is run once per seed (EVAL_SEED, EVAL_SEED + 1, ...: the first is the workflow's) on the
same problems; the standard deviation of the scores over seeds is the standard error of one evaluation from
sampling alone (the problem set is fixed and shared by every arm, so it adds no noise to a comparison).
Per problem, the sampling variance is mean over problems of p_i (1 - p_i) / k, with p_i the problem's
pass rate over all seeds' samples; the predicted SE of avg@k on n problems is sqrt(that / n), printed for
a few (n, k) so the benchmark can be sized to an SE target.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's rl_core (bench/common.py)

from rl_core.orchestration.grid import load_grid
from rl_core.paths import REPO
from rl_core.policy.model import load_pretrained
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.tasks import EVAL_SEED, make_task, sample_rewards

PAPER = REPO / "experiments" / "paper.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n-problems", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = load_grid(PAPER).base_config  # the grid's task and response limit; the grid's own benchmark code
    task = make_task(base.task)
    problems = task.bench_problems[: args.n_problems]
    engine = EmbeddedRolloutEngine.from_model(load_pretrained(args.ckpt), "fp32")
    scores, passes = [], torch.zeros(len(problems))
    for seed in range(args.seeds):
        s = sample_rewards(engine, task, problems, args.k, 1.0, base.rollout.max_new_tokens,
                           torch.Generator().manual_seed(EVAL_SEED + seed))
        r = torch.tensor(s["rewards"], dtype=torch.float).view(len(problems), args.k)
        scores.append(float(r.mean()))
        passes += r.sum(1)
    p = passes / (args.seeds * args.k)
    var_one = float((p * (1 - p)).mean())           # per-sample Bernoulli variance, averaged over problems
    out = {"ckpt": args.ckpt, "n_problems": len(problems), "k": args.k, "seeds": args.seeds,
           "scores": scores, "mean": statistics.mean(scores), "se_measured": statistics.stdev(scores),
           "se_predicted": math.sqrt(var_one / (len(problems) * args.k)),
           "predicted": {f"{n}x{k}": math.sqrt(var_one / (n * k))
                         for n in (128, 256, 512) for k in (4, 8, 16)}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
