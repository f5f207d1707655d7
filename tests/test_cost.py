"""rl_core.orchestration.cost (the grid cost model) and the scaling table's slopes: pure arithmetic, nothing
timed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from rl_core.orchestration import cost
from rl_core.orchestration.grid import load_grid, main
from rl_core.paths import REPO

sys.path.insert(0, str(REPO / "bench"))
from scaling_report import slopes  # noqa: E402

TRUE = {**cost.DEFAULTS, "d0": 128, "r_step": 2e-3, "r_row": 4e-5, "a_roll": 1.2, "u_fixed": 0.02,
        "u_tok": 8e-5, "a_train": 1.6, "prompt_tokens": 8.0}


def synthetic_point(d: int, B: int, L: int) -> dict:
    """A scaling point as bench/scaling.py reports it, made by the model with TRUE (every response L)."""
    c = {**TRUE, "resp_frac": 1.0}
    roll = cost.rollout_seconds(c, d, 8 * B, L)
    step = cost.step_seconds(c, d, 1, B, 8, L)
    return {"d": d, "B": B, "L": L, "G": 8, "N": 1, "rollout_precision": "fp32", "train_precision": "fp32",
            "step_s": step, "rollout_s": roll, "prompt_tokens": 8.0}


def test_fit_recovers_the_coefficients_that_made_the_points():
    pts = [synthetic_point(*p) for p in [(128, 8, 48), (256, 8, 48), (512, 8, 48), (128, 16, 48),
                                         (128, 32, 48), (128, 8, 24), (128, 8, 96)]]
    base = pts[0]
    stress = {**base, "step_s": base["rollout_s"] * 1.5 + (base["step_s"] - base["rollout_s"]) * 1.25,
              "rollout_s": base["rollout_s"] * 1.5}
    c = cost.fit({"points": pts, "stress": stress, "formats": {"fp32": 2.0, "fp8": 3.0},
                  "coldstart": {"batch_size": 16, "pretrain_step_s": 0.1, "sft_step_s": 0.05}})
    for key in ("r_step", "r_row", "a_roll", "u_fixed", "u_tok", "a_train"):
        assert c[key] == pytest.approx(TRUE[key], rel=1e-6), key
    # fp8 rollout 3.0 / 2.0 s; the stress step's update 1.25x the fp32 one
    assert c["f_roll"] == {"fp32": 1.0, "fp8": 1.5} and c["f_train"]["bf16"] == pytest.approx(1.25)
    assert (c["cs_batch"], c["pretrain_step_s"], c["sft_step_s"]) == (16, 0.1, 0.05)


def test_fit_reads_response_length_and_old_pass_share_from_the_rl_step():
    pts = [synthetic_point(128, 8, 48)]
    rl = {"spec": {"N": 4, "B": 8, "G": 8, "L": 48},
          "ours": [{"response_tokens_per_step": 0.5 * 256 * 48, "old_logp_s": 0.3, "update_s": 2.0,
                    "cpus": [1.0, 1.0], "rollout_s": 0.5, "s_per_global_step": 2.0},
                   {"error": "exit code 1"}],
          "ours_bf16": [{"cpus": [1.4, 1.6], "rollout_s": 0.5, "s_per_global_step": 2.5}]}
    arm = {"train_wall_s": 20.0, "rl_wall_s": 12.0, "eval_s_total": 3.0, "mirror_share_s": 1.0}
    c = cost.fit({"points": pts}, rl, arm)
    # 0.3 s for 3 passes = 0.1 s each, against 2.0 / 4 = 0.5 s per update; outside = 20 - 12 - 3 + 1
    assert c["resp_frac"] == pytest.approx(0.5) and c["old_frac"] == pytest.approx(0.2)
    assert c["arm_fixed_s"] == pytest.approx(6.0)
    # CPU outside the rollout (wall share): fp32 1.0 x (1 - 0.5 / 2) = 0.75, bf16 1.5 x (1 - 0.5 / 2.5) = 1.2
    assert c["f_train"]["bf16"] == pytest.approx(1.6)


def test_a_global_step_is_its_rollout_its_updates_and_its_old_passes():
    c = {**TRUE, "resp_frac": 0.5, "old_frac": 0.25}
    # rollout of 4 x 8 x 8 = 256 rows, L 48, R 24: 48 x 2e-3 + 256 x 24 x 4e-5 = 0.096 + 0.24576 = 0.34176
    assert cost.rollout_seconds(c, 128, 256, 48) == pytest.approx(0.34176)
    # update of 64 rows x (8 + 24) tokens: 0.02 + 2048 x 8e-5 = 0.18384; 4 of them + 3 passes at 1/4
    assert cost.step_seconds(c, 128, 4, 8, 8, 48) == pytest.approx(0.34176 + 0.18384 * (4 + 0.75))
    # twice the width: rollout x 2^1.2, update x 2^1.6
    assert cost.step_seconds(c, 256, 1, 8, 8, 48) == pytest.approx(
        (48 * 2e-3 + 64 * 24 * 4e-5) * 2 ** 1.2 + 0.18384 * 2 ** 1.6)


@pytest.mark.parametrize("steps,every,N", [(96, 8, 1), (96, 8, 8), (96, 10, 4), (16, 8, 8), (8, 4, 2)])
def test_eval_count_follows_the_trainer(steps, every, N):
    from rl_core.train import due

    expected = 1 + sum(due(s, every, N, steps) for s in range(N, steps + 1, N))
    assert cost.n_evals(steps, every, N) == expected


def test_grid_estimate_schedules_arms_over_the_cores():
    grid = load_grid(REPO / "experiments" / "smoke.yaml")
    c = {**cost.DEFAULTS, "busy": 1.0}
    one, two = cost.grid_estimate(grid, 1, c), cost.grid_estimate(grid, 2, c)
    assert one["rl_cpu_s"] == pytest.approx(two["rl_cpu_s"])
    n_evals = len(grid.cold_starts) + 1
    assert one["rl_wall_s"] == pytest.approx(one["rl_cpu_s"] + n_evals * one["coldstart_eval_s"])
    assert (one["rl_wall_s"] / 2 <= two["rl_wall_s"] < one["rl_wall_s"])
    assert two["wall_s"] == pytest.approx(two["pretrain_s"] + two["sft_wall_s"] + two["rl_wall_s"])
    # the runs that train: a run the grid repeats (smoke: precision/minirl-precision=fp8) costs nothing
    trained = sum(r.config.train.steps for r in grid.trained_runs)
    assert sum(a["grad_steps"] for _, a in two["arms"]) == trained
    assert len(two["arms"]) == len(grid.runs) - 1


def test_jobs_side_by_side_take_busy_times_longer():
    """Every job after pretraining runs `busy` x slower when it shares the machine (2+ cores); alone (1
    core) and pretraining (always alone) as modelled."""
    grid = load_grid(REPO / "experiments" / "paper.yaml", preset="mini")
    plain, busy = ({**cost.DEFAULTS, "busy": b} for b in (1.0, 1.3))
    for cores in (1, 2):
        a, b = cost.grid_estimate(grid, cores, plain), cost.grid_estimate(grid, cores, busy)
        factor = 1.3 if cores > 1 else 1.0
        assert b["rl_cpu_s"] == pytest.approx(factor * a["rl_cpu_s"])
        assert (b["sft_s"], b["coldstart_eval_s"]) == pytest.approx((factor * a["sft_s"],
                                                                     factor * a["coldstart_eval_s"]))
        assert b["pretrain_s"] == a["pretrain_s"] and b["busy"] == factor


def test_estimate_command_line_and_seeds(capsys):
    assert main(["experiments/smoke.yaml", "--estimate", "--cores", "2"]) == 0
    one = capsys.readouterr().out
    assert "m:ss wall on 2 unloaded cores" in one and "cold start: pretrain" in one
    assert "about 0:00 " not in one  # the smoke grid takes about a minute: its estimate shows seconds
    assert main(["experiments/smoke.yaml", "--estimate", "--seeds", "0,1,2"]) == 0
    three = capsys.readouterr().out
    runs = lambda text: int(text.split("RL: ")[1].split(" runs")[0])  # noqa: E731
    assert runs(three) == 3 * runs(one)
    assert main(["experiments/smoke.yaml", "--seeds", "0,x"]) == 2


def test_the_estimate_says_it_models_compiled_runs_as_eager():
    e = cost.grid_estimate(load_grid(REPO / "experiments" / "smoke.yaml"), 2, cost.DEFAULTS)
    assert "train.compile" not in cost.format_estimate(e)
    compiled = lambda r: dataclasses.replace(  # noqa: E731
        r, config=dataclasses.replace(r.config, train=dataclasses.replace(r.config.train, compile=True)))
    e["arms"] = [(compiled(r) if i < 2 else r, a) for i, (r, a) in enumerate(e["arms"])]
    assert "2 run(s) with train.compile: estimated as eager" in cost.format_estimate(e)


def test_the_cost_model_and_the_estimate_import_no_torch():
    code = ("import sys; from rl_core.orchestration.grid import main; "
            "main(['experiments/smoke.yaml', '--estimate']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slopes_of_a_linear_and_a_quadratic_factor():
    def pt(d, B, L):
        return {"d": d, "B": B, "L": L, "step_s": 0.01 * B * (d / 128) ** 2}
    s = slopes([pt(128, 8, 48), pt(256, 8, 48), pt(512, 8, 48), pt(128, 16, 48), pt(128, 32, 48)])
    assert s["d"]["exponent"] == pytest.approx(2.0) and s["B"]["exponent"] == pytest.approx(1.0)
    assert s["B"]["s_per_unit"] == pytest.approx(0.01)
    assert s["B"]["intercept_s"] == pytest.approx(0.0, abs=1e-12)
    assert "L" not in s
