"""The held-out benchmark of every task: avg@k with one fixed sampling seed; the fingerprint that lets a
run reuse its cold start's benchmark as its step-0 eval."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import torch

from rl_core.paths import PACKAGE
from rl_core.samples import eval_samples

EVAL_SEED = 20251201  # one fixed benchmark seed: common random numbers across steps, arms, cold starts
EVAL_BATCH = 256  # sequences per generate call: bounds the KV cache of the rollout engine
#: Benchmark problems whose first response every evaluation keeps (rl_core.samples; a run keeps at most
#: train.log_samples of them).
EVAL_SAMPLES = 8


@torch.no_grad()
def sample_rewards(engine, task, problems: list, k: int, temperature: float, max_new_tokens: int,
                   generator: torch.Generator) -> dict:
    """k samples of each of `problems` (the problems repeated, in generate calls of at most EVAL_BATCH
    sequences): per sample, its problem (``jobs``), ``rewards``, ``lengths`` (generated tokens, <eos>
    included), ``truncated`` (hit max_new_tokens) and ``texts`` (the responses)."""
    jobs = [p for p in problems for _ in range(k)]
    rewards, lengths, truncated, texts = [], [], [], []
    for start in range(0, len(jobs), EVAL_BATCH):
        chunk = jobs[start:start + EVAL_BATCH]
        batch = engine.generate([task.encode_prompt(p) for p in chunk], max_new_tokens=max_new_tokens,
                                temperature=temperature, generator=generator)
        mask = batch.response_mask.bool()
        for row, p in enumerate(chunk):
            ids = batch.input_ids[row][mask[row]]
            texts.append(task.decode(ids))
            rewards.append(task.reward(texts[-1], p))
            lengths.append(int(mask[row].sum()))
            truncated.append(task.eos_id not in ids.tolist())
    return {"jobs": jobs, "rewards": rewards, "lengths": lengths, "truncated": truncated, "texts": texts}


def evaluate(engine, task, problems: list, k: int, temperature: float, max_new_tokens: int,
             generator: torch.Generator) -> dict:
    """avg@k on `problems` of `task` (any task of rl_core.tasks), from :func:`sample_rewards`.

    Returns score (mean reward), response_length (mean generated tokens, <eos> included), truncated
    (fraction that hit max_new_tokens), n (samples), score per level as ``score_level{L}``, and
    ``samples``: the first response to each of the first EVAL_SAMPLES problems (rl_core.samples).
    """
    s = sample_rewards(engine, task, problems, k, temperature, max_new_tokens, generator)
    jobs, rewards = s["jobs"], s["rewards"]
    n = max(len(jobs), 1)
    out = {"score": sum(rewards) / n, "response_length": sum(s["lengths"]) / n,
           "truncated": sum(s["truncated"]) / n, "n": len(jobs)}
    for level in sorted({p.level for p in jobs}):
        rs = [r for r, p in zip(rewards, jobs, strict=True) if p.level == level]
        out[f"score_level{level}"] = sum(rs) / len(rs)
    out["samples"] = eval_samples(jobs, s["texts"], rewards, k, task, EVAL_SAMPLES)
    return out


@functools.cache
def source_sha256() -> str:
    """sha256 of rl_core's source files: a benchmark made by other code is not reused."""
    h = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*.py")):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def eval_fingerprint(cfg, weights: dict, model_config: dict, device: str) -> dict:
    """Everything the benchmark of run config ``cfg`` depends on, on an fp32 embedded engine built from
    ``weights``: equal fingerprints give bitwise equal results. Fields are readable so that a mismatch can
    be named; the weights (names, dtypes, shapes, bytes) and rl_core's source enter as sha256."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    e = cfg.eval  # not e.every: when to evaluate does not change a result
    return {"weights_sha256": h.hexdigest(), "model_config": model_config,
            "task": dataclasses.asdict(cfg.task),
            "eval": {"k": e.k, "n_problems": e.n_problems, "temperature": e.temperature},
            "max_new_tokens": cfg.rollout.max_new_tokens, "eval_seed": EVAL_SEED, "engine": "embedded fp32",
            "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "rl_core_sha256": source_sha256()}


def reusable(path: Path, fingerprint: dict) -> tuple[dict | None, str]:
    """The benchmark result stored at ``path`` (by ``rl_core.coldstart eval``) if its fingerprint equals
    ``fingerprint``, with the reason; else (None, the fields that differ or why the file cannot be used)."""
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is not readable JSON ({e})"
    theirs = stored.get("fingerprint")
    if not isinstance(theirs, dict):
        return None, f"{path} has no fingerprint (made by an older rl_core)"
    differ = sorted(k for k in fingerprint.keys() | theirs.keys() if theirs.get(k) != fingerprint.get(k))
    if differ:
        return None, f"{path} was made with different " + ", ".join(differ)
    return stored, f"reused {path} (same weights, settings, code)"
