"""`make gpu-check`: every GPU figure in one prepared script that fits in ten minutes of GPU time.

    python bench/gpu_check.py [--steps 4] [--out results/bench/gpu_check.json] [--budget 540]
    python bench/gpu_check.py --rehearse      the same logic on this CPU (tiny shapes, cpu, gloo)

Without a CUDA GPU (and without --rehearse) it prints one line, "gpu-check: no CUDA GPU: skipped (...)", and
exits 0. With one it builds a tiny-MoE cold start (pretrain + SFT, on the CPU) whose quantised widths are
whole 128-blocks (so the block-FP8 checkpoint fits), then runs each row as its own `python -m rl_core.train`
process and prints one line per row (wall, RL time, tokens/s, the train-inference KL k1/k3), a table of all
of them at the end, and writes them as JSON. A row that cannot run here prints "skipped:" and why.

* api:             the torch APIs the GPU path calls, probed on this torch (the lent machine's image has
                   torch 2.11; the project pins 2.13): present, or missing with its fallback;
* cpu_fp32:        the reference: train.device=cpu, fp32 trainer, embedded bf16 rollout engine;
* cuda_bf16:       train.device=cuda, bf16 trainer (autocast), the embedded bf16 engine on the GPU;
* torchrun_xN:     the same under `torchrun --nproc-per-node N` (FSDP2) over the N GPUs present
                   (train.world_size N; the rehearsal: 2 gloo ranks);
* embedded_fp8 / embedded_fp8_ckpt: the embedded engine at fp8, synced from memory / through the block-FP8
                   checkpoint (rollout.weight_sync=checkpoint): their KL side by side (equal by construction);
* vllm_fp32 / vllm_bf16 / vllm_fp8_block: rollout.engine=vllm (the GPU build, from $VLLM_PYTHON, this
                   Python or .venv-vllm) with the cuda bf16 trainer; fp8 served from the block-FP8 checkpoint;
* megatron_bf16:   train.engine=megatron, train.precision=bf16 (Float16Module, fp32 masters), where
                   megatron-core imports in this Python (carry its wheel: it is pure Python).

Checks (exit 1 when one fails): every row that ran completed on the device it was asked for; the fp32
trainer's log-probs on the GPU equal the CPU's to 1e-4 nats on a sampled batch; each row's train-inference
KL k3 is below 0.05 (a bf16 engine's gap is about 1e-3 on a tiny model: docs/results.md, "The engines'
agreement"; fp8's is larger, still far below); the two embedded fp8 rows' KL are equal (the same weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = {  # head_dim 64 (vLLM's GPU attention takes it); every quantised width 128: the block-FP8 file fits
    "model": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
              "head_dim": 64, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128},
    "task": {"min_operands": 2, "max_operands": 3, "max_operand": 3, "ops": "+", "n_train": 64,
             "n_bench": 16},
    "pipeline": {"pretrain_steps": 60, "sft_steps": 120, "batch_size": 32, "sft_lr": 3e-3},
    "rollout": {"max_new_tokens": 16, "group_size": 4, "precision": "bf16"},
    "train": {"batch_prompts": 4, "n_minibatches": 1, "lr": 1e-3},
    "eval": {"every": 1000, "k": 1, "n_problems": 8}, "checkpoint_every": 1000,
}
REHEARSAL = {"pipeline": {"pretrain_steps": 10, "sft_steps": 10}}  # tiny: the logic, not the numbers
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


def cold_start(root: Path, rehearse: bool) -> Path:
    import torch

    from rl_core import coldstart
    from rl_core import config as C

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    cfg = C.resolve(TINY, REHEARSAL if rehearse else {})
    coldstart.pretrain(cfg, root / "base")
    coldstart.sft(cfg, "terse", root / "base", root / "sft")
    return root / "sft"


#: torch APIs the GPU path calls that are recent (where rl_core calls them), each with what stands in for it
#: where it is missing. Probed at run time: the lent machine's torch (2.11) answers for itself.
APIS = {
    "torch.nn.functional.grouped_mm": ("rl_core/policy/model.py, rl_core/rollout/formats.py: the experts",
                                       "rl_core/policy/grouped.py: torch._grouped_mm (same signature), "
                                       "else a loop over the experts (tested against grouped_mm)"),
    "torch.distributed.fsdp.fully_shard": ("rl_core/training/distributed.py: FSDP2", "none: torchrun rows "
                                           "are skipped"),
    "torch.distributed.fsdp.FSDPModule.set_force_sum_reduction_for_comms": (
        "rl_core/training/distributed.py: sum-only collectives (gloo)", "nccl needs it not: the default "
        "reduce-scatter with divide factor 1"),
    "torch.float8_e4m3fn": ("rl_core/rollout/formats.py, fp8_checkpoint.py", "none: fp8 rows skipped"),
    "torch.float4_e2m1fn_x2": ("rl_core/rollout/formats.py: mxfp4 (not a row here)", "not needed here"),
    "torch.Tensor.register_post_accumulate_grad_hook": ("Megatron bf16: fp32 main gradients",
                                                        "none: megatron_bf16 skipped"),
    "torch._inductor.config.emulate_precision_casts": ("train.compile only (not a row here)", "not needed"),
}


def probe_apis() -> dict[str, bool]:
    import importlib

    out = {}
    for dotted in APIS:
        parts, obj, ok = dotted.split("."), None, True
        for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                rest = parts[i:]
                break
            except ImportError:
                continue
        for name in rest:
            if not hasattr(obj, name):
                ok = False
                break
            obj = getattr(obj, name)
        out[dotted] = ok
    return out


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
        if "skipped" in r:
            continue
        if "error" in r:
            problems.append(f"{r['arm']}: {r['error']}")
        elif r["status"] != "completed" or not str(r["device"]).startswith(wanted[r["arm"]]):
            problems.append(f"{r['arm']}: status {r['status']}, device {r['device']} "
                            f"(asked {wanted[r['arm']]})")
        elif not r["kl_k3"] < KL_MAX:
            problems.append(f"{r['arm']}: train-inference KL k3 {r['kl_k3']:.2e} >= {KL_MAX}")
    fp8 = {r["arm"]: r for r in results if r["arm"].startswith("embedded_fp8") and "kl_k3" in r}
    if len(fp8) == 2 and fp8["embedded_fp8"]["kl_k3"] != fp8["embedded_fp8_ckpt"]["kl_k3"]:
        problems.append(f"embedded fp8 from memory and from the checkpoint differ: KL k3 "
                        f"{fp8['embedded_fp8']['kl_k3']:.3e} vs {fp8['embedded_fp8_ckpt']['kl_k3']:.3e}")
    return problems


def merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for section, values in layer.items():
            if isinstance(values, dict):
                out.setdefault(section, {}).update(values)
            else:
                out[section] = values
    return out


def megatron_skip(rehearse: bool) -> str | None:
    import importlib.util

    if rehearse:
        return ("megatron-core on a CPU runs only under the test shim (make test-megatron runs its bf16 "
                "parity)")
    try:
        if importlib.util.find_spec("megatron.core") is None:
            raise ImportError
    except ImportError:
        return "megatron-core is not importable in this Python (carry its wheel: megatron_core-0.16.1)"
    return None


def plan(args, torch, ckpt: Path) -> tuple[list, list[dict]]:
    """(rows to run: name, command, overrides, device), [rows skipped with why]."""
    gpu = "cpu" if args.rehearse else "cuda"
    py = [sys.executable]
    base = {"train": {"steps": args.steps}, "init": str(ckpt), **(REHEARSAL if args.rehearse else {})}
    bf16 = {"train": {"device": gpu, "precision": "bf16"}}
    rows = [("cpu_fp32", py, merged(base, {"train": {"device": "cpu", "precision": "fp32"}}), "cpu"),
            ("cuda_bf16", py, merged(base, bf16), gpu)]
    skipped = []
    n = 2 if args.rehearse else torch.cuda.device_count()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--standalone"]
    prompts = math.lcm(4, n)  # a mini-batch splits over the ranks (train.batch_prompts % world_size == 0)
    rows.append((f"torchrun_x{n}", torchrun,
                 merged(base, bf16, {"train": {"world_size": n, "batch_prompts": prompts}}), gpu))
    for name, sync in (("embedded_fp8", "memory"), ("embedded_fp8_ckpt", "checkpoint")):
        fp8 = {"rollout": {"precision": "fp8", "weight_sync": sync}}
        rows.append((name, py, merged(base, bf16, fp8), gpu))
    vpy = None if args.rehearse else vllm_python()
    for name, precision, sync in (("vllm_fp32", "fp32", "memory"), ("vllm_bf16", "bf16", "memory"),
                                  ("vllm_fp8_block", "fp8", "checkpoint")):
        if vpy is None:
            why = ("the rehearsal runs no vLLM" if args.rehearse else
                   "no Python with vLLM's GPU build here (the lent image has none: set VLLM_PYTHON)")
            skipped.append({"arm": name, "skipped": why})
            continue
        rows.append((name, [vpy], merged(base, bf16, {"train": {"steps": 2}},
                                         {"rollout": {"engine": "vllm", "precision": precision,
                                                      "weight_sync": sync}}), gpu))
    if (why := megatron_skip(args.rehearse)) is not None:
        skipped.append({"arm": "megatron_bf16", "skipped": why})
    else:
        rows.append(("megatron_bf16", py, merged(base, bf16, {"train": {"engine": "megatron"}}), gpu))
    return rows, skipped


def line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['arm']}: skipped: {r['skipped']}"
    if "error" in r:
        return f"{r['arm']}: FAILED: {r['error']}"
    return (f"{r['arm']}: {r['device']} x{r['world_size']}, wall {r['wall_s']:.1f} s "
            f"(RL {r['rl_wall_s']:.1f} s; "
            f"rollout {r['rollout_s']:.3f} s, update {r['update_s']:.3f} s per step), "
            f"{r['tokens_per_s']:.0f} tok/s, KL k1 {r['kl_k1']:.2e} k3 {r['kl_k3']:.2e}")


def table(results: list[dict]) -> list[str]:
    out = [f"{'row':20s} {'device':8s} {'W':>2s} {'wall s':>7s} {'tok/s':>7s} {'KL k1':>9s} {'KL k3':>9s}"]
    for r in results:
        if "kl_k3" in r:
            out.append(f"{r['arm']:20s} {str(r['device']):8s} {r['world_size']:2d} {r['wall_s']:7.1f} "
                       f"{r['tokens_per_s']:7.0f} {r['kl_k1']:9.2e} {r['kl_k3']:9.2e}")
        else:
            out.append(f"{r['arm']:20s} {'skipped: ' + r['skipped'] if 'skipped' in r else 'FAILED'}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="gradient steps per row (vLLM: 2, it restarts)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "gpu_check.json")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per row")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds for the whole script: rows that would start later are skipped")
    ap.add_argument("--rehearse", action="store_true",
                    help="no GPU needed: every row's logic on the CPU (tiny shapes, cpu, gloo)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    import torch

    sys.path.insert(0, str(REPO))
    if args.rehearse:
        args.steps = min(args.steps, 2)
        say(f"rehearsal on the CPU (torch {torch.__version__}): the cuda rows run on the CPU, torchrun on "
            f"gloo")
    elif not torch.cuda.is_available():
        say(f"no CUDA GPU: skipped (torch {torch.__version__} sees none)")
        return 0
    else:
        say(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
    apis = probe_apis()
    for api, ok in apis.items():
        where, fallback = APIS[api]
        say(f"api {api}: {'present' if ok else 'MISSING, fallback: ' + fallback} ({where})")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        ckpt = cold_start(root / "coldstart", args.rehearse)
        diff = 0.0 if args.rehearse else logp_agreement(ckpt)
        say("fp32 trainer log-probs, cuda vs cpu: "
            + ("skipped: the rehearsal has no GPU" if args.rehearse else f"max |diff| {diff:.2e} nats"))
        rows, skipped = plan(args, torch, ckpt)
        for name, cmd, overrides, _ in rows:
            left = args.budget - (time.perf_counter() - t_start)
            if left < 30:
                r = {"arm": name, "skipped": f"out of the {args.budget:.0f} s budget"}
            else:
                r = run_arm(name, cmd, root / name, overrides, int(min(args.timeout, left)))
            results.append(r)
            say(line(r))
        for r in skipped:
            results.append(r)
            say(line(r))
    problems = check(results, {name: dev for name, _, _, dev in rows})
    if not diff < LOGP_TOL:
        problems.append(f"fp32 log-probs on cuda differ from cpu by {diff:.2e} nats (> {LOGP_TOL})")
    for text in table(results):
        say(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"logp_cuda_vs_cpu": diff, "apis": apis, "arms": results, "problems": problems,
              "rehearsal": args.rehearse, "torch": torch.__version__,
              "seconds": time.perf_counter() - t_start}
    args.out.write_text(json.dumps(report, indent=2))
    say(f"wrote {args.out} ({report['seconds']:.0f} s)")
    for p in problems:
        say(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
