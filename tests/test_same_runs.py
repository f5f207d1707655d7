"""analysis.same_runs: identical runs (timings aside) pass; a changed value, a missing run fail, by name."""

import json

from analysis.same_runs import compare_runs, main


def _run(root, name, rows, done=True):
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (d / "DONE").touch()


def test_timings_aside_identical_then_a_changed_value_and_a_missing_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [{"step": 1, "loss/value": 0.1234567890123, "perf/time": 1.0},
            {"step": 2, "loss/value": 0.2, "eval/score": 0.5, "perf/time": 2.0}]
    _run(a, "fig/arm/seed0", rows)
    _run(b, "fig/arm/seed0", [{**r, "perf/time": 9.0} for r in rows])  # other timings: still identical
    _run(a, "fig/arm/seed1", rows, done=False)  # unfinished in A: not compared
    assert main([str(a), str(b)]) == 0
    assert "identical 1, differ 0, missing 0" in capsys.readouterr().out

    _run(a, "fig/arm/seed2", rows)
    _run(b, "fig/arm/seed2", [rows[0], {**rows[1], "eval/score": 0.5000000000000001}])  # one ulp
    _run(a, "fig/other/seed0", rows)
    _run(a, "fig/short/seed0", rows)
    _run(b, "fig/short/seed0", rows[:1])  # B stopped a row early
    res = compare_runs(a, b)
    assert res["differ"] == [("fig/arm/seed2", 1, ["eval/score"]), ("fig/short/seed0", 1, ["rows: 2 vs 1"])]
    assert res["missing"] == ["fig/other/seed0"]
    assert main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "differs: fig/arm/seed2, row 1: eval/score" in out and "missing in" in out
