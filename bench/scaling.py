"""How the RL step's cost grows: CPU seconds per global step against model width, batch and response length.

    .venv/bin/python bench/scaling.py SPEC_JSON     (run by bench/driver.py; prints BENCH_JSON {...})

SPEC: ckpt (the bench's cold start: its config.json, tokenizer and task), task, threads, G, N, warmup, steps,
points (a list of {d, B, L}: width, prompts per mini-batch, response length), formats (rollout precisions
timed at the first point), coldstart ({batch_size, steps}). Per point, a global step of rl_core.train.Arm
at N mini-batches (fp32 rollout and trainer, lr ~ 0 as in bench/rl_step_ours.py) with EOS disabled in the
rollout engine, so every response is exactly L tokens and the work is known; a width other than the cold
start's is a random init of the same architecture scaled (heads = d / 32 of width 32, kv heads half,
expert width d). Seconds are CPU seconds of this one-thread process (time.process_time), the rollout's
own share timed around engine.generate. At the first point also: the grid's stress-test pair (fp8 rollout,
bf16 trainer) as a whole step, each rollout format alone (generate only), and a pretraining and an SFT step
of rl_core.coldstart at pipeline batch_size. rl_core.orchestration.cost fits its coefficients to these
numbers.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


class CpuTimedEngine:
    """Delegates to a rollout engine; adds the CPU seconds of each generate call to `self.cpu`."""

    def __init__(self, engine):
        self.engine, self.cpu = engine, 0.0
        self.capabilities = engine.capabilities

    def sync_weights(self, state_dict):
        self.engine.sync_weights(state_dict)

    def generate(self, *args, **kwargs):
        c0 = time.process_time()
        out = self.engine.generate(*args, **kwargs)
        self.cpu += time.process_time() - c0
        return out


def checkpoint(ckpt: Path, d: int, out: Path) -> Path:
    """The cold start itself at its own width, else a random init of the architecture scaled to width d."""
    from rl_core.policy.model import MoEPolicy, save_pretrained

    base = json.loads((ckpt / "config.json").read_text())
    if d == base["hidden_size"]:
        return ckpt
    cfg = {**base, "hidden_size": d, "moe_intermediate_size": d, "num_attention_heads": d // 32,
           "num_key_value_heads": max(1, d // 64), "head_dim": 32,
           "intermediate_size": d * base["num_experts_per_tok"]}
    return save_pretrained(MoEPolicy(cfg, seed=0), out / f"d{d}", ckpt / "tokenizer.json")


def model_overrides(path: Path) -> dict:
    hf = json.loads((path / "config.json").read_text())
    keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "moe_intermediate_size")
    return {k: hf[k] for k in keys}


def step_point(s: dict, init: Path, B: int, L: int, rollout: str = "fp32", train: str = "fp32") -> dict:
    """Median CPU s per global step after `warmup`: B prompts x G responses of L tokens, N mini-batches."""
    from rl_core import config as C
    from rl_core.train import Arm, RunFiles

    N = s["N"]
    cfg = C.resolve({
        "init": str(init), "task": s["task"], "model": model_overrides(init),
        "rollout": {"precision": rollout, "max_new_tokens": L, "group_size": s["G"]},
        "train": {"batch_prompts": B, "n_minibatches": N, "lr": 1e-12, "seed": 0, "threads": s["threads"],
                  "steps": N * (s["warmup"] + s["steps"]), "precision": train},
    })
    with tempfile.TemporaryDirectory() as tmp:
        arm = Arm(cfg, RunFiles(Path(tmp)))
        arm.engine = CpuTimedEngine(arm.engine)
        arm.engine.engine.eos_token_id = -1  # no sampled token equals it: every response has L tokens
        for _ in range(s["warmup"]):
            arm.global_step_rows()
        cpus, rollouts, prompt_tokens = [], [], []
        for _ in range(s["steps"]):
            prompt_tokens.append(s["G"] * sum(len(arm.task.encode_prompt(p)) for p in arm.problems()))
            arm.engine.cpu, c0 = 0.0, time.process_time()
            arm.global_step_rows()
            cpus.append(time.process_time() - c0)
            rollouts.append(arm.engine.cpu)
    return {"B": B, "L": L, "G": s["G"], "N": N, "rollout_precision": rollout, "train_precision": train,
            "step_s": statistics.median(cpus), "rollout_s": statistics.median(rollouts),
            "prompt_tokens": statistics.median(prompt_tokens) / s["G"] / B / N, "cpus": cpus}


def rollout_formats(s: dict, init: Path, B: int, L: int) -> dict:
    """CPU seconds of one generate call of N x B x G prompts, exactly L tokens, per rollout format."""
    import torch

    from rl_core import config as C
    from rl_core.rollout.embedded import EmbeddedRolloutEngine
    from rl_core.tasks import make_task

    task = make_task(C.resolve({"task": s["task"]}).task)
    prompts = [task.encode_prompt(p) for p in task.train_problems[: s["N"] * B] for _ in range(s["G"])]
    out = {}
    for fmt in s["formats"]:
        engine = EmbeddedRolloutEngine.from_pretrained(init, fmt)
        engine.eos_token_id = -1
        engine.generate(prompts, L, 1.0, torch.Generator().manual_seed(0))  # warm-up
        cpus = []
        for rep in range(2):
            c0 = time.process_time()
            engine.generate(prompts, L, 1.0, torch.Generator().manual_seed(rep + 1))
            cpus.append(time.process_time() - c0)
        out[fmt] = min(cpus)
    return out


def coldstart_steps(s: dict, init: Path) -> dict:
    """CPU seconds of one pretraining step and one SFT step (chain teacher) at pipeline batch_size."""
    from rl_core import coldstart
    from rl_core import config as C
    from rl_core.policy.model import load_pretrained
    from rl_core.tasks import make_task

    cs = s["coldstart"]
    task = make_task(C.resolve({"task": s["task"]}).task)
    batches = {"pretrain": coldstart.pretrain_batches(task, 0, cs["batch_size"]),
               "sft": coldstart.sft_batches(coldstart.distillation_set(task, "chain", 0), 0, cs["batch_size"],
                                            task.pad_id)}
    out = {}
    for stage, it in batches.items():
        model = load_pretrained(init)
        coldstart.train_lm(model, it, 1, 1e-12, f"warm-up {stage}")
        c0 = time.process_time()
        coldstart.train_lm(model, it, cs["steps"], 1e-12, stage)
        out[f"{stage}_step_s"] = (time.process_time() - c0) / cs["steps"]
    out["batch_size"] = cs["batch_size"]
    return out


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    ckpt = Path(s["ckpt"])
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        inits = {p["d"]: None for p in s["points"]}
        for d in inits:
            inits[d] = checkpoint(ckpt, d, Path(tmp))
        for p in s["points"]:
            t0 = time.perf_counter()
            points.append({"d": p["d"], **step_point(s, inits[p["d"]], p["B"], p["L"])})
            print(f"[scaling] d={p['d']} B={p['B']} L={p['L']}: {points[-1]['step_s']:.2f} cpu s/step "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        first = s["points"][0]
        stress = {"d": first["d"], **step_point(s, inits[first["d"]], first["B"], first["L"], "fp8", "bf16")}
        formats = rollout_formats(s, inits[first["d"]], first["B"], first["L"])
        cold = coldstart_steps(s, inits[first["d"]])
    emit({"points": points, "stress": stress, "formats": formats, "coldstart": cold})


if __name__ == "__main__":
    main()
