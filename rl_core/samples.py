"""Rollout samples: what the policy writes, kept beside its metrics in RUN_DIR/samples.jsonl.

One JSON object per line, two kinds:

* ``kind: train``: each global step keeps its first ``train.log_samples`` rollouts (the first rows of the
  batch, so no random draw: the RNG stream and every metric stay as they are): prompt, response, reward,
  advantage, finish reason, and per response token its text (``tokens``), the train-inference log-ratio
  ``log_ratio`` = log pi_old - log mu_old, the detached IS weight the update used (``is_weight``), whether
  the clip mask dropped it (``clipped``) and whether a correction zeroed it (``masked``; IcePop's band,
  seq_mis's dropped responses). ``step`` is the gradient step of the update that trained the row.
* ``kind: eval``: each benchmark keeps the first response to each of its first ``train.log_samples``
  problems (a fixed set: the benchmark's order and seed are fixed), with the reward.

A resumed run drops the rows past its checkpoint's step (:func:`keep_through`), as metrics.jsonl drops
its rows past the checkpoint, so a resumed run's file equals an uninterrupted one's. The MLflow mirror
logs both kinds as tables (rl_core.orchestration.tracking); the report shows them per arm (analysis.samples).
"""

from __future__ import annotations

import json
from pathlib import Path

#: Significant digits of the per-token floats (the file's size is mostly these lists).
DIGITS = 4


def _num(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def token_text(task, token_id: int) -> str:
    """One token as text; <eos> named (the task's decode stops at it and would give "")."""
    return "<eos>" if token_id == task.eos_id else task.decode([token_id])


def train_samples(batch, task, k: int, global_step: int, minibatch_rows: int,
                  n_minibatches: int) -> list[dict]:
    """The first ``k`` rollouts of a scored and updated Batch (rl_core.step) as sample rows; ``global_step``
    counts from 0 (the rows' update steps follow from it, ``minibatch_rows`` and ``n_minibatches``)."""
    ro, P = batch.rollout, batch.rollout.prompt_len
    out = []
    for i in range(min(k, len(ro))):
        mask = ro.response_mask[i].bool()
        ids = ro.input_ids[i][mask].tolist()
        prompt = ro.input_ids[i, :P][ro.attention_mask[i, :P].bool()].tolist()
        log_r = (batch.logp_old[i] - ro.logp_behavior[i])[mask].tolist()
        tok = {name: t[i][mask].tolist() for name, t in batch.tokens.items()}
        out.append({
            "kind": "train", "step": global_step * n_minibatches + i // minibatch_rows + 1,
            "global_step": global_step + 1, "row": i, "prompt": task.decode(prompt),
            "response": task.decode(ids),
            "reward": float(batch.rewards[i]), "advantage": _num(float(batch.advantages[i])),
            "finish_reason": ro.finish_reason[i], "tokens": [token_text(task, t) for t in ids],
            "log_ratio": [_num(x) for x in log_r],
            "is_weight": [_num(x) for x in tok.get("is_weight", [])],
            "clipped": [int(x) for x in tok.get("clipped", [])],
            "masked": [int(x) for x in tok.get("masked", [])],
        })
    return out


def eval_samples(jobs: list, texts: list[str], rewards: list[float], k: int, task, n: int) -> list[dict]:
    """The first response to each of the first ``n`` problems of a benchmark (``jobs``, ``texts`` and
    ``rewards`` per sample, k samples per problem in order), as sample rows without a step."""
    return [{"kind": "eval", "problem": j, "prompt": task.decode(task.encode_prompt(jobs[j * k])),
             "response": texts[j * k], "reward": float(rewards[j * k])}
            for j in range(min(n, len(jobs) // k))]


def parse_rows(lines: list[str] | list[bytes]) -> list[dict]:
    """JSON-lines (samples.jsonl, metrics.jsonl) -> rows; a line that is not a JSON object (a torn last
    line of a run killed mid-write) is skipped."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read(path: Path) -> list[dict]:
    """samples.jsonl -> rows; a torn line (a run killed mid-write) is skipped."""
    return parse_rows(Path(path).read_text().splitlines()) if Path(path).is_file() else []


def keep_through(path: Path, step: int | None) -> None:
    """Drop the rows of ``path`` past gradient step ``step`` (None: every row), and any torn line."""
    if not Path(path).exists():
        return
    rows = [] if step is None else [r for r in read(path) if r.get("step", 0) <= step]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
