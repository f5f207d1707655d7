"""`make bench`: the platform's performance figures, measured side by side in one run on this machine.

    .venv/bin/python bench/driver.py [--threads 1] [--out results/bench] [--only rl_step,rollout,...,profile]

Every measurement runs in its own child process (a helper under bench/, see each file's docstring) with
the same fixed torch thread count; peers run in their own virtual environments (TRL in .venv-peers, vLLM
in .venv-vllm) and are reported as "not installed" where those are missing. On a shared machine only the
RATIOS are meaningful: both sides of a ratio are measured in turns in the same run, and with one thread
(the default) seconds are CPU seconds of the measured process (time.process_time), so time spent waiting
for a core while other jobs run is left out on both sides; bench.json keeps the wall-clock figures too.

1. rl_step: seconds per global step (B prompts x G samples x up to L tokens, N optimizer steps) of
   rl_core.train.Arm vs trl.GRPOTrainer on the same checkpoint, reward, B, G, L, N, loss (grpo), beta=0;
   and the limit: the step's weight-matmul FLOPs over the measured matmul peak (:func:`step_bound`).
2. rollout: tokens/s of the embedded rollout engine vs transformers `generate` and vLLM (CPU build), the
   same prompts and exactly L new tokens per sequence (EOS disabled on every side).
3. mfu: FLOP/s of the training engine's forward+backward over the measured fp32 matmul peak.
4. arm: one arm at the `mini` scale end to end: share of wall time outside RL steps (evals excluded, the
   grid's one MLflow mirror process shared by its runs), peak RSS.
5. scaling: RL step time against width, batch and response length, each rollout format, the cold start's
   steps (bench/scaling_report.py); rl_core.orchestration.cost fits the grid cost model to them (bench.json
   `cost_model`, used by `python -m rl_core.orchestration.grid GRID --estimate`).
6. profile: where the wall time of two paper arms goes (fig1 MiniRL at N=1, fig4 MiniRL + R2 at N=8; fp8
   rollout, bf16 trainer): process start, imports, setup, rollout, pi_old, updates, evals, checkpoints
   (bench/arm_profile.py, a few global steps projected onto the whole mini arm).

All of it starts from a small cold start built here (ModelConfig defaults: the `mini` model), cached under
OUT/coldstart. Writes OUT/bench.json (every raw figure plus the table) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

# This checkout's rl_core, whatever else is installed (as bench/common.py): run as a script, sys.path[0] is
# bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaling_report import SCALING, arm_check, format_scaling  # noqa: E402

from rl_core import config as C  # noqa: E402
from rl_core.orchestration import cost  # noqa: E402
from rl_core.paths import REPO  # noqa: E402
from rl_core.policy.model import config_value  # noqa: E402

MARK = "BENCH_JSON "
TASK = {"n_train": 512, "n_bench": 128}  # n_bench >= eval.n_problems (128)
COLDSTART = {"task": TASK, "pipeline": {"pretrain_steps": 30, "sft_steps": 100, "batch_size": 32,
                                        "sft_lr": 3e-3}}
# lr ~ 0: the policy stays put, so both sides sample the same length distribution every step (the
# same expected work), while every optimizer step still does its full arithmetic.
RL_STEP = {"B": 8, "G": 8, "L": 48, "N": 4, "warmup": 1, "steps": 3, "lr": 1e-12, "seed": 0}
ROLLOUT = {"prompts": 16, "G": 8, "L": 48, "reps": 5}
MFU = {"B": 64, "T": 64, "rounds": 3, "peak_n": 1024}
VLLM_DTYPES = {"ours-fp32": "float32", "ours-bf16": "bfloat16"}  # our rollout precision -> vLLM dtype
ARM_STEPS = 16  # two global steps at N = 8; the full `mini` arm has the preset's train.steps
PAPER_GRID = REPO / "experiments" / "paper.yaml"


# ------------------------------------------------------------------------------------------ FLOPs


def active_params(cfg: dict) -> int:
    """Weights one token multiplies through (matmuls only): per layer q, k, v, o projections, the router,
    k of the E SwiGLU experts (gate, up, down); plus the lm_head. Embedding lookups and norms are not
    matmuls and are left out."""
    d, H, Hkv, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, k, inter = config_value(cfg, "num_experts"), cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]
    per_layer = d * H * D + 2 * d * Hkv * D + H * D * d + d * E + k * 3 * d * inter
    return cfg["num_hidden_layers"] * per_layer + d * cfg["vocab_size"]


def train_flops_per_token(cfg: dict, T: int) -> int:
    """Forward+backward FLOPs per token of a length-T sequence: 6 x active params (2 forward, 4 backward
    per weight) + 12 x layers x T x (H x head_dim) for attention (QK^T and PV, 2 x T x H x D each forward,
    x3 with backward). T counts every key position: the engine's attention (SDPA with an explicit mask)
    computes the full T x T score matrix, so causal masking saves nothing here."""
    attn = 12 * cfg["num_hidden_layers"] * T * cfg["num_attention_heads"] * cfg["head_dim"]
    return 6 * active_params(cfg) + attn


def step_bound(cfg: dict, prompt_tokens: float, response_tokens: float, N: int) -> float:
    """FLOPs a global step cannot do without: the weight matmuls of active parameters (2 per weight and
    token forward, 6 forward+backward) over the real tokens only. Rollout: every prompt and generated
    token once; pi_old pass: mini-batches 2..N forward; updates: all tokens forward+backward. Attention,
    norms, softmax, sampling and the optimizer are left out, so time = FLOPs / matmul peak is a lower
    bound no implementation on this machine can beat."""
    tokens = prompt_tokens + response_tokens
    return active_params(cfg) * tokens * (2 + 2 * (N - 1) / N + 6)


# ------------------------------------------------------------------------------------------ helpers


def parse_result(stdout: str) -> dict:
    """The last `BENCH_JSON {...}` line a helper printed."""
    lines = [x for x in stdout.splitlines() if x.startswith(MARK)]
    if not lines:
        raise ValueError("helper printed no BENCH_JSON line")
    return json.loads(lines[-1][len(MARK):])


def run_helper(python: Path, script: str, spec: dict, threads: int, timeout: float = 600) -> dict:
    """Run bench/<script> with `python` on `spec`; {"error": ...} instead of raising."""
    if not Path(python).exists():
        return {"error": "not installed", "python": str(python)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    # Its own session, killed whole afterwards: a helper's children (vLLM's engine process) must not
    # outlive it and share the cores with the next measurement (one did: the training FLOP/s after the
    # vLLM rollout read 0.4x its value measured alone).
    proc = subprocess.Popen([str(python), str(REPO / "bench" / script), json.dumps(spec)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        return parse_result(stdout)
    except ValueError:
        return {"error": f"exit code {proc.returncode}, no result", "stderr_tail": stderr[-2000:]}


def build_coldstart(out: Path, threads: int) -> Path:
    """Pretrain + SFT ('chain' teacher) a small cold start of the default model; cached by config hash."""
    from rl_core import coldstart

    cfg = C.resolve(COLDSTART, {"train": {"threads": threads}})
    key = hashlib.sha256(C.to_json(cfg).encode()).hexdigest()[:12]
    sft = out / f"coldstart-{key}" / "sft"
    if not (sft / "model.safetensors").exists():
        import torch

        torch.set_num_threads(threads)
        coldstart.pretrain(cfg, sft.parent / "base")
        coldstart.sft(cfg, "chain", sft.parent / "base", sft)
    return sft


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


# ----------------------------------------------------------------------------------- measurements


#: Our sides of the RL step: extra spec keys. The compiled ones run in the first round only (each process
#: pays its compile in the warm-up step: first_step_cpu_s).
OURS = {"ours": {}, "ours_bf16": {"train_precision": "bf16"}, "ours_compiled": {"compile": True},
        "ours_bf16_compiled": {"train_precision": "bf16", "compile": True}}


def bench_rl_step(ckpt: Path, threads: int, peers: Path, rounds: int = 2) -> dict:
    """Ours (fp32 and bf16 training engine, eager and train.compile) and TRL in turns, `rounds` processes
    each (compiled: one); s/global step = median over every timed step."""
    spec = {**RL_STEP, "ckpt": str(ckpt), "task": TASK, "threads": threads}
    out: dict = {"spec": spec, "trl": [], **{side: [] for side in OURS}}
    for round_ in range(rounds):
        for side, extra in OURS.items():
            if round_ == 0 or "compile" not in extra:
                out[side].append(run_helper(Path(sys.executable), "rl_step_ours.py", {**spec, **extra},
                                            threads))
        out["trl"].append(run_helper(peers, "rl_step_trl.py", spec, threads))
    for side in (*OURS, "trl"):
        ok = [r for r in out[side] if "error" not in r]
        if side in OURS:
            out[f"{side}_first_step_cpu_s"] = median([r["warmup_cpus"][0] for r in ok]) if ok else None
        out[f"{side}_wall_s"] = median([w for r in ok for w in r["walls"]]) if ok else None
        out[f"{side}_cpu_s"] = median([w for r in ok for w in r["cpus"]]) if ok else None
        out[f"{side}_s"] = out[f"{side}_cpu_s" if threads == 1 else f"{side}_wall_s"]
        out[f"{side}_tokens"] = median([r["response_tokens_per_step"] for r in ok]) if ok else None
    ok = [r for r in out["ours"] if "error" not in r]
    if ok:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        out["bound_flops"] = step_bound(cfg, median([r["prompt_tokens_per_step"] for r in ok]),
                                        out["ours_tokens"], RL_STEP["N"])
    return out


def bench_rollout(ckpt: Path, threads: int, vllm_python: Path) -> dict:
    from rl_core.tasks import make_task

    task = make_task(C.resolve({"task": TASK}).task)
    prompts = [task.encode_prompt(p) for p in task.train_problems[:ROLLOUT["prompts"]]
               for _ in range(ROLLOUT["G"])]
    spec = {"ckpt": str(ckpt), "prompts": prompts, "L": ROLLOUT["L"], "threads": threads,
            "reps": ROLLOUT["reps"], "impls": ["ours-fp32", "ours-bf16", "hf"]}
    rate = "tokens_per_cpu_s" if threads == 1 else "tokens_per_s"
    out = {"batch": len(prompts), "L": ROLLOUT["L"], "rate": rate,
           "main": run_helper(Path(sys.executable), "rollout.py", spec, threads)}
    out["vllm"] = run_helper(vllm_python, "rollout_vllm.py", {**spec, "dtypes": list(VLLM_DTYPES.values())},
                             threads)
    # ours again right after vLLM: the vLLM ratio compares runs a minute apart, this brackets them.
    out["main_after"] = run_helper(Path(sys.executable), "rollout.py",
                                   {**spec, "impls": list(VLLM_DTYPES)}, threads)
    return out


def bench_mfu(ckpt: Path, threads: int) -> dict:
    return run_helper(Path(sys.executable), "mfu.py", {**MFU, "ckpt": str(ckpt), "threads": threads},
                      threads)


def bench_scaling(ckpt: Path, threads: int, task: dict) -> dict:
    spec = {**SCALING, "ckpt": str(ckpt), "task": task, "threads": threads}
    return run_helper(Path(sys.executable), "scaling.py", spec, threads, timeout=900)


def bench_profile(ckpt: Path, threads: int) -> dict:
    return run_helper(Path(sys.executable), "arm_profile.py",
                      {"init": str(ckpt), "threads": threads, "global_steps": 2}, threads, timeout=1200)


def mini_steps() -> int:
    """train.steps of the `mini` preset: the length of a real arm, to project the overhead onto."""
    return C.resolve(_mini()).train.steps


def _mini() -> dict:
    presets = REPO / "experiments" / "presets.yaml"
    return (C.yaml_load(presets.read_text()) or {}).get("mini", {}) if presets.exists() else {}


def arm_config(ckpt: Path, threads: int) -> dict:
    """The `mini` preset scale (experiments/presets.yaml when present) at N = 8, shortened to ARM_STEPS."""
    mini = _mini()
    over = {"init": str(ckpt), "task": TASK, "train": {"n_minibatches": 8, "steps": ARM_STEPS,
                                                       "threads": threads}}
    return C.to_dict(C.resolve({"train": {"batch_prompts": 8}, "rollout": {"group_size": 8}}, mini, over))


def bench_arm(ckpt: Path, threads: int, work: Path) -> dict:
    from rl_core.orchestration.grid import load_grid

    spec = {"config": arm_config(ckpt, threads), "threads": threads, "workdir": str(work),
            "grid_runs": len(load_grid(PAPER_GRID).runs)}
    out = run_helper(Path(sys.executable), "arm.py", spec, threads)
    return out if "error" in out else {**out, "mini_steps": mini_steps()}


# ------------------------------------------------------------------------------------------ table


def overhead(arm: dict, steps_scale: float = 1.0) -> float:
    """Share of an arm's wall outside RL steps, evals excluded, its share of the grid's MLflow mirror
    included; RL time scaled by `steps_scale` for a longer arm (the fixed part, checkpoints included, is
    not: one more checkpoint per 16 steps costs ~15 ms)."""
    outside = arm["train_wall_s"] - arm["rl_wall_s"] - arm["eval_s_total"] + arm["mirror_share_s"]
    total = outside + arm["rl_wall_s"] * (steps_scale - 1) + arm["rl_wall_s"]
    return outside / total


def vllm_rows(ro: dict) -> list[dict]:
    """ours-<p> vs vLLM at the same precision; ours = the median of the runs before and after vLLM."""
    v, rows, rate = ro.get("vllm", {}), [], ro.get("rate", "tokens_per_s")
    for impl, dtype in VLLM_DTYPES.items():
        ours = ro["main"][impl][rate]
        after = ro.get("main_after", {}).get(impl, {}).get(rate)
        ours = median([ours, after]) if after else ours
        vr = v.get("results", {}).get(dtype)
        if vr is None:
            why = "not installed" if v.get("error") == "not installed" else v.get("error") or v.get("errors")
            rows.append(_row(f"rollout tok/s {impl} vs vLLM {dtype}", ours, f"vllm: {why}", None, "> 1x",
                             None))
        else:
            r = ours / vr[rate]
            rows.append(_row(f"rollout tok/s {impl} vs vLLM {v['vllm']} {dtype}", ours, vr[rate], r,
                             "> 1x", r > 1))
    return rows


def _row(name, ours, peer, ratio, goal, met, unit=""):
    return {"measurement": name, "ours": ours, "peer": peer, "ratio": ratio, "goal": goal, "met": met,
            "unit": unit}


def table(res: dict) -> list[dict]:
    """The summary rows: measurement | ours | peer | ratio | goal | met?"""
    rows = []
    rl = res.get("rl_step")
    if rl:
        o, t = rl.get("ours_s"), rl.get("trl_s")
        ratio = t / o if o and t else None
        rows.append(_row("RL global step, s (B8 G8 L48 N4)", o, t if t else "trl: not installed", ratio,
                         ">= 5x", ratio is not None and ratio >= 5))
        b = rl.get("ours_bf16_s")
        if o and b:
            rows.append(_row("RL global step, s: ours train.precision bf16 (peer: ours fp32)", b, o, o / b,
                             "-", None))
        for side, eager, name in (("ours_compiled", "ours", "fp32"),
                                  ("ours_bf16_compiled", "ours_bf16", "bf16")):
            c, e = rl.get(f"{side}_s"), rl.get(f"{eager}_s")
            if c and e:
                rows.append(_row(f"RL global step, s: ours train.compile {name} (peer: eager)", c, e, e / c,
                                 "-", None))
                rows.append(_row(f"first global step (compiles), CPU s: train.compile {name} (peer: eager)",
                                 rl[f"{side}_first_step_cpu_s"], rl[f"{eager}_first_step_cpu_s"], None, "-",
                                 None))
                if t:
                    rows.append(_row(f"RL global step, s: ours train.compile {name} vs TRL", c, t, t / c,
                                     ">= 5x", t / c >= 5))
        mf = res.get("mfu")
        if o and mf and "error" not in mf and rl.get("ours"):
            bound = rl["bound_flops"] / mf["peak_flops"]
            rows.append(_row("RL step, s: ours vs the limit (weight FLOPs / matmul peak)", o, bound,
                             o / bound, "-", None))
            if t:
                rows.append(_row("RL step, s: TRL vs the limit (the most any trainer can beat TRL by)", t,
                                 bound, t / bound, ">= 5x possible?", t / bound >= 5))
    ro = res.get("rollout")
    if ro and "error" not in ro["main"]:
        m, rate = ro["main"], ro.get("rate", "tokens_per_s")
        for impl in ("ours-fp32", "ours-bf16"):
            hf = m["hf"][rate]
            r = m[impl][rate] / hf
            rows.append(_row(f"rollout tok/s {impl} vs HF generate fp32", m[impl][rate], hf, r, "> 1x",
                             r > 1))
        rows += vllm_rows(ro)
    mf = res.get("mfu")
    if mf and "error" not in mf:
        r = mf["achieved_flops"] / mf["peak_flops"]
        rows.append(_row("train fwd+bwd GFLOP/s vs fp32 matmul peak", mf["achieved_flops"] / 1e9,
                         mf["peak_flops"] / 1e9, r, ">= 0.5", r >= 0.5))
    arm = res.get("arm")
    if arm and "error" not in arm:
        steps = arm["mini_steps"]
        short, full = overhead(arm), overhead(arm, steps / ARM_STEPS)
        rows.append(_row(f"orchestration overhead, {ARM_STEPS}-step arm", short, None, None, "< 3%",
                         short < 0.03))
        rows.append(_row(f"orchestration overhead, {steps}-step mini arm (projected)", full, None, None,
                         "< 3%", full < 0.03))
        rows.append(_row("import rl_core.train, s", arm["import_train_s"], None, None, "-", None))
        rows.append(_row("peak RSS, mini arm (N=8), MiB", arm["peak_rss_mb"], None, None, "-", None))
    ck = res.get("cost_check")
    if ck:
        pred, meas = ck["predicted_s"], ck["measured_s"]
        rows.append(_row(f"cost model: CPU s of the {ARM_STEPS}-step arm, evals in (peer: measured)", pred,
                         meas, pred / meas, "~ 1x", None))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    cols = ("measurement", "ours", "peer", "ratio", "goal", "met")
    cells = [[_fmt(r[c]) if c != "ratio" or r[c] is None else f"{r[c]:.2f}x" for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(c) for c in cells])


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/driver.py", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every measured process")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    ap.add_argument("--only", default="rl_step,rollout,mfu,arm,scaling,profile",
                    help="comma-separated subset")
    ap.add_argument("--peers-python", type=Path, default=REPO / ".venv-peers" / "bin" / "python")
    ap.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict = {"threads": args.threads, "machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    print(f"[bench] threads={args.threads}; building the cold start ...", flush=True)
    ckpt = build_coldstart(args.out, args.threads)
    res["ckpt"] = str(ckpt)
    steps = {"rl_step": lambda: bench_rl_step(ckpt, args.threads, args.peers_python),
             "rollout": lambda: bench_rollout(ckpt, args.threads, args.vllm_python),
             "mfu": lambda: bench_mfu(ckpt, args.threads),
             "arm": lambda: bench_arm(ckpt, args.threads, args.out / "arm"),
             "scaling": lambda: bench_scaling(ckpt, args.threads, TASK),
             "profile": lambda: bench_profile(ckpt, args.threads)}
    for name, fn in steps.items():
        if name in only:
            t = time.perf_counter()
            print(f"[bench] {name} ...", flush=True)
            res[name] = fn()
            print(f"[bench] {name} done in {time.perf_counter() - t:.0f}s", flush=True)
    res["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t0
    sc = res.get("scaling")
    if sc and "error" not in sc:
        res["cost_model"] = cost.fit(sc, res.get("rl_step"), res.get("arm"))
        if res.get("arm") and "error" not in res["arm"]:
            res["cost_check"] = arm_check(res["cost_model"], res["arm"], arm_config(ckpt, args.threads))
    res["table"] = table(res)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2))
    print(format_table(res["table"]))
    if "cost_model" in res:
        print(format_scaling(sc, res["cost_model"]))
    prof = res.get("profile")
    if prof:
        print("\nWhere a mini arm's time goes (bench/arm_profile.py; fp8 rollout, bf16 trainer):")
        print(prof.get("error") or "\n".join(a["text"] for a in prof["arms"]))
    print(f"[bench] {args.threads} thread(s), load average {res['loadavg_start'][0]:.1f} -> "
          f"{res['loadavg_end'][0]:.1f}; {res['wall_s']:.0f}s; wrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
