"""A verifiable arithmetic task, its char-level tokenizer and three teachers (``task.kind: arithmetic``).

A problem chains ``TaskConfig.min_operands..max_operands`` non-negative integers with operators from
``TaskConfig.ops`` and is evaluated strictly **left to right** (no precedence): ``12+7*3 = (12+7)*3 = 57``.
Left to right keeps every solution step local (previous result, next operand), which a sub-million-
parameter model learns on a CPU in minutes. Operands are drawn so values stay moderate and non-negative:
a ``+`` or ``-`` operand is 0..max_operand, a ``*`` operand one digit 2..9, and no partial result leaves
[0, max_value]. The difficulty ``level`` is the number of operations (operands - 1); problem sets cycle
through the levels, so any prefix of the benchmark is balanced.

Format (one character = one token)::

    prompt      Q:47+38*3=
    terse       47+38=85;*3=255#255<eos>                   (or 38+47=85, +38=85, 3*85=255, ...)
    chain       47+38=38+47=85:85-38=47,85*3=255#255<eos>  (restated, checked, separators varied)
    scratchpad  8+7=15,4+3+1=8>85;5*3=15,3*8+1=25>255#255<eos>   (digit and carry orders varied)

Each teacher draws its phrasing per step, as a model sampled at temperature 1 would (:data:`STYLES`).

The verifier looks only at what follows the answer marker ``#``: reward 1.0 iff the response holds exactly
one ``#`` and the rest of the response is exactly the canonical decimal answer (optional ``-``, no leading
zeros, no ``-0``, at most ``MAX_ANSWER_DIGITS`` digits, nothing after it). Anything else (no marker,
several markers, trailing text, spaces, non-ASCII digits, huge numbers, empty text, non-strings) is 0.0;
the verifier never raises. A response cut off by the token limit is judged on the text it has.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from rl_core.config import TaskConfig

SPECIALS = ("<pad>", "<eos>", "<unk>")
CHARS = "0123456789+-*=#;:Q,>"
MARKER = "#"
MAX_ANSWER_DIGITS = 15
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Problem:
    prompt: str  # "Q:47+38*3="
    answer: int
    level: int  # number of operations


# ------------------------------------------------------------------------------------------ problems


def parse_expression(prompt: str) -> tuple[list[int], list[str]]:
    """"Q:47+38*3=" -> ([47, 38, 3], ["+", "*"])."""
    body = prompt.removeprefix("Q:").removesuffix("=")
    parts = re.split(r"([+\-*])", body)
    return [int(p) for p in parts[0::2]], parts[1::2]


def apply_op(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def evaluate_left_to_right(operands: list[int], ops: list[str]) -> int:
    value = operands[0]
    for op, b in zip(ops, operands[1:], strict=True):
        value = apply_op(value, op, b)
    return value


def _operand_range(op: str, value: int, cfg: TaskConfig) -> tuple[int, int]:
    """Inclusive range of the operand after `op` that keeps the running value in [0, max_value]."""
    if op == "+":
        return 0, max(0, min(cfg.max_operand, cfg.max_value - value))
    if op == "-":
        return 0, min(cfg.max_operand, value)
    hi = min(9, cfg.max_operand, cfg.max_value // value if value else 9)
    return min(2, cfg.max_operand), hi  # empty (lo > hi) when even x2 would exceed max_value


def sample_problem(rng: random.Random, cfg: TaskConfig, n_operands: int) -> Problem:
    """One random problem with `n_operands` operands (value ranges: module docstring)."""
    value = rng.randint(0, min(cfg.max_operand, cfg.max_value))
    text = str(value)
    for _ in range(n_operands - 1):
        ranges = {op: _operand_range(op, value, cfg) for op in cfg.ops}
        allowed = [op for op in cfg.ops if ranges[op][0] <= ranges[op][1]] or ["*"]
        op = rng.choice(allowed)
        lo, hi = ranges[op] if op in allowed else (2, 9)  # only '*' allowed and none fits: exceed
        b = rng.randint(lo, max(lo, hi))
        value = apply_op(value, op, b)
        text += f"{op}{b}"
    return Problem(prompt=f"Q:{text}=", answer=value, level=n_operands - 1)


def sample_problems(cfg: TaskConfig, n: int, salt: str, exclude: frozenset[str] = frozenset(),
                    distinct: bool = True) -> list[Problem]:
    """`n` problems whose prompts are not in `exclude`; operand counts cycle through min..max so every
    prefix of the list is balanced across levels. With ``distinct=False`` a prompt may repeat once 100
    fresh draws for its slot have failed (a level whose problem space is smaller than its share)."""
    rng = random.Random(f"{cfg.seed}-{salt}")  # str seeds are hashed with sha512: stable across runs
    counts = list(range(cfg.min_operands, cfg.max_operands + 1))
    out: list[Problem] = []
    seen = set()
    while len(out) < n:
        for attempt in range(200):
            p = sample_problem(rng, cfg, counts[len(out) % len(counts)])
            fresh = p.prompt not in seen or (not distinct and attempt >= 100)
            if p.prompt not in exclude and fresh:
                break
        else:
            raise ValueError(f"task: cannot draw {n} '{salt}' problems: the problem space of "
                             f"max_operand={cfg.max_operand}, operands {counts} is too small")
        seen.add(p.prompt)
        out.append(p)
    return out


# -------------------------------------------------------------------------------------- verifier


def extract_answer(response: object) -> int | None:
    """The integer after the single answer marker, or None when the response is malformed."""
    if not isinstance(response, str) or response.count(MARKER) != 1:
        return None
    tail = response.partition(MARKER)[2]
    if len(tail.lstrip("-")) > MAX_ANSWER_DIGITS or tail == "-0" or not _CANONICAL_INT.fullmatch(tail):
        return None
    return int(tail)


def reward(response: object, problem: Problem) -> float:
    """Binary verifiable reward: 1.0 iff the extracted answer equals the problem's answer."""
    return 1.0 if extract_answer(response) == problem.answer else 0.0


# ------------------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Tokenizer:
    """Char-level WordLevel tokenizer: one token per character of CHARS, plus <pad>, <eos>, <unk>."""
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters without the default space
    tok.add_special_tokens(list(SPECIALS))
    return tok


# ---------------------------------------------------------------------------------------- teachers


def _digits(n: int) -> list[int]:
    """Least significant first."""
    return [int(c) for c in reversed(str(n))]


def _flip(rng: random.Random | None) -> bool:
    """A fair coin of the teacher's phrasing; without `rng` the canonical phrasing (never flips)."""
    return rng is not None and rng.random() < 0.5


def _columns_add(a: int, b: int, rng: random.Random | None = None) -> list[str]:
    """Columns of a + b with carries: 47+38 -> ["7+8=15", "4+3+1=8"]. With `rng` each column's digits
    may come in either order and its carry first or last ("8+7=15", "1+3+4=8")."""
    da, db, cols, carry = _digits(a), _digits(b), [], 0
    for i in range(max(len(da), len(db))):
        digits = [d[i] for d in (da, db) if i < len(d)]
        if len(digits) + bool(carry) < 2:
            break  # nothing left to add: the remaining digits are copied
        if _flip(rng):
            digits.reverse()
        terms = ([carry] + digits if _flip(rng) else digits + [carry]) if carry else digits
        s = sum(terms)
        cols.append("+".join(map(str, terms)) + f"={s}")
        carry = s // 10
    return cols


def _columns_sub(a: int, b: int, rng: random.Random | None = None) -> list[str]:
    """Columns of a - b (a >= b) with borrows: 85-38 -> ["15-8=7", "8-1-3=4"]. With `rng` a borrow may
    also be taken last ("8-3-1=4": left to right, the same value)."""
    da, db, cols, borrow = _digits(a), _digits(b), [], 0
    for i in range(len(da)):
        if i >= len(db) and not borrow:
            break  # the remaining digits of a are copied
        low = db[i] if i < len(db) else 0
        top = da[i] + 10 if da[i] - borrow < low else da[i]
        left = (f"{top}-{low}-{borrow}" if _flip(rng) else f"{top}-{borrow}-{low}") if borrow \
            else f"{top}-{low}"
        cols.append(f"{left}={top - borrow - low}")
        borrow = int(top >= 10)
    return cols


def _columns_mul(a: int, b: int, rng: random.Random | None = None) -> list[str]:
    """Columns of a * b (b one digit) with carries: 85*3 -> ["5*3=15", "8*3+1=25"]. With `rng` a product
    may be written either way round ("3*8+1=25")."""
    cols, carry = [], 0
    for d in _digits(a):
        s = d * b + carry
        cols.append((f"{b}*{d}" if _flip(rng) else f"{d}*{b}") + (f"+{carry}" if carry else "") + f"={s}")
        carry = s // 10
    return cols


COLUMNS = {"+": _columns_add, "-": _columns_sub, "*": _columns_mul}
_INVERSE = {"+": "-", "-": "+"}


def step_fact(a: int, op: str, b: int, r: int, rng: random.Random | None = None) -> str:
    """"a op b=r", with `rng` the operands of a commutative op in either order."""
    return f"{b}{op}{a}={r}" if op in "+*" and _flip(rng) else f"{a}{op}{b}={r}"


def _terse(a: int, op: str, b: int, r: int, rng: random.Random) -> str:
    """One step, tersely: "47+38=85", "38+47=85" (commutative ops) or "+38=85" (the running value left
    implicit)."""
    return rng.choice([step_fact(a, op, b, r, rng), f"{op}{b}={r}"])


def _verbose(a: int, op: str, b: int, r: int, rng: random.Random) -> str:
    """One step, verbosely: a commutative op restated both ways round ("47+38=38+47=85") half the time,
    then one of three endings: none, a check after ':' that undoes the step ("85-38=47"; for '*' the
    product restated, "255=3*85"), or the step restated result first (":85=47+38")."""
    text = f"{a}{op}{b}={b}{op}{a}={r}" if op in "+*" and _flip(rng) else f"{a}{op}{b}={r}"
    undo = f"{r}={b}*{a}" if op == "*" else f"{r}{_INVERSE[op]}{b}={apply_op(r, _INVERSE[op], b)}"
    return text + rng.choice(["", f":{undo}", f":{r}={a}{op}{b}"])


def _scratch(a: int, op: str, b: int, r: int, rng: random.Random) -> str:
    """One step as columns: "7+8=15,4+3+1=8>85", digit, carry and borrow orders varied (COLUMNS)."""
    return ",".join(COLUMNS[op](a, b, rng)) + f">{r}"


STYLES = {"terse": _terse, "chain": _verbose, "scratchpad": _scratch}


def _slip(value: int, rng: random.Random) -> int:
    """A plausible arithmetic slip: too large by 1..9 or by 10 (a spurious carry). Upward only, so a
    later subtraction never goes negative."""
    return value + rng.choice([1, 2, 3, 5, 9, 10])


def solve(problem: Problem, style: str, rng: random.Random, slip_rate: float) -> str:
    """One teacher solution (without <eos>): steps, then the answer after '#'. A teacher sampled at
    temperature 1 phrases equivalent steps differently: each style draws its phrasing per step from `rng`
    (STYLES), and the verbose chain also separates its steps with ';' or ','. Each step slips with
    probability `slip_rate`: its stated result is wrong (a scratchpad's columns, a chain's check, stay
    right arithmetic) and later steps continue from it, so one slip makes the final answer wrong."""
    operands, ops = parse_expression(problem.prompt)
    value, text = operands[0], ""
    for i, (op, b) in enumerate(zip(ops, operands[1:], strict=True)):
        new = apply_op(value, op, b)
        if rng.random() < slip_rate:
            new = _slip(new, rng)
        if i:
            text += "," if style == "chain" and _flip(rng) else ";"
        text += STYLES[style](value, op, b, new, rng)
        value = new
    return text + f"{MARKER}{value}"


@dataclass(frozen=True)
class Teacher:
    """A programmatic solver: a solution style and a per-step slip rate (its quality)."""

    style: str
    slip_rate: float
    doc: str

    def __call__(self, problem: Problem, rng: random.Random) -> str:
        return solve(problem, self.style, rng, self.slip_rate)


# Three teachers that all reason, differing in style and quality the way distillation sources do. A slip
# makes a step's result too large by a small amount and later steps build on it, so a teacher's accuracy
# on a level-L problem is (1 - slip_rate) ** L: terse 85/72/61%, chain 90/81/73%, scratchpad 97/94/91%.
TEACHERS = {
    "terse": Teacher("terse", 0.15, "a terse chain of partial results, three phrasings; slips 15% per step"),
    "chain": Teacher("chain", 0.10, "a verbose chain: steps restated and checked in varied ways; slips 10% "
                     "per step"),
    "scratchpad": Teacher("scratchpad", 0.03, "column-wise work with carries and borrows in varied orders; "
                          "slips 3% per step"),
}


# --------------------------------------------------------------------------------------------- task


@dataclass
class Task:
    """The task as the rest of rl_core sees it: problems, tokenizer, encode/decode and reward."""

    cfg: TaskConfig
    tokenizer: Tokenizer
    train_problems: list[Problem]
    bench_problems: list[Problem]
    id_to_char: list[str] = field(repr=False)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id("<pad>")

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id("<eos>")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_prompt(self, problem: Problem) -> list[int]:
        return self.encode(problem.prompt)

    def decode(self, ids) -> str:
        """Token ids -> text, stopping at the first <eos> and dropping <pad>; ids the tokenizer does not
        know (a padded model vocabulary) become U+FFFD, which no answer can contain."""
        out = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.id_to_char[i] if 0 <= i < len(self.id_to_char) else "\ufffd")
        return "".join(out)

    def reward(self, response_text: object, problem: Problem) -> float:
        return reward(response_text, problem)


def make_task(cfg: TaskConfig) -> Task:
    """The task of `cfg`; the benchmark is drawn first and the training set avoids its prompts."""
    tok = build_tokenizer()
    bench = sample_problems(cfg, cfg.n_bench, "bench")
    train = sample_problems(cfg, cfg.n_train, "train", exclude=frozenset(p.prompt for p in bench),
                            distinct=False)
    id_to_char = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    id_to_char = ["\ufffd" if t in SPECIALS else t for t in id_to_char]
    return Task(cfg, tok, train, bench, id_to_char)
