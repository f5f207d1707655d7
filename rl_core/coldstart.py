"""Base pretraining, the three SFT cold starts, and the benchmark of a checkpoint.

    python -m rl_core.coldstart pretrain --out DIR [--config FILE] [--config-json STR] [KEY=VALUE ...]
    python -m rl_core.coldstart sft --teacher NAME --init DIR --out DIR2 [config options]
    python -m rl_core.coldstart eval --ckpt DIR --out FILE.json [config options]

* **Base** (``pretrain``): next-token prediction on documents of the task's language that are not
  solutions (:func:`pretrain_document`): arithmetic facts ("85*3=255", the steps a chain takes; "8*3+1=25",
  the columns a scratchpad writes; in the orders the teachers vary) of fresh random problems, shuffled,
  sometimes after an unrelated prompt,
  and one-step questions ("Q:85*3=255"). The base knows the arithmetic and the prompt but has never seen
  a multi-step answer or the answer marker: it scores 0 on the benchmark.
* **Cold starts** (``sft``): each teacher of :data:`rl_core.tasks.TEACHERS` solves every training prompt
  once (a fixed distillation set drawn from the seed); SFT minimises the cross-entropy of the response
  tokens (``<eos>`` included), never of the prompt. Every cold start gets the same steps and batch.

Both stages: AdamW (betas 0.9/0.99, no weight decay), linear warm-up over the first 5% of steps then
cosine decay to 10% of the peak (``pipeline.lr`` / ``pipeline.sft_lr``), gradient norm clipped at 1,
``pipeline.batch_size`` right-padded sequences per step. Every random draw (init, data, order) comes from
``pipeline.seed`` (and the problem sets from ``task.seed``), so the same config gives bitwise the same
weights on the same machine and ``train.threads``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_core import config as C
from rl_core.cli import check_checkpoint, config_from_args, guard
from rl_core.policy.model import MoEPolicy, hf_config, load_pretrained, save_pretrained
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.tasks import (
    COLUMNS,
    EVAL_SEED,
    TEACHERS,
    Task,
    apply_op,
    eval_fingerprint,
    evaluate,
    make_task,
    parse_expression,
    sample_problem,
    step_fact,
)
from rl_core.training.adamw import AdamW

DOC_CHARS = 40  # a pretraining document is facts appended until it is at least this long
WARMUP_FRAC = 0.05
QA_DOC_FRAC = 0.25
MIN_LR_FRAC = 0.1


# ---------------------------------------------------------------------------------------------- data


def problem_facts(prompt: str, rng: random.Random | None = None) -> tuple[list[str], list[str]]:
    """The facts a solution of `prompt` would use: its steps ("85*3=255") and their columns ("8*3+1=25"),
    with `rng` in the varied orders the teachers write them ("3*85=255", "1+3+4=8")."""
    operands, ops = parse_expression(prompt)
    value, steps, columns = operands[0], [], []
    for op, b in zip(ops, operands[1:], strict=True):
        new = apply_op(value, op, b)
        steps.append(step_fact(value, op, b, new, rng))
        columns.extend(COLUMNS[op](value, b, rng))
        value = new
    return steps, columns


def pretrain_document(task: Task, rng: random.Random) -> str:
    """One base document of at least DOC_CHARS characters, from fresh random problems, of one of two kinds:

    * facts: shuffled step and column facts ("85*3=255;8*3+1=25;..."), after an unrelated random prompt
      half of the time;
    * one-step questions (QA_DOC_FRAC of documents): "Q:85*3=255;Q:12+7=19;..." (no marker), so the base
      has seen single operations posed as prompts, but never a multi-step answer or the answer marker.
    """
    cfg = task.cfg

    def random_prompt() -> str:
        return sample_problem(rng, cfg, rng.randint(cfg.min_operands, cfg.max_operands)).prompt

    qa = rng.random() < QA_DOC_FRAC
    head = "" if qa or rng.random() < 0.5 else random_prompt()
    pool: list[str] = []
    while len(head) + len(";".join(pool)) < DOC_CHARS:
        steps, columns = problem_facts(random_prompt(), rng)
        pool += [f"Q:{f}" for f in steps] if qa else steps + columns
    rng.shuffle(pool)
    facts: list[str] = []
    while len(head) + len(";".join(facts)) < DOC_CHARS:
        facts.append(pool.pop())
    return head + ";".join(facts)


def pad_batch(seqs: list[list[int]], loss_from: list[int], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> input_ids (B, T), attention_mask (B, T), loss_mask (B, T-1).

    loss_mask[b, t] is 1 where token t+1 of row b is a target: at or after index loss_from[b] and real.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    target_pos = torch.arange(1, T)[None, :]
    loss_mask = (mask[:, 1:].bool() & (target_pos >= torch.tensor(loss_from)[:, None]))
    return ids, mask, loss_mask


def pretrain_batches(task: Task, seed: int, batch_size: int):
    """Endless pretraining batches; every token but the first of a document is a target."""
    rng = random.Random(f"pretrain-{seed}")
    while True:
        seqs = [task.encode(pretrain_document(task, rng)) + [task.eos_id] for _ in range(batch_size)]
        yield pad_batch(seqs, [1] * len(seqs), task.pad_id)


def distillation_set(task: Task, teacher: str, seed: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + <eos>) for every training prompt: one teacher solution each."""
    rng = random.Random(f"teacher-{teacher}-{seed}")
    solve = TEACHERS[teacher]
    return [(task.encode_prompt(p), task.encode(solve(p, rng)) + [task.eos_id]) for p in task.train_problems]


def sft_batches(data: list[tuple[list[int], list[int]]], seed: int, batch_size: int, pad_id: int):
    """Endless SFT batches over seeded per-epoch shuffles; only response tokens are targets."""
    rng = random.Random(f"sft-order-{seed}")
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += rng.sample(range(len(data)), len(data))
        rows, order = [data[i] for i in order[:batch_size]], order[batch_size:]
        yield pad_batch([p + r for p, r in rows], [len(p) for p, _ in rows], pad_id)


# ------------------------------------------------------------------------------------------ training


def lr_at(step: int, total: int, lr: float) -> float:
    """Linear warm-up then cosine decay to MIN_LR_FRAC * lr."""
    warm = max(1, int(WARMUP_FRAC * total))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return lr * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_loss(model: MoEPolicy, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens of loss_mask (B, T-1)."""
    logits = model(ids, mask).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return (ce * loss_mask.reshape(-1)).sum() / loss_mask.sum().clamp(min=1)


def train_lm(model: MoEPolicy, batches, steps: int, lr: float, tag: str) -> list[dict]:
    """AdamW with the schedule of :func:`lr_at`; returns one log row per ~1% of steps."""
    opt = AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)  # torch's, bitwise
    log, t0, every = [], time.perf_counter(), max(1, steps // 10)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = lm_loss(model, *next(batches))
        value = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, steps // 100) == 0 or step == steps - 1:
            log.append({"step": step, "loss": value, "lr": opt.param_groups[0]["lr"],
                        "elapsed_s": time.perf_counter() - t0})
        if (step + 1) % every == 0 or step == steps - 1:
            print(f"[{tag}] step {step + 1}/{steps} loss {value:.4f} "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    model.eval()
    return log


# ------------------------------------------------------------------------------------------- stages


def pretrain(cfg: C.RunConfig, out: Path) -> dict:
    """Build the base from scratch; writes an HF checkpoint and train_log.json to `out`."""
    task = make_task(cfg.task)
    p = cfg.pipeline
    model = MoEPolicy(hf_config(cfg.model, task.vocab_size, task.eos_id, task.pad_id), seed=p.seed)
    t0 = time.perf_counter()
    log = train_lm(model, pretrain_batches(task, p.seed, p.batch_size), p.pretrain_steps, p.lr, "pretrain")
    save_pretrained(model, out, task.tokenizer)
    summary = {"stage": "pretrain", "steps": p.pretrain_steps, "wall_s": time.perf_counter() - t0,
               "threads": torch.get_num_threads(), "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    return summary


def sft(cfg: C.RunConfig, teacher: str, init: Path, out: Path) -> dict:
    """One cold start: SFT of the checkpoint `init` on `teacher`'s solutions; writes an HF checkpoint."""
    if teacher not in TEACHERS:
        raise C.ConfigError(f"--teacher: {teacher!r} is not one of {sorted(TEACHERS)}")
    task = make_task(cfg.task)
    p = cfg.pipeline
    model = load_pretrained(init)
    data = distillation_set(task, teacher, p.seed)
    t0 = time.perf_counter()
    log = train_lm(model, sft_batches(data, p.seed, p.batch_size, task.pad_id), p.sft_steps, p.sft_lr,
                   f"sft:{teacher}")
    save_pretrained(model, out, task.tokenizer)
    summary = {"stage": "sft", "teacher": teacher, "init": str(init), "steps": p.sft_steps,
               "wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    return summary


def benchmark(cfg: C.RunConfig, ckpt: Path) -> dict:
    """avg@k of a checkpoint on the first eval.n_problems benchmark problems, fp32 rollout engine."""
    task = make_task(cfg.task)
    policy = load_pretrained(ckpt)  # the weights as a trainer starting from ckpt holds them (stacked experts)
    model_config, weights = policy.config, policy.state_dict()
    engine = EmbeddedRolloutEngine(model_config, weights, "fp32")
    t0 = time.perf_counter()
    res = evaluate(engine, task, task.bench_problems[:cfg.eval.n_problems], cfg.eval.k, cfg.eval.temperature,
                   cfg.rollout.max_new_tokens, torch.Generator().manual_seed(EVAL_SEED))
    fingerprint = eval_fingerprint(cfg, weights, model_config, "cpu")  # lets an arm reuse this as its step 0
    return {**res, "ckpt": str(ckpt), "wall_s": time.perf_counter() - t0, "fingerprint": fingerprint}


# ----------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m rl_core.coldstart", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    pre = sub.add_parser("pretrain", help="pretrain the base model from scratch")
    pre.add_argument("--out", required=True, type=Path)
    s = sub.add_parser("sft", help="SFT a cold start from one teacher")
    s.add_argument("--teacher", required=True, choices=sorted(TEACHERS))
    s.add_argument("--init", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    ev = sub.add_parser("eval", help="benchmark a checkpoint (avg@k)")
    ev.add_argument("--ckpt", required=True, type=Path)
    ev.add_argument("--out", required=True, type=Path)
    for p in (pre, s, ev):
        C.add_config_args(p)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line; a bad file or argument is one line on stderr and exit code 2 (rl_core.cli)."""
    return guard(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(args)
    if args.stage == "sft":
        check_checkpoint(args.init, "--init")
    elif args.stage == "eval":
        check_checkpoint(args.ckpt, "--ckpt")
    torch.set_num_threads(cfg.train.threads)
    if args.stage == "pretrain":
        res = pretrain(cfg, args.out)
    elif args.stage == "sft":
        res = sft(cfg, args.teacher, args.init, args.out)
    else:
        res = benchmark(cfg, args.ckpt)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        print(f"[eval] {args.ckpt}: score {res['score']:.3f} len {res['response_length']:.1f}", flush=True)
    print(f"[{args.stage}] done in {res['wall_s']:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
