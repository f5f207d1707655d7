"""train.compile: the torch engine's decoder layers compiled by inductor score, route and learn as the eager
ones do, up to rounding well below the smallest precision effect the platform studies; misuse is refused."""

from __future__ import annotations

import shutil

import pytest
import torch

from rl_core import config as C
from rl_core.config import ModelConfig
from rl_core.policy.model import MoEPolicy, compile_layers, hf_config
from rl_core.training.scoring import token_logprobs

V, EOS, PAD = 24, 1, 0
needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="inductor's CPU backend needs a C++ compiler")


def tiny() -> MoEPolicy:
    return MoEPolicy(hf_config(ModelConfig(init_std=0.1), V, eos_token_id=EOS, pad_token_id=PAD), seed=5)


def batch(rows: int = 12, T: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts then right-padded responses: rows of different lengths, as an update sees."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (rows, T), generator=gen)
    starts = torch.randint(0, 5, (rows,), generator=gen)
    ends = torch.randint(T - 8, T + 1, (rows,), generator=gen)
    cols = torch.arange(T)
    mask = ((cols >= starts[:, None]) & (cols < ends[:, None])).long()
    return ids.masked_fill(mask == 0, PAD), mask


def score_and_grads(model: MoEPolicy, precision: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    ids, mask = batch()
    model.zero_grad(set_to_none=True)
    s = token_logprobs(model, ids, mask, precision=precision)
    (-s.logp.sum()).backward()
    return s.logp.detach(), s.routing, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_megatron_engine_refuses_train_compile():
    with pytest.raises(C.ConfigError, match=r"train\.compile: true compiles the torch engine's layers"):
        C.resolve({"train": {"engine": "megatron", "compile": True}})
    assert C.resolve({"train": {"compile": True}}).train.compile is True


@needs_compiler
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_layers_score_route_and_learn_as_eager_ones(precision):
    eager, compiled = tiny(), compile_layers(tiny(), precision)
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)  # the knob did act
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints and resumes unchanged
    logp_e, routing_e, grads_e = score_and_grads(eager, precision)
    logp_c, routing_c, grads_c = score_and_grads(compiled, precision)
    # The yardstick: how far the bf16 trainer moves the same log-probs from fp32's (train.precision, the
    # smallest precision effect the grids study). Compiling must move them far less: a fifth of it in the
    # median token, and at most 5% of its largest move (measured: bf16 1/11 and 0.7%; fp32 ~1 ulp). Without
    # compile_layers' emulate_precision_casts, bf16 moved as far as the yardstick (median 0.009 of 0.010).
    logp_other, _, _ = score_and_grads(tiny(), "bf16" if precision == "fp32" else "fp32")
    real = logp_e != 0  # scored tokens (pads and first tokens are 0 in every engine)
    moved, yardstick = (logp_c - logp_e).abs()[real], (logp_other - logp_e).abs()[real]
    assert moved.median() < yardstick.median() / 5
    assert moved.max() < yardstick.max() / 20
    assert torch.equal(routing_c, routing_e)
    for name, g in grads_e.items():  # measured: 0.9% of the largest entry in bf16, 3e-6 in fp32
        assert (grads_c[name] - g).abs().max() <= 0.05 * g.abs().max(), name
    if precision == "fp32":  # fp32 has no bf16 rounding to emulate: only fp32 summation order may differ
        assert moved.max() < 1e-4  # measured 2.9e-6
        for name, g in grads_e.items():
            assert (grads_c[name] - g).abs().max() <= 1e-4 * g.abs().max(), name


def test_the_trainer_compiles_its_layers_only_when_asked_and_only_in_one_process(tmp_path):
    from rl_core.policy.model import save_pretrained
    from rl_core.train import TRAIN_ENGINES
    from rl_core.training import distributed as D

    save_pretrained(tiny(), tmp_path)
    for on in (False, True):
        cfg = C.resolve({"init": str(tmp_path), "train": {"compile": on}})
        policy, _ = TRAIN_ENGINES["torch"](cfg, D.SINGLE)  # compiling is lazy: nothing runs until a forward
        assert [layer._compiled_call_impl is not None for layer in policy.model.layers] == [on] * 4
    with pytest.raises(C.ConfigError, match=r"train\.compile: true runs in one process \(this run has 2"):
        TRAIN_ENGINES["torch"](cfg, D.Ranks(rank=0, world=2))


@pytest.mark.slow
@needs_compiler
def test_a_compiled_run_resumed_after_sigkill_matches_an_uninterrupted_compiled_run(tmp_path):
    """Checkpoints of compiled layers hold the same names; a resumed process compiles again and continues with
    bitwise the rows an uninterrupted compiled run writes (bf16, the precision compiling pays in)."""
    import os
    import subprocess
    import sys

    from test_train import TINY, strip_perf, train_rows
    from tiny import build_cold_start

    from rl_core.train import run

    init = str(build_cold_start(tmp_path / "cold", TINY))
    cfg = C.resolve(TINY, {"init": init}, overrides=["train.compile=true", "train.precision=bf16",
                                                     "train.steps=8", "train.n_minibatches=2"])
    args = [sys.executable, "-m", "rl_core.train", "--out", str(tmp_path / "killed"),
            "--config-json", C.to_json(cfg)]
    env = {**os.environ, "RLCORE_KILL_AT_STEP": "6"}  # dies after logging step 6, before its checkpoint
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run(cfg, tmp_path / "killed")  # resumes from the step-4 checkpoint
    run(cfg, tmp_path / "clean")
    resumed, clean = train_rows(tmp_path / "killed"), train_rows(tmp_path / "clean")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert strip_perf(resumed) == strip_perf(clean)
