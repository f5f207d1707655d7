"""The per-step progress line of an arm: elapsed time, ETA and the latest eval score, as plain text."""

from rl_core.train import _clock, _progress

ROW = {"reward/mean": 0.25, "response/length_mean": 12.0, "kl/train_infer_k3": 3e-4, "clip/frac": 0.01,
       "perf/tokens_per_s": 900.0}


def test_clock_formats_minutes_and_hours():
    assert _clock(0) == "0:00" and _clock(75.4) == "1:15" and _clock(3725) == "1:02:05"


def test_progress_line_has_elapsed_eta_and_latest_eval(capsys):
    # 8 of 24 steps done at 0.1 step/s: 16 steps left -> 160 s -> "2:40".
    _progress("fig/arm/seed0", 8, 24, [ROW], {"step": 4, "eval/score": 0.5}, elapsed=95.0, steps_per_s=0.1)
    line = capsys.readouterr().out.strip()
    assert line.startswith("[fig/arm/seed0] step 8/24 1:35 elapsed, eta 2:40 | eval 0.500 @4 | reward 0.250")
    assert "kl_k3 3.00e-04" in line and "\x1b" not in line and "\r" not in line  # plain log lines


def test_progress_line_before_any_eval(capsys):
    _progress("a", 1, 4, [ROW], {}, elapsed=1.0, steps_per_s=0.0)
    assert "eta ? | eval - |" in capsys.readouterr().out
