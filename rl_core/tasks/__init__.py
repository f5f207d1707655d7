"""Verifiable tasks, one family per module, chosen by ``task.kind``:

* ``arithmetic`` (:mod:`rl_core.tasks.arithmetic`): generated left-to-right arithmetic chains, the
  char-level tokenizer, the three teachers of the cold starts. The default; the paper's grid runs on it.
* ``file`` (:mod:`rl_core.tasks.math_file`): prompts and reference answers from local JSONL/Parquet
  files, the init checkpoint's tokenizer and chat template, math-verify rewards.

Every task offers the same interface (``train_problems``, ``bench_problems``, ``encode_prompt``,
``decode``, ``reward``, ``eos_id``, ``pad_id``, ``vocab_size``), and :func:`evaluate`
(:mod:`rl_core.tasks.benchmark`) scores any of them. A new family is one module here plus one entry in
:data:`FAMILIES` (and its name in ``TaskConfig.kind``'s choices).
"""

from __future__ import annotations

from rl_core.config import TaskConfig
from rl_core.tasks.arithmetic import (
    CHARS,
    COLUMNS,
    MARKER,
    MAX_ANSWER_DIGITS,
    SPECIALS,
    TEACHERS,
    Problem,
    Task,
    Teacher,
    apply_op,
    build_tokenizer,
    evaluate_left_to_right,
    extract_answer,
    parse_expression,
    reward,
    sample_problem,
    sample_problems,
    solve,
    step_fact,
)
from rl_core.tasks.arithmetic import make_task as make_arithmetic_task
from rl_core.tasks.benchmark import (
    EVAL_BATCH,
    EVAL_SEED,
    eval_fingerprint,
    evaluate,
    reusable,
    sample_rewards,
)


def _file_task(cfg: TaskConfig, init: str):
    from rl_core.tasks.math_file import FileTask  # transformers and math-verify load only when used

    return FileTask(cfg, init)


#: task.kind -> builder(cfg, init); init is the checkpoint directory the run starts from.
FAMILIES = {
    "arithmetic": lambda cfg, init: make_arithmetic_task(cfg),
    "file": _file_task,
}


def make_task(cfg: TaskConfig, init: str = ""):
    """The task of `cfg`. A file task reads the tokenizer of `init` (the run's checkpoint directory)."""
    if cfg.kind == "file" and not init:
        raise ValueError("task.kind: file needs init, the checkpoint whose tokenizer encodes the prompts")
    return FAMILIES[cfg.kind](cfg, init)


__all__ = ["CHARS", "COLUMNS", "EVAL_BATCH", "EVAL_SEED", "FAMILIES", "MARKER", "MAX_ANSWER_DIGITS",
           "SPECIALS", "TEACHERS", "Problem", "Task", "Teacher", "apply_op", "build_tokenizer",
           "eval_fingerprint", "evaluate", "evaluate_left_to_right", "extract_answer", "make_arithmetic_task",
           "make_task", "parse_expression", "reusable", "reward", "sample_problem", "sample_rewards",
           "sample_problems", "solve", "step_fact"]
