"""The per-step progress line of an arm: elapsed time, ETA and the latest eval score, as plain text; the
grid's progress line (rl_core.orchestration.progress): runs done and running, CPU spent and left, an ETA
that learns."""

import json
import os

from rl_core.orchestration.progress import clock, line, status
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


def _touch(path, t, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (t, t))


def test_grid_progress_learns_from_the_runs_that_finished(tmp_path):
    """Three runs estimated at 10 s each on 2 cores: A finished in 20 s (measured 2x the estimate), B has run
    5 s and is half done, C waits. Left: C 20 s + B max(20 x 0.5, 20 - 5) = 15 s = 35 s; ETA max(35 / 2,
    the longest run left: 20) = 20 s; spent: 20 + 5 = 25 s."""
    now = 1_000_000.0
    t0 = now - 60
    a, b, c = (tmp_path / n for n in "abc")
    _touch(a / "config.json", now - 30)
    _touch(a / "summary.json", now - 9, json.dumps({"wall_s": 20.0}))
    _touch(a / "DONE", now - 9)
    _touch(b / ".lock", now - 5)
    _touch(b / "config.json", now - 4)
    _touch(b / "metrics.jsonl", now - 1, json.dumps({"step": 5}) + "\n" + '{"step": 6')  # a torn last row
    plan = {"grid": "g", "cores": 2, "runs": [{"dir": str(d), "est_s": 10.0, "steps": 10} for d in (a, b, c)]}
    s = status(plan, t0, now)
    assert (s["done"], s["running"], s["spent_s"], s["left_s"], s["eta_s"]) == (1, 1, 25.0, 35.0, 20.0)
    assert line(plan, s) == ("[g] 1/3 runs done, 1 running | CPU 0:25 spent, ~0:35 left (measured 2.00x the "
                             "estimate) | ETA 0:20")


def test_grid_progress_before_any_run_uses_the_estimate_and_the_cold_start(tmp_path):
    plan = {"grid": "g", "cores": 1, "coldstart_s": 30.0, "coldstart_files": [str(tmp_path / "eval.json")],
            "runs": [{"dir": str(tmp_path / "r"), "est_s": 40.0, "steps": 8}]}
    s = status(plan, 0.0, 100.0)
    assert (s["left_s"], s["eta_s"], s["measured"]) == (70.0, 70.0, False)
    assert "(the estimate) | ETA 1:10" in line(plan, s)
    assert clock(69.6) == "1:10" and clock(3725) == "1:02:05"
