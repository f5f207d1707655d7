"""Rollout samples (rl_core.samples): kept without touching the numbers, holding what each token's update
saw; the objectives' per-token weights and masks by hand."""

import json

import pytest
import torch
from test_train import TINY, cfg_for, strip_perf
from tiny import build_cold_start

from rl_core import samples as S
from rl_core.losses.objectives import OBJECTIVES, LossParams
from rl_core.train import run


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    return str(build_cold_start(tmp_path_factory.mktemp("samples"), TINY))


def all_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# off-policy against an fp8 sampler with a binding cap and tight clipping: ratios, weights and masks all act
ACTING = ("rollout.precision=fp8", "train.n_minibatches=2", "train.lr=1e-2", "loss.is_cap=1.0",
          "loss.eps_low=0.1", "loss.eps_high=0.1", "eval.every=2")


def test_invariance_keeping_samples_leaves_every_metric_row_unchanged(cold_start, tmp_path):
    """train.log_samples picks the batch's first rows (no draw): metrics.jsonl, less its wall-clock perf/*
    fields, is the same with none kept and with the default."""
    kept = run(cfg_for(cold_start, *ACTING), tmp_path / "kept")
    none = run(cfg_for(cold_start, *ACTING, "train.log_samples=0"), tmp_path / "none")
    assert kept["status"] == none["status"] == "completed"
    assert strip_perf(all_rows(tmp_path / "kept")) == strip_perf(all_rows(tmp_path / "none"))
    assert not (tmp_path / "none" / "samples.jsonl").exists()
    rows = S.read(tmp_path / "kept" / "samples.jsonl")
    assert len([r for r in rows if r["kind"] == "train"]) == 4 * 2  # 4 per global step, 2 global steps


def test_train_samples_hold_each_tokens_ratio_weight_and_mask(cold_start, tmp_path):
    run(cfg_for(cold_start, *ACTING, "train.log_samples=3"), tmp_path / "r")
    rows = S.read(tmp_path / "r" / "samples.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    assert [(r["global_step"], r["step"], r["row"]) for r in train] == \
        [(g, 2 * g - 1, i) for g in (1, 2) for i in range(3)]  # the first rows: mini-batch 1's update
    for r in train:
        n = len(r["tokens"])
        assert n and all(len(r[k]) == n for k in ("log_ratio", "is_weight", "clipped", "masked"))
        assert r["prompt"].startswith("Q:") and r["response"] in "".join(r["tokens"])
        assert all(0 < w <= 1.0 for w in r["is_weight"])  # capped at C = 1
        assert set(r["clipped"]) <= {0, 1} and r["reward"] in (0.0, 1.0)
    assert any(x != 0 for r in train for x in r["log_ratio"])  # fp8 sampler: pi_old != mu_old
    evals = [r for r in rows if r["kind"] == "eval"]
    metric_evals = [r["step"] for r in all_rows(tmp_path / "r") if "eval/score" in r]
    assert sorted({r["step"] for r in evals}) == metric_evals == [0, 2, 4]
    first = [r for r in evals if r["step"] == 0]
    assert [r["problem"] for r in first] == [0, 1, 2]  # the same fixed problems at every eval
    assert [r["prompt"] for r in first] == [r["prompt"] for r in evals if r["step"] == 4]


def test_minirl_per_token_weight_and_clip_mask_by_hand():
    """Two tokens of one response, A = +1, C = 2, eps_high = 0.1, is_cap_on full:
    token 1: log pi_theta/mu_old = 0.0 + 0.5 = 0.5 -> w = min(e^0.5, 2) = 1.6487; r = 1: kept.
    token 2: log pi_theta/pi_old = 0.2 (r = 1.22 > 1.1, A > 0): clipped; w = min(e^(0.2 + 1.0), 2) = 2."""
    new = torch.tensor([[-1.0, -0.8]])
    old = torch.tensor([[-1.0, -1.0]])
    behavior = torch.tensor([[-1.5, -2.0]])
    mask = torch.tensor([[1.0, 1.0]])
    out = OBJECTIVES["minirl"].loss(new, old, behavior, torch.tensor([1.0]), mask,
                                    LossParams(is_cap=2.0, eps_high=0.1, n_responses=1.0))
    assert out.tokens["is_weight"][0].tolist() == pytest.approx([2.718281828 ** 0.5, 2.0])
    assert out.tokens["clipped"].tolist() == [[False, True]]
    assert out.tokens["masked"].tolist() == [[False, False]]


def test_every_objective_gives_its_per_token_tensors():
    B, T = 4, 3
    g = torch.Generator().manual_seed(0)
    new, old, behavior = (-torch.rand(B, T, generator=g) for _ in range(3))
    mask = torch.ones(B, T)
    for name, objective in OBJECTIVES.items():
        out = objective.loss(new, old, behavior, torch.tensor([1.0, -1.0, 0.5, -0.5]), mask,
                             LossParams(n_responses=float(B), group_size=2))
        assert set(out.tokens) == {"is_weight", "clipped", "masked"}, name
        assert all(t.shape == (B, T) for t in out.tokens.values()), name


def test_keep_through_drops_rows_past_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"kind": "train", "step": s}) + "\n" for s in (1, 2, 3)) + '{"torn')
    S.keep_through(path, 2)
    assert [r["step"] for r in S.read(path)] == [1, 2] and path.read_text().endswith("\n")
    S.keep_through(path, None)
    assert S.read(path) == []
