"""Where one arm's wall time goes: process start, imports, setup, rollout, pi_old, updates, evals, files.

    .venv/bin/python bench/arm_profile.py [--init results/paper/models/chain]
        [--arms fig1_on_policy/minirl,...] [--global-steps 3] [--threads 1] [--ops] [--json OUT]

Each arm of experiments/paper.yaml (preset mini) is run in this process for a few global steps through
rl_core.train.Arm, each phase timed on its own; the figures are projected onto the whole arm (train.steps /
N global steps, its evals every eval.every steps plus step 0, a checkpoint every checkpoint_every steps),
after one warm-up global step. The fixed part of an arm process is listed once, the same for every arm:
process start, imports and the optimizer's first step (wall seconds of fresh interpreters, best of 3) and the
setup of the first arm profiled (cold); the rest is CPU seconds of this process (time.process_time).
`--ops` adds torch.profiler's top operators of one rollout, one update and one eval. Needs a cold start
of the mini model (`--init`; the workflow's results/paper/models/chain). Use `--threads 1` on a shared
machine and compare shares and ratios measured in one session, not seconds across days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = "fig1_on_policy/minirl,fig4_off_policy_n8/minirl_r2"


def fresh(code: str) -> float:
    """Best of 3 wall seconds of `python -c code` in a fresh interpreter."""
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return min(walls)


def process_costs() -> dict:
    start = fresh("pass")
    train = fresh("import rl_core.train") - start
    # the trainer's optimizer's first step (torch.optim's imported torch._dynamo there: 1-2 s; ours does not)
    opt = fresh("import rl_core.train, torch; p = torch.zeros(1, requires_grad=True); p.grad = p.detach(); "
                "rl_core.train.AdamW([p]).step()") - start
    return {"python_start_s": start, "import_train_s": train, "optimizer_first_s": opt - train}


def clock() -> float:
    """CPU seconds of this process: with one thread, the work done, whatever else runs on the machine."""
    return time.process_time()


def top_ops(fn, n: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n)


def profile_arm(run, init: str, global_steps: int, ops: bool) -> dict:
    import torch

    from rl_core import config as C
    from rl_core.step import score, update
    from rl_core.train import Arm, RunFiles, due, run_eval

    cfg = C.from_dict({**C.to_dict(run.config), "init": init})
    t, N = cfg.train, cfg.train.n_minibatches
    with tempfile.TemporaryDirectory() as tmp:
        t0 = clock()
        arm = Arm(cfg, RunFiles(Path(tmp)))
        setup_s = clock() - t0

        def global_step() -> tuple[dict, int, list[float]]:
            t0 = clock()
            sampled, gm = arm.sample()
            t1 = clock()
            batch = score(cfg, arm.policy, sampled)
            t2 = clock()
            lens = []
            for j in range(N):
                sel = torch.arange(j * arm.mb, (j + 1) * arm.mb)
                m, _ = update(cfg, arm.policy, arm.opt, batch, sel, arm.objective, arm.params)
                lens.append(m["response/length_mean"])
            t3 = clock()
            arm.engine.sync_weights(arm.policy.state_dict())
            t4 = clock()
            arm.global_step += 1
            arm.step += N
            return ({"rollout": t1 - t0, "pi_old": t2 - t1, "update": t3 - t2, "sync": t4 - t3},
                    gm["response/tokens"], lens)

        first, _, _ = global_step()  # warm-up: torch._dynamo's import (process_costs), oneDNN's kernels
        phases = {k: 0.0 for k in first}
        tokens, lens = 0, []
        for _ in range(global_steps):
            times, n_tokens, step_lens = global_step()
            phases = {k: phases[k] + times[k] for k in phases}
            tokens, lens = tokens + n_tokens, lens + step_lens
        run_eval(cfg, arm.policy, arm.task, arm.step)  # warm-up
        t0 = clock()
        run_eval(cfg, arm.policy, arm.task, arm.step)
        eval_s = clock() - t0
        t0 = clock()
        arm.checkpoint(0.0)
        ckpt_s = clock() - t0
        op_tables = {}
        if ops:
            op_tables["rollout"] = top_ops(arm.sample)
            sampled, _ = arm.sample()
            batch = score(cfg, arm.policy, sampled)
            sel = torch.arange(0, arm.mb)
            op_tables["update"] = top_ops(lambda: update(cfg, arm.policy, arm.opt, batch, sel, arm.objective,
                                                         arm.params))
            op_tables["eval"] = top_ops(lambda: run_eval(cfg, arm.policy, arm.task, arm.step))
    n_global = t.steps // N
    n_evals = 1 + sum(due(s, cfg.eval.every, N, t.steps) for s in range(N, t.steps + 1, N))
    n_ckpts = sum(due(s, cfg.checkpoint_every, N, t.steps) for s in range(N, t.steps + 1, N))
    per = {k: v / global_steps for k, v in phases.items()}
    whole = {k: v * n_global for k, v in per.items()}
    whole.update(setup=setup_s, evals=eval_s * n_evals, checkpoints=ckpt_s * n_ckpts)
    return {"arm": f"{run.figure}/{run.arm}", "N": N, "global_steps_measured": global_steps,
            "response_length_mean": sum(lens) / len(lens), "tokens_per_global_step": tokens / global_steps,
            "per_global_step_s": per, "eval_s_each": eval_s, "n_evals": n_evals, "checkpoint_s_each": ckpt_s,
            "n_checkpoints": n_ckpts, "projected_s": whole, "ops": op_tables}


def report(res: dict, proc: dict) -> str:
    w = res["projected_s"]
    parts = {"python start": proc["python_start_s"], "import rl_core.train": proc["import_train_s"],
             "setup (task, policy, rollout engine, optimizer)": proc["setup_s"],
             "the optimizer's first step (rl_core.training.adamw)": proc["optimizer_first_s"],
             "rollout decode": w["rollout"], "pi_old scoring": w["pi_old"], "updates": w["update"],
             "weight sync": w["sync"], f"evals ({res['n_evals']} x {res['eval_s_each']:.2f} s)": w["evals"],
             f"checkpoints ({res['n_checkpoints']})": w["checkpoints"]}
    total = sum(parts.values())
    lines = [f"== {res['arm']} (N={res['N']}; {res['global_steps_measured']} global steps measured, "
             f"{res['tokens_per_global_step']:.0f} response tokens each, mean length "
             f"{res['response_length_mean']:.1f}), projected onto the whole arm: {total:.1f} s"]
    lines += [f"  {k:<62} {v:7.2f} s  {100 * v / total:5.1f}%" for k, v in parts.items()]
    lines += [f"\n-- top ops, one {name} --\n{tab}" for name, tab in res["ops"].items()]
    return "\n".join(lines)


def main() -> int:
    """The command line above, or (run by bench/driver.py) one SPEC_JSON argument: init, threads,
    global_steps; then the figures are printed as one BENCH_JSON line."""
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        s = json.loads(sys.argv[1])
        sys.argv[1:] = ["--init", s["init"], "--threads", str(s["threads"]), "--global-steps",
                        str(s["global_steps"]), "--emit"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default=str(ROOT / "results" / "paper" / "models" / "chain"))
    ap.add_argument("--arms", default=ARMS, help="comma-separated figure/arm of experiments/paper.yaml")
    ap.add_argument("--global-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", action="store_true", help="torch.profiler's top operators too")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--emit", action="store_true", help="print the figures as one BENCH_JSON line")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from common import emit, pin_threads

    pin_threads(args.threads)
    proc = process_costs()
    from rl_core.orchestration.grid import load_grid

    runs = {f"{r.figure}/{r.arm}": r for r in load_grid(ROOT / "experiments" / "paper.yaml", "mini").runs}
    out = []
    for name in args.arms.split(","):
        res = profile_arm(runs[name], args.init, args.global_steps, args.ops)
        proc.setdefault("setup_s", res["projected_s"]["setup"])  # cold: the first arm of this process
        res["text"] = report(res, proc)
        print(res["text"] + "\n", flush=True)
        out.append(res)
    if args.json:
        args.json.write_text(json.dumps({"process": proc, "arms": out}, indent=2))
    if args.emit:
        emit({"process": proc, "arms": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
