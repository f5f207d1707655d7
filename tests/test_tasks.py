"""The arithmetic task: verifier, problem sets, tokenizer, teachers and the benchmark."""

import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from rl_core.config import ModelConfig, TaskConfig
from rl_core.policy.model import MoEPolicy, hf_config
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.tasks import (
    CHARS,
    TEACHERS,
    Problem,
    evaluate,
    evaluate_left_to_right,
    extract_answer,
    make_task,
    parse_expression,
    reward,
    solve,
)
from rl_core.tasks.arithmetic import _columns_add, _columns_mul, _columns_sub

torch.set_num_threads(1)

SMALL = TaskConfig(n_train=300, n_bench=60)
P = Problem("Q:47+38*3=", 255, 2)


# ------------------------------------------------------------------------------------------ verifier


@pytest.mark.parametrize("response, expected", [
    ("#255", 1.0),
    ("47+38=85;85*3=255#255", 1.0),
    ("7+8=15,4+3+1=8>85;5*3=15,8*3+1=25>255#255", 1.0),
    ("#254", 0.0),                     # wrong
    ("", 0.0),                         # empty
    ("255", 0.0),                      # no marker
    ("47+38=85;85*3=255", 0.0),        # work but no marker
    ("#", 0.0),                        # marker, no answer
    ("#255#255", 0.0),                 # several markers
    ("#1#255", 0.0),
    ("#255;", 0.0),                    # trailing text
    ("#255 ", 0.0),                    # trailing space
    ("# 255", 0.0),                    # space
    ("#0255", 0.0),                    # leading zero: not canonical
    ("#+255", 0.0),                    # explicit plus: not canonical
    ("#25a", 0.0),                     # non-digit
    ("#٢٥٥", 0.0),                     # non-ASCII digits (int() would accept them)
    ("#255\n", 0.0),                   # newline
    ("#" + "9" * 5000, 0.0),           # huge: int() of > 4300 digits raises; never reached
    ("#1" + "0" * 15, 0.0),            # 16 digits: over MAX_ANSWER_DIGITS
    ("#-255", 0.0),                    # negative of the answer
    ("#255\ufffd", 0.0),               # unknown token decoded
])
def test_reward_cases(response, expected):
    assert reward(response, P) == expected


@pytest.mark.parametrize("response, answer", [
    ("#0", 0), ("#-7", -7), ("x#12", 12), ("#-0", None), ("#-", None), ("#00", None), ("#-07", None),
    (None, None), (b"#12", None), (12, None),
])
def test_extract_answer(response, answer):
    assert extract_answer(response) == answer


def test_zero_answer_is_rewarded():
    assert reward("5-5=0#0", Problem("Q:5-5=", 0, 1)) == 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(-10**6, 10**6))
def test_reward_never_raises_and_needs_the_exact_format(text, answer):
    """1.0 exactly when the text is <anything without '#'> + '#' + str(answer)."""
    p = Problem("Q:1+1=", answer, 1)
    r = reward(text, p)
    assert r in (0.0, 1.0)
    head, sep, tail = text.rpartition("#")
    assert r == float(bool(sep) and "#" not in head and tail == str(answer))
    assert reward(text + f"#{answer}", p) == float("#" not in text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=CHARS + " x\n", max_size=40))
def test_reward_on_task_alphabet(text):
    assert reward(text, P) in (0.0, 1.0)


# -------------------------------------------------------------------------------------- problems


def test_left_to_right_evaluation():
    assert parse_expression("Q:12+7*3=") == ([12, 7, 3], ["+", "*"])
    assert evaluate_left_to_right([12, 7, 3], ["+", "*"]) == 57


def test_problem_sets_are_deterministic_disjoint_and_in_range():
    a, b = make_task(SMALL), make_task(SMALL)
    assert a.train_problems == b.train_problems and a.bench_problems == b.bench_problems
    bench = {p.prompt for p in a.bench_problems}
    assert len(bench) == SMALL.n_bench and len(a.train_problems) == SMALL.n_train
    assert not bench & {p.prompt for p in a.train_problems}
    other = make_task(TaskConfig(n_train=300, n_bench=60, seed=SMALL.seed + 1))
    assert other.bench_problems != a.bench_problems
    for p in a.train_problems + a.bench_problems:
        operands, ops = parse_expression(p.prompt)
        assert p.answer == evaluate_left_to_right(operands, ops)
        assert p.level == len(ops) and SMALL.min_operands <= len(operands) <= SMALL.max_operands
        values = [evaluate_left_to_right(operands[:i + 1], ops[:i]) for i in range(len(operands))]
        assert all(0 <= v <= SMALL.max_value for v in values)
        assert all(2 <= b <= 9 for b, op in zip(operands[1:], ops, strict=True) if op == "*")
    levels = [p.level for p in a.bench_problems[:30]]
    assert {lv: levels.count(lv) for lv in set(levels)} == {1: 10, 2: 10, 3: 10}


def test_small_problem_space_repeats_training_prompts_but_never_benchmark_ones():
    cfg = TaskConfig(max_operand=3, min_operands=2, max_operands=2, ops="+", n_train=40, n_bench=6)
    task = make_task(cfg)
    assert not {p.prompt for p in task.bench_problems} & {p.prompt for p in task.train_problems}
    with pytest.raises(ValueError, match="too small"):
        make_task(TaskConfig(max_operand=1, min_operands=2, max_operands=2, ops="+", n_bench=10))


# ------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_hf_loading(tmp_path):
    task = make_task(SMALL)
    text = "Q:47+38*3=7+8=15,4+3+1=8>85;85*3=255#255"
    ids = task.encode(text)
    assert len(ids) == len(text) and task.decode(ids + [task.eos_id, 5, 6]) == text
    assert task.decode([task.pad_id] * 3 + ids) == text
    assert task.decode([task.vocab_size + 3]) == "\ufffd"
    assert task.vocab_size == 3 + len(CHARS) and (task.pad_id, task.eos_id) == (0, 1)
    path = tmp_path / "tokenizer.json"
    task.tokenizer.save(str(path))
    assert Tokenizer.from_file(str(path)).encode(text).ids == ids
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", eos_token="<eos>")
    assert hf(text)["input_ids"] == ids and hf.decode(ids) == text
    assert (hf.pad_token_id, hf.eos_token_id) == (task.pad_id, task.eos_id)


# -------------------------------------------------------------------------------------- teachers


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_teachers_without_slips_are_correct_and_in_alphabet(name):
    task = make_task(SMALL)
    rng = random.Random(0)
    for p in task.train_problems:
        text = solve(p, TEACHERS[name].style, rng, slip_rate=0.0)
        assert reward(text, p) == 1.0 and set(text) <= set(CHARS)


def _true_equations(text: str) -> list[str]:
    """Every 'x=y(=z)' of a solution's work (before '#') is true arithmetic, evaluated left to right (a terse
    step that leaves the running value implicit, "+38=85", is checked by the examples)."""
    eqs = [e for e in re.split("[,;>:]", text.split("#")[0]) if "=" in e and e[0] not in "+-*"]
    for eq in eqs:
        sides = [s for s in eq.split("=") if s]
        values = {evaluate_left_to_right(*parse_expression(f"Q:{s}=")) for s in sides}
        assert len(values) == 1, (text, eq)
    return eqs


def test_teacher_examples_and_column_arithmetic():
    assert _columns_add(47, 38) == ["7+8=15", "4+3+1=8"]   # canonical columns (no rng: no variation)
    assert _columns_mul(85, 3) == ["5*3=15", "8*3+1=25"]
    assert _columns_sub(1000, 1) == ["10-1=9", "10-1-0=9", "10-1-0=9", "1-1-0=0"]
    seen = {name: set() for name in TEACHERS}
    rng = random.Random(0)
    for _ in range(1000):
        for name in TEACHERS:
            seen[name].add(solve(P, name, rng, 0.0))
    # the phrasings each teacher writes for 47+38*3 (all of them over 200 draws)
    assert seen["terse"] == {f"{s1};{s2}#255" for s1 in ("47+38=85", "38+47=85", "+38=85")
                             for s2 in ("85*3=255", "3*85=255", "*3=255")}
    assert seen["chain"] == {f"{s1}{c1}{sep}{s2}{c2}#255"
                             for s1 in ("47+38=85", "47+38=38+47=85") for c1 in ("", ":85-38=47", ":85=47+38")
                             for sep in ";," for s2 in ("85*3=255", "85*3=3*85=255")
                             for c2 in ("", ":255=3*85", ":255=85*3")}
    assert len(seen["scratchpad"]) > 8 and "8+7=15,1+3+4=8>85;3*5=15,3*8+1=25>255#255" in seen["scratchpad"]
    task = make_task(SMALL)
    for p in task.train_problems:  # every equation a teacher writes is true arithmetic
        for name in TEACHERS:
            _true_equations(solve(p, name, rng, 0.0))
    assert _true_equations(solve(Problem("Q:1000-1=", 999, 1), "scratchpad", rng, 0.0))


def test_teacher_quality_and_length_are_ordered():
    task = make_task(SMALL)
    stats = {}
    for name, teacher in TEACHERS.items():
        rng = random.Random(1)
        texts = [teacher(p, rng) for p in task.train_problems]
        stats[name] = (sum(reward(t, p) for t, p in zip(texts, task.train_problems, strict=True)),
                       sum(map(len, texts)))
    assert stats["terse"][0] < stats["chain"][0] < stats["scratchpad"][0]
    assert 1.5 * stats["terse"][1] < min(stats["chain"][1], stats["scratchpad"][1])  # terse is the shortest


# ------------------------------------------------------------------------------------- benchmark


def _tiny_engine(task):
    cfg = ModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
    model = MoEPolicy(hf_config(cfg, task.vocab_size, task.eos_id, task.pad_id), seed=0)
    return EmbeddedRolloutEngine.from_model(model, "fp32")


def test_benchmark_is_deterministic_for_a_fixed_generator():
    task = make_task(SMALL)
    engine = _tiny_engine(task)
    problems = task.bench_problems[:12]

    def run(seed):
        return evaluate(engine, task, problems, k=3, temperature=1.0, max_new_tokens=8,
                        generator=torch.Generator().manual_seed(seed))

    a, b = run(7), run(7)
    assert a == b and a["n"] == 36 and 0.0 <= a["score"] <= 1.0
    assert 1.0 <= a["response_length"] <= 8.0 and {"score_level1", "score_level2", "score_level3"} <= set(a)


class _OracleEngine:
    """Answers every prompt with the bare answer: the benchmark must score it 1.0."""

    def __init__(self, task, answers):
        self.task, self.answers = task, answers

    def generate(self, prompts, max_new_tokens, temperature, generator):
        from rl_core.rollout.base import RolloutBatch

        rows = [p + self.task.encode(f"#{self.answers[tuple(p)]}") + [self.task.eos_id] for p in prompts]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.task.pad_id)
        resp = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
            ids[i, :len(r)] = torch.tensor(r)
            resp[i, len(p):len(r)] = True
        return RolloutBatch(ids, resp.long(), resp, torch.zeros(ids.shape), torch.zeros(0), [], 0)


def test_benchmark_scores_an_oracle_one_and_counts_eos():
    task = make_task(SMALL)
    problems = task.bench_problems[:300]
    engine = _OracleEngine(task, {tuple(task.encode_prompt(p)): p.answer for p in problems})
    res = evaluate(engine, task, problems, k=5, temperature=1.0, max_new_tokens=16,
                   generator=torch.Generator().manual_seed(0))
    expect_len = sum(len(str(p.answer)) + 2 for p in problems) / len(problems)
    assert res["score"] == 1.0 and res["truncated"] == 0.0 and res["n"] == 5 * len(problems)
    assert res["response_length"] == pytest.approx(expect_len)
