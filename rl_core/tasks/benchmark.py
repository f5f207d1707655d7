"""The held-out benchmark of every task: avg@k with one fixed sampling seed."""

from __future__ import annotations

import torch

EVAL_SEED = 20251201  # one fixed benchmark seed: common random numbers across steps, arms, cold starts
EVAL_BATCH = 256  # sequences per generate call: bounds the KV cache of the rollout engine


@torch.no_grad()
def evaluate(engine, task, problems: list, k: int, temperature: float, max_new_tokens: int,
             generator: torch.Generator) -> dict:
    """avg@k on `problems` of `task` (any task of rl_core.tasks): k samples each, in generate calls of at
    most EVAL_BATCH sequences.

    Returns score (mean reward), response_length (mean generated tokens, <eos> included), truncated
    (fraction that hit max_new_tokens), n (samples), and score per level as ``score_level{L}``.
    """
    jobs = [p for p in problems for _ in range(k)]
    rewards, lengths, truncated = [], [], []
    for start in range(0, len(jobs), EVAL_BATCH):
        chunk = jobs[start:start + EVAL_BATCH]
        batch = engine.generate([task.encode_prompt(p) for p in chunk], max_new_tokens=max_new_tokens,
                                temperature=temperature, generator=generator)
        mask = batch.response_mask.bool()
        for row, p in enumerate(chunk):
            ids = batch.input_ids[row][mask[row]]
            rewards.append(task.reward(task.decode(ids), p))
            lengths.append(int(mask[row].sum()))
            truncated.append(task.eos_id not in ids.tolist())
    n = max(len(jobs), 1)
    out = {"score": sum(rewards) / n, "response_length": sum(lengths) / n,
           "truncated": sum(truncated) / n, "n": len(jobs)}
    for level in sorted({p.level for p in jobs}):
        rs = [r for r, p in zip(rewards, jobs, strict=True) if p.level == level]
        out[f"score_level{level}"] = sum(rs) / len(rs)
    return out
