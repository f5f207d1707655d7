"""Seconds per global step of our trainer (rl_core.train.Arm.global_step_rows): rollout of B x G responses
of up to L tokens, rewards, the logp_old pass, N optimizer steps, weight sync.

    .venv/bin/python bench/rl_step_ours.py SPEC_JSON     (run by bench/driver.py; prints BENCH_JSON {...})

SPEC: ckpt, task (TaskConfig overrides), B, G, L, N, warmup, steps, threads, lr, seed, precision (of the
rollout engine), train_precision (of the training engine), compile (train.compile), objective. One-off
setup (imports, checkpoint load, engine construction) and `warmup` global steps (timed apart: a compiled
run compiles there) are excluded; the `steps` global steps after them are timed one by one.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    from rl_core import config as C
    from rl_core.train import Arm, RunFiles

    cfg = C.resolve({
        "init": s["ckpt"], "task": s["task"],
        "rollout": {"precision": s.get("precision", "fp32"), "max_new_tokens": s["L"], "group_size": s["G"]},
        "train": {"batch_prompts": s["B"], "n_minibatches": s["N"], "lr": s["lr"], "seed": s["seed"],
                  "threads": s["threads"], "steps": s["N"] * (s["warmup"] + s["steps"]),
                  "precision": s.get("train_precision", "fp32"), "compile": s.get("compile", False)},
        "loss": {"objective": s.get("objective", "grpo"), "eps_low": 0.2, "eps_high": 0.27},
    })
    with tempfile.TemporaryDirectory() as tmp:
        arm = Arm(cfg, RunFiles(Path(tmp)))
        warmup = []  # with train.compile: the graphs are compiled here
        for _ in range(s["warmup"]):
            t0 = time.process_time()
            arm.global_step_rows()
            warmup.append(time.process_time() - t0)
        walls, cpus, tokens, prompt_tokens, rows_all = [], [], [], [], []
        for _ in range(s["steps"]):
            prompt_tokens.append(s["G"] * sum(len(arm.task.encode_prompt(p)) for p in arm.problems()))
            t0, c0 = time.perf_counter(), time.process_time()
            rows, _ = arm.global_step_rows()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            tokens.append(rows[0]["response/tokens"])
            rows_all.extend(rows)
    emit({
        "impl": "ours", "s_per_global_step": sum(walls) / len(walls), "walls": walls, "cpus": cpus,
        "warmup_cpus": warmup,
        "response_tokens_per_step": sum(tokens) / len(tokens),
        "prompt_tokens_per_step": sum(prompt_tokens) / len(prompt_tokens),
        "rollout_s": sum(r["perf/rollout_s"] for r in rows_all[:: s["N"]]) / len(walls),
        "old_logp_s": sum(r["perf/old_logp_s"] for r in rows_all[:: s["N"]]) / len(walls),
        "update_s": sum(r["perf/update_s"] for r in rows_all) / len(walls),
        "reward_mean": sum(r["reward/mean"] for r in rows_all) / len(rows_all),
    })


if __name__ == "__main__":
    main()
