"""Every knob moves: each leaf config field that can affect training changes the run's numbers when set to
another valid value, or it is listed in NOT_NUMBERS with the reason it cannot (a path, a thread count, a
stage other than RL) or the test that shows it is refused. A field in neither list fails the test, so a new
knob must be classified when it is added.

The baseline is off-policy (N = 2) against an fp8 rollout engine with a binding IS cap (C = 1) and tight
clipping, so that the clip ranges, the cap and its placement, and routing replay all act within two
global steps of a tiny cold start; a knob that needs another to act (replay_prompt needs a replay) is run
with that context on both sides.
"""

import json

import pytest
import torch
from test_train import TINY as TRAIN_TINY
from tiny import build_cold_start

from rl_core import config as C
from rl_core.losses.knobs import KNOBS, READS, readers
from rl_core.losses.objectives import OBJECTIVES
from rl_core.step import collect, update
from rl_core.train import Arm, RunFiles, run

# test_train's tiny cold start (the same model, task and pipeline), with a benchmark of 12 problems.
TINY = {**{k: TRAIN_TINY[k] for k in ("model", "task", "pipeline")},
        "eval": {"every": 4, "k": 2, "n_problems": 12}}
BASELINE = {
    "rollout": {"precision": "fp8", "max_new_tokens": 16, "group_size": 4},
    "train": {"batch_prompts": 4, "steps": 4, "n_minibatches": 2, "lr": 1e-2, "precision": "fp32"},
    "loss": {"is_cap": 1.0, "eps_low": 0.1, "eps_high": 0.1},
}
# An objective that does not read a baseline knob gets it back at its default (setting another objective's
# knob is refused: rl_core.losses.knobs): none of these reads is_cap, and gspo reads no eps_low/eps_high.
# loss.objective's other value (tis_decoupled) reads the baseline's is_cap and eps_* too. SEQ_MIS_WIDE drops
# responses by the product ratio.
NO_CAP = {"is_cap": 5.0}
ICEPOP = {"loss": {"objective": "icepop", **NO_CAP}}
SEQ_MIS = {"loss": {"objective": "seq_mis", **NO_CAP}}
SEQ_MIS_WIDE = {"loss": {"objective": "seq_mis", **NO_CAP, "seq_mis_low": 0.5, "seq_mis_high": 2.0}}
# at lr 1e-2 no response with A > 0 in mini-batch 2 has a GSPO ratio above 1 (eps_high never acts)
GSPO = {"loss": {"objective": "gspo", **NO_CAP, "eps_low": 0.2, "eps_high": 0.27}, "train": {"lr": 1e-3}}
# field -> (another valid value, context both runs share)
ALT = {
    "task.min_operands": (3, {}), "task.max_operands": (4, {}), "task.max_operand": (4, {}),
    "task.max_value": (4, {}), "task.ops": ("+-", {}), "task.n_train": (40, {}), "task.n_bench": (20, {}),
    "task.seed": (1, {}),
    "rollout.precision": ("bf16", {}), "rollout.kv_cache": ("fp8", {}), "rollout.temperature": (0.7, {}),
    "rollout.max_new_tokens": (3, {}), "rollout.group_size": (3, {}),
    "train.precision": ("bf16", {}), "train.batch_prompts": (3, {}), "train.n_minibatches": (1, {}),
    "train.steps": (2, {}), "train.lr": (3e-3, {}), "train.beta1": (0.5, {}), "train.beta2": (0.9, {}),
    "train.weight_decay": (0.5, {}), "train.grad_clip": (0.01, {}), "train.seed": (1, {}),
    "loss.objective": ("tis_decoupled", {}), "loss.is_cap": (5.0, {}), "loss.is_cap_on": ("discrepancy", {}),
    "loss.eps_low": (0.5, {}),
    # the corrections' knobs, each under the objective that reads it
    "loss.icepop_low": (0.999, ICEPOP), "loss.icepop_high": (1.001, ICEPOP),
    "loss.seq_ratio": ("product", SEQ_MIS_WIDE),
    "loss.seq_mis_low": (0.9999, SEQ_MIS), "loss.seq_mis_high": (1.0001, SEQ_MIS),
    "loss.gspo_eps_low": (0.2, GSPO),
    "loss.cispo_norm": ("token_mean", {"loss": {"objective": "cispo", **NO_CAP}}),
    "replay.mode": ("r2", {}), "replay.replay_prompt": (False, {"replay": {"mode": "r3"}}),
    "eval.every": (2, {}), "eval.k": (1, {}), "eval.n_problems": (8, {}), "eval.temperature": (0.5, {}),
}
NOT_NUMBERS = {
    "init": "the initial policy's path (the workflow fills it from cold_start)",
    "cold_start": "which cold start the workflow passes as init; the trainer reads init (a run with its own "
                  "init records cold_start '(own init)', rl_core.orchestration.grid)",
    "checkpoint_every": "resume cadence: a resumed run equals an uninterrupted one (tests/test_train.py)",
    "train.threads": "intra-op thread count: speed only",
    "train.log_samples": "rollout samples kept in samples.jsonl, the batch's first rows (no random draw): "
                         "every metric row unchanged (test_invariance_keeping_samples_leaves_every_metric_"
                         "row_unchanged, tests/test_samples.py)",
    "train.world_size": "ranks of one arm: the one-process numbers to fp32 rounding "
                        "(tests/test_distributed.py); the workflow's launch: tests/test_workflow_ranks.py",
    "rollout.weight_sync": "checkpoint: the block-FP8 file, bitwise the memory sync in the embedded engine "
                           "(tests/test_fp8_checkpoint.py); what vLLM needs for fp8",
    "train.compile": "compiled decoder layers: the eager numbers to well within the bf16 trainer's own move, "
                     "routing unchanged (tests/test_compile.py); speed in make bench",
    "train.device": "device placement (cpu or a GPU): the same numbers to float rounding; cuda without a GPU "
                    "is refused before any work (tests/test_distributed.py)",
    "rollout.engine": "vllm: an optional extra, tested in tests/test_vllm_engine.py (make test-vllm)",
    "train.engine": "megatron: the same numbers to fp32 rounding (tests/test_megatron.py, make "
                    "test-megatron)",
    **{f"train.megatron_{k}": f"train.engine=megatron only (refused with another engine): {what} over "
                              f"torchrun ranks gives the 1-process engine's numbers to fp32 rounding (test_"
                              f"two_ranks_at_tp_or_ep_2_equal_the_one_process_engine, make test-megatron)"
       for k, what in (("tp", "tensor parallelism"), ("ep", "expert parallelism"))},
    "model.*": "the architecture is the init checkpoint's: another value is refused before any work "
               "(test_a_model_field_the_checkpoint_does_not_have_is_refused)",
    "pipeline.*": "the cold-start stage (rl_core.coldstart), not the RL run (tests/test_coldstart.py)",
    "task.kind": "another task family (file), not a knob of this one: tests/test_file_task.py runs an arm "
                 "on it",
    **{f"task.{k}": "read only by task.kind file (this test's task is arithmetic); tests/test_file_task.py "
                    "covers it" for k in ("train_file", "bench_file", "prompt_key", "answer_key",
                                          "prompt_template", "chat_template", "max_prompt_tokens")},
}


# Upper clip ranges act only on a token with A > 0 whose ratio pi_theta/pi_old exceeds 1 + eps. Whether an
# end-to-end run has one depends on what the sampler draws (on AMD's AVX-512 kernels the baseline above
# drew none), so these are checked on a constructed condition instead: one sampled mini-batch with
# advantages set to +1/-1, updated twice. The first update (at lr 1e-2) raises the probability of the
# positive-advantage responses, so the second sees ratios above 1 on them; the test asserts that the
# baseline's range then clips some of them (a precondition) and that the other value changes the update.
STEP_ALT = {"loss.eps_high": (0.0, {}), "loss.gspo_eps_high": (0.27, GSPO)}


def _classified(key: str) -> bool:
    return key in ALT or key in STEP_ALT or key in NOT_NUMBERS or f"{key.split('.')[0]}.*" in NOT_NUMBERS


def test_every_leaf_field_is_either_a_moving_knob_or_listed_with_its_reason():
    leaves = [key for key, _, _ in C.describe()]
    assert [k for k in leaves if not _classified(k)] == []
    assert [k for k in [*ALT, *STEP_ALT] if k not in leaves] == []          # no stale entries either


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    return str(build_cold_start(tmp_path_factory.mktemp("knobs"), TINY))


def numbers(run_dir) -> list[dict]:
    """Every metric row without wall-clock figures (perf/*)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


_baselines: dict[str, list[dict]] = {}


def arm(cold_start, out, *layers) -> list[dict]:
    cfg = C.resolve(TINY, BASELINE, *layers, {"init": cold_start})
    summary = run(cfg, out)
    assert summary["status"] == "completed"
    return numbers(out)


@pytest.mark.parametrize("key", sorted(ALT))
def test_knob_moves_the_numbers(key, cold_start, tmp_path_factory):
    value, context = ALT[key]
    tag = json.dumps(context, sort_keys=True)
    if tag not in _baselines:
        _baselines[tag] = arm(cold_start, tmp_path_factory.mktemp("baseline"), context)
    changed = arm(cold_start, tmp_path_factory.mktemp("changed"), context, C.unflatten({key: value}))
    assert changed != _baselines[tag], f"{key}={value!r} left every metric row unchanged"


def twice_on_one_minibatch(cold_start, run_dir, *layers) -> list[dict]:
    """Two updates on the mini-batch sampled at seed 0 with advantages +1/-1: the metrics of each."""
    cfg = C.resolve(TINY, BASELINE, *layers, {"init": cold_start})
    run_dir.mkdir()
    arm = Arm(cfg, RunFiles(run_dir))
    problems = arm.task.train_problems[:cfg.train.batch_prompts]
    batch, _ = collect(cfg, arm.policy, arm.engine, arm.task, problems, arm.objective,
                       torch.Generator().manual_seed(0))
    batch.advantages.copy_(torch.tensor([1.0, -1.0]).repeat(len(batch.advantages) // 2))
    rows = torch.arange(len(batch.advantages))
    return [update(cfg, arm.policy, arm.opt, batch, rows, arm.objective, arm.params)[0] for _ in range(2)]


@pytest.mark.parametrize("key", sorted(STEP_ALT))
def test_upper_clip_knob_moves_the_update(key, cold_start, tmp_path):
    value, context = STEP_ALT[key]
    base = twice_on_one_minibatch(cold_start, tmp_path / "base", context)
    # precondition: in the second update the baseline's range clips some positive-advantage token
    assert base[1]["clip/frac_pos"] > 0, base[1]
    changed = twice_on_one_minibatch(cold_start, tmp_path / "changed", context, C.unflatten({key: value}))
    assert changed != base, f"{key}={value!r} left the update's metrics unchanged"


def test_a_model_field_the_checkpoint_does_not_have_is_refused(cold_start, tmp_path):
    with pytest.raises(C.ConfigError, match="model.hidden_size"):
        run(C.resolve(TINY, BASELINE, {"model": {"hidden_size": 64}, "init": cold_start}), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(("knob", "value", "objective"), [
    ("is_cap", 2.0, "icepop"), ("is_cap", 2.0, "seq_mis"), ("is_cap", 2.0, "gspo"), ("is_cap", 2.0, "cispo"),
    ("eps_low", 0.1, "gspo"), ("eps_high", 0.1, "gspo"),
    ("is_cap_on", "discrepancy", "seq_tis"), ("is_cap_on", "discrepancy", "tis_decoupled"),
    ("icepop_low", 0.4, "minirl"), ("icepop_high", 6.0, "minirl"), ("seq_mis_low", 0.9, "minirl"),
    ("seq_mis_high", 1.1, "minirl"), ("gspo_eps_low", 0.1, "minirl"), ("cispo_norm", "token_mean", "grpo"),
])
def test_a_knob_set_under_an_objective_that_does_not_read_it_is_refused(knob, value, objective):
    with pytest.raises(C.ConfigError) as e:
        C.resolve({"loss": {"objective": objective, knob: value}})
    msg = str(e.value)
    assert msg.startswith(f"loss.{knob}:") and f"loss.objective={objective!r} does not read it" in msg
    assert f"read by {readers(knob)}" in msg and readers(knob)
    C.resolve({"loss": {"objective": readers(knob)[0], knob: value}})  # where it is read, it is accepted


def test_the_knob_table_covers_the_registry_and_every_knob_the_losses_read():
    choices = C.LossConfig.__dataclass_fields__["objective"].metadata["choices"]
    assert set(READS) == set(OBJECTIVES) == set(choices)
    assert set(KNOBS) <= set(C.LossConfig.__dataclass_fields__)
