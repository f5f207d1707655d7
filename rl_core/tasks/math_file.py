"""A math task read from local files (``task.kind: file``), as verl, slime and TRL set up real RL runs.

* **Problems**: one per row of ``task.train_file`` / ``task.bench_file`` (JSONL or Parquet, read with
  pandas; nothing is downloaded). The prompt column holds a string (put into ``task.prompt_template``'s
  ``{prompt}``) or a chat (a list of ``{role, content}`` messages, verl's layout); the answer column a number
  or LaTeX. Dotted column names reach into nested objects (``reward_model.ground_truth``). The first
  ``n_train`` / ``n_bench`` rows are used, in file order; a prompt longer than ``max_prompt_tokens`` is
  dropped, and the count is said on stderr.
* **Tokenizer**: the init checkpoint's own (``transformers.AutoTokenizer`` on the ``init`` directory), with
  its chat template and the generation prompt (``task.chat_template``). eos and pad are the ids of the
  checkpoint's config.json (what the rollout engine stops on and pads with), else the tokenizer's.
* **Verifier**: math-verify (``parse`` then ``verify``, the reward TRL's and open-r1's recipes use): the
  reference is parsed as a LaTeX math expression, the response's final answer is extracted (``\\boxed{}``
  first, then the last expression) and the two compared symbolically (``0.5`` = ``\\frac{1}{2}``). Reward
  1.0 when they match, else 0.0; the verifier never raises (a parser error or timeout is 0.0).

Departure from the arithmetic task: there is no difficulty level, so every problem is level 0 (the
benchmark's ``score_level0`` equals its score).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from rl_core.config import TaskConfig


@dataclass(frozen=True)
class FileProblem:
    """One row: the chat to prompt with, the reference answer, its level (always 0)."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), the user's last
    answer: str
    level: int = 0

    @property
    def prompt(self) -> str:
        return self.messages[-1][1]


# ------------------------------------------------------------------------------------------- rows


def _get(row: dict, key: str):
    """row["a.b"] -> row["a"]["b"] (a flat column of that exact name wins)."""
    if key in row:
        return row[key]
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _read_jsonl(path: Path, n: int) -> list[tuple[str, dict]]:
    """The first `n` rows of a JSONL file, each with where it is ("line N"); a line that is not a JSON object
    (a list, a number, torn JSON) is refused, naming the file and the line."""
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if len(out) >= n:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"task: {path} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"task: {path} line {lineno}: a row is a JSON object "
                                 f"({{\"prompt\": ..., \"answer\": ...}}), got a {type(row).__name__}")
            out.append((f"line {lineno}", row))
    return out


def read_rows(path: str | Path, n: int) -> list[tuple[str, dict]]:
    """The first `n` rows of a JSONL (.jsonl, .json) or Parquet (.parquet) file, as (where, dict): where is
    "line N" in a JSONL file, else "row N"."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task: no such file {path}")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, n)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=path.suffix == ".jsonl" or None, dtype=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"task: cannot read {path}: {e}") from None
    return [(f"row {i + 1}", row) for i, row in enumerate(frame.head(n).to_dict("records"))]


def _missing(answer) -> bool:
    """A reference answer that is absent: None, NaN (pandas' missing cell) or blank text."""
    return answer is None or (isinstance(answer, float) and math.isnan(answer)) or \
        (isinstance(answer, str) and not answer.strip())


def _messages(value, template: str, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return (("user", template.replace("{prompt}", value)),)
    if hasattr(value, "tolist"):  # a Parquet list column arrives as a numpy array
        value = value.tolist()
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                 for m in value):
        return tuple((str(m["role"]), str(m["content"])) for m in value)
    raise ValueError(f"{where}: the prompt is neither a string nor a list of {{role, content}} messages")


def load_problems(path: str | Path, cfg: TaskConfig, n: int) -> list[FileProblem]:
    out = []
    for at, row in read_rows(path, n):
        where = f"task: {path} {at}"
        try:
            prompt, answer = _get(row, cfg.prompt_key), _get(row, cfg.answer_key)
        except KeyError as e:
            raise ValueError(f"{where}: no column {e.args[0]!r} (columns: {sorted(row)}); set "
                             f"task.prompt_key / task.answer_key") from None
        if hasattr(answer, "tolist"):
            answer = answer.tolist()
        if _missing(answer):
            what = "empty" if isinstance(answer, str) else "missing"
            raise ValueError(f"{where}: the answer ({cfg.answer_key!r}) is {what}"
                             f" ({answer!r}); every row needs a reference answer (a number or LaTeX)")
        out.append(FileProblem(_messages(prompt, cfg.prompt_template, where), str(answer)))
    if not out:
        raise ValueError(f"task: {path} has no rows")
    return out


# --------------------------------------------------------------------------------------- verifier


@lru_cache(maxsize=65536)
def _parse_reference(answer: str):
    from math_verify import parse

    text = answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
    return parse(text)


def math_reward(response: object, answer: str) -> float:
    """1.0 iff math-verify finds the response's final answer equal to `answer`; never raises."""
    if not isinstance(response, str) or not response.strip():
        return 0.0
    try:
        from math_verify import parse, verify

        gold = _parse_reference(answer)
        return 1.0 if gold and verify(gold, parse(response)) else 0.0
    except Exception:  # noqa: BLE001 - a verifier crash or timeout is a wrong answer, not a dead run
        return 0.0


# ------------------------------------------------------------------------------------------- task


def _special_ids(tok, init: Path) -> tuple[int, int]:
    """(eos, pad): the checkpoint config's (what the rollout engine uses), else the tokenizer's."""
    cfg = json.loads((init / "config.json").read_text()) if (init / "config.json").is_file() else {}
    eos = cfg.get("eos_token_id", tok.eos_token_id)
    eos = eos[0] if isinstance(eos, list) else eos
    pad = cfg.get("pad_token_id")
    pad = pad if pad is not None else tok.pad_token_id if tok.pad_token_id is not None else eos
    if eos is None:
        raise ValueError(f"task: neither {init}/config.json nor its tokenizer names an eos token")
    return int(eos), int(pad)


class FileTask:
    """Problems from files, the checkpoint's tokenizer and chat template, math-verify rewards (the same
    interface as rl_core.tasks.arithmetic.Task)."""

    def __init__(self, cfg: TaskConfig, init: str | Path):
        from transformers import AutoTokenizer

        init = Path(init)
        if not (init / "tokenizer.json").is_file() and not (init / "tokenizer_config.json").is_file():
            raise ValueError(f"task: kind file reads the init checkpoint's tokenizer, and {init!s} has none")
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(str(init), local_files_only=True)
        self._eos, self._pad = _special_ids(self.tokenizer, init)
        self._ids: dict[FileProblem, list[int]] = {}  # encoded prompts: the chat template runs once per row
        self.train_problems = self._fit(load_problems(cfg.train_file, cfg, cfg.n_train), cfg.train_file)
        self.bench_problems = self._fit(load_problems(cfg.bench_file, cfg, cfg.n_bench), cfg.bench_file)

    def _fit(self, problems: list[FileProblem], path: str) -> list[FileProblem]:
        kept = [p for p in problems if len(self.encode_prompt(p)) <= self.cfg.max_prompt_tokens]
        if len(kept) < len(problems):
            print(f"task: {path}: dropped {len(problems) - len(kept)} of {len(problems)} prompts longer than "
                  f"task.max_prompt_tokens={self.cfg.max_prompt_tokens}", file=sys.stderr)
        if not kept:
            raise ValueError(f"task: {path}: every prompt is longer than task.max_prompt_tokens="
                             f"{self.cfg.max_prompt_tokens}")
        return kept

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_text(self, problem: FileProblem) -> str:
        messages = [{"role": r, "content": c} for r, c in problem.messages]
        if self.cfg.chat_template and self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return problem.prompt

    def encode_prompt(self, problem: FileProblem) -> list[int]:
        if problem not in self._ids:
            self._ids[problem] = self.encode(self.prompt_text(problem))
        return list(self._ids[problem])

    def decode(self, ids) -> str:
        """Token ids -> text up to the first eos, pads and special tokens dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tokenizer.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True)

    def reward(self, response_text: object, problem: FileProblem) -> float:
        return math_reward(response_text, problem.answer)
