"""`make gpu-check`: the training engine on an NVIDIA GPU, in one short script.

    python bench/gpu_check.py [--steps 4] [--out results/bench/gpu_check.json]

Without a CUDA GPU it prints one line, "gpu-check: no CUDA GPU: skipped (...)", and exits 0. With one it
builds a tiny-MoE cold start (pretrain + SFT, on the CPU, ~5 s) and runs these arms, each as its own
`python -m rl_core.train` process (clean GPU memory, honest start-up times), then prints one line per arm
(wall time, RL time, tokens/s, the train-inference KL k1/k3) and writes them as JSON:

* cpu_fp32:      the reference: train.device=cpu, fp32 trainer, embedded bf16 rollout engine;
* cuda_bf16:     train.device=cuda, bf16 trainer (autocast, as rl_core.training.scoring), the embedded bf16
                 engine on the GPU (the fallback without vLLM);
* cuda_bf16_x2:  the same under `torchrun --nproc-per-node 2` (FSDP2) where 2 GPUs are visible;
* vllm_bf16:     rollout.engine=vllm (the GPU build) with the cuda bf16 trainer, where a Python with vLLM's
                 GPU build is found ($VLLM_PYTHON, this one, or .venv-vllm/bin/python);
* megatron:      listed as not run: the Megatron-core training engine (train.engine=megatron, fp32 only)
                 lives in its own venv; `make test-megatron` checks it against the torch engine.

Checks (exit 1 when one fails): every arm completed and its summary records the device it was asked for;
the fp32 trainer's log-probs on the GPU equal the CPU's to 1e-4 nats on a sampled batch; each arm's
train-inference KL k3 is below 0.05 (a bf16 rollout engine's gap is about 1e-3 on a tiny
model: docs/results.md, "The engines' agreement").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = {  # head_dim 32: vLLM's GPU attention backends take it (16 they may not)
    "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 32, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    "task": {"min_operands": 2, "max_operands": 3, "max_operand": 3, "ops": "+", "n_train": 64,
             "n_bench": 16},
    "pipeline": {"pretrain_steps": 60, "sft_steps": 120, "batch_size": 32, "sft_lr": 3e-3},
    "rollout": {"max_new_tokens": 16, "group_size": 4, "precision": "bf16"},
    "train": {"batch_prompts": 4, "n_minibatches": 1, "lr": 1e-3},
    "eval": {"every": 1000, "k": 1, "n_problems": 8}, "checkpoint_every": 1000,
}
KL_MAX, LOGP_TOL = 0.05, 1e-4


def say(line: str) -> None:
    print(f"gpu-check: {line}", flush=True)


def vllm_python() -> str | None:
    """A Python whose vLLM is the GPU build, or None."""
    probe = "from rl_core.orchestration.capabilities import probe; print(probe().vllm_build)"
    for py in (os.environ.get("VLLM_PYTHON"), sys.executable, str(REPO / ".venv-vllm" / "bin" / "python")):
        if py and Path(py).exists():
            out = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=REPO)
            if out.returncode == 0 and out.stdout.strip() == "gpu":
                return py
    return None


def cold_start(root: Path) -> Path:
    import torch

    from rl_core import coldstart
    from rl_core import config as C

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    cfg = C.resolve(TINY)
    coldstart.pretrain(cfg, root / "base")
    coldstart.sft(cfg, "terse", root / "base", root / "sft")
    return root / "sft"


def run_arm(name: str, cmd: list[str], out: Path, overrides: dict, timeout: int) -> dict:
    """One arm as `CMD -m rl_core.train`; returns its figures, or {"error": ...}."""
    from rl_core import config as C

    cfg = C.to_dict(C.resolve(TINY, overrides))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([*cmd, "-m", "rl_core.train", "--out", str(out), "--config-json", json.dumps(cfg)],
                           capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"arm": name, "error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"arm": name, "error": (p.stderr or p.stdout).strip()[-600:]}
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "minibatch" in r]

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {"arm": name, "status": summary["status"], "device": summary.get("device"),
            "world_size": summary.get("world_size"), "process_s": time.perf_counter() - t0,
            "wall_s": summary["wall_s"], "rl_wall_s": summary["rl_wall_s"],
            "rollout_s": mean("perf/rollout_s"), "update_s": mean("perf/update_s"),
            "tokens_per_s": mean("perf/tokens_per_s"), "kl_k1": mean("kl/train_infer_k1"),
            "kl_k3": mean("kl/train_infer_k3")}


def logp_agreement(ckpt: Path) -> float:
    """Max |logp| difference of the fp32 trainer on cuda vs cpu on one sampled batch (nats)."""
    import torch

    from rl_core.policy.model import load_pretrained
    from rl_core.rollout.embedded import EmbeddedRolloutEngine
    from rl_core.training.scoring import token_logprobs

    policy = load_pretrained(ckpt)
    engine = EmbeddedRolloutEngine.from_model(policy, "fp32")
    ro = engine.generate([[3, 4, 5, 6]] * 8, 12, 1.0, torch.Generator().manual_seed(0))
    cpu = token_logprobs(policy, ro.input_ids, ro.attention_mask).logp
    gpu = token_logprobs(policy.cuda(), ro.input_ids.cuda(), ro.attention_mask.cuda()).logp.cpu()
    return float((cpu - gpu).abs().max())


def check(results: list[dict], wanted: dict[str, str]) -> list[str]:
    problems = []
    for r in results:
        if "error" in r:
            problems.append(f"{r['arm']}: {r['error']}")
        elif r["status"] != "completed" or not str(r["device"]).startswith(wanted[r["arm"]]):
            problems.append(f"{r['arm']}: status {r['status']}, device {r['device']} "
                            f"(asked {wanted[r['arm']]})")
        elif not r["kl_k3"] < KL_MAX:
            problems.append(f"{r['arm']}: train-inference KL k3 {r['kl_k3']:.2e} >= {KL_MAX}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="gradient steps per arm (vLLM: 2, it restarts)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "gpu_check.json")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per arm")
    ap.add_argument("--rehearse", action="store_true",
                    help="no GPU needed: every arm on the CPU (checks this script, not the GPU)")
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(REPO))
    gpu = "cpu" if args.rehearse else "cuda"
    if args.rehearse:
        say("rehearsal: the cuda arms run on the CPU")
    elif not torch.cuda.is_available():
        say(f"no CUDA GPU: skipped (torch {torch.__version__} sees none)")
        return 0
    else:
        say(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        ckpt = cold_start(root / "coldstart")
        diff = 0.0 if args.rehearse else logp_agreement(ckpt)
        say(f"fp32 trainer log-probs, cuda vs cpu: max |diff| {diff:.2e} nats")
        py, steps = [sys.executable], {"train": {"steps": args.steps}, "init": str(ckpt)}
        bf16 = {"train": {"device": gpu, "precision": "bf16"}}
        arms = [("cpu_fp32", py, {"train": {"device": "cpu", "precision": "fp32"}}, "cpu"),
                ("cuda_bf16", py, bf16, gpu)]
        if args.rehearse or torch.cuda.device_count() >= 2:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
            arms.append(("cuda_bf16_x2", torchrun, bf16, gpu))
        vpy = None if args.rehearse else vllm_python()
        if vpy:
            vllm = {"rollout": {"engine": "vllm"}, "train": {"device": gpu, "precision": "bf16", "steps": 2}}
            arms.append(("vllm_bf16", [vpy], vllm, gpu))
        else:
            say("vllm_bf16: skipped (no Python with vLLM's GPU build: set VLLM_PYTHON)")
        say("megatron: not run here (train.engine=megatron needs megatron-core: make test-megatron)")
        results = []
        for name, cmd, overrides, _ in arms:
            merged = json.loads(json.dumps(steps))
            for section, values in overrides.items():
                merged.setdefault(section, {}).update(values)
            r = run_arm(name, cmd, root / name, merged, args.timeout)
            results.append(r)
            if "error" in r:
                say(f"{name}: FAILED: {r['error']}")
            else:
                say(f"{name}: {r['device']} x{r['world_size']}, wall {r['wall_s']:.1f} s "
                    f"(RL {r['rl_wall_s']:.1f} s; rollout {r['rollout_s']:.3f} s, "
                    f"update {r['update_s']:.3f} s per step), "
                    f"{r['tokens_per_s']:.0f} tok/s, KL k1 {r['kl_k1']:.2e} k3 {r['kl_k3']:.2e}")
    problems = check(results, {name: dev for name, _, _, dev in arms})
    if not diff < LOGP_TOL:
        problems.append(f"fp32 log-probs on cuda differ from cpu by {diff:.2e} nats (> {LOGP_TOL})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"logp_cuda_vs_cpu": diff, "arms": results, "problems": problems, "rehearsal": args.rehearse}
    args.out.write_text(json.dumps(report, indent=2))
    say(f"wrote {args.out}")
    for p in problems:
        say(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
