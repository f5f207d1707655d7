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
    assert "identical 1, differ 0, missing or unfinished 0" in capsys.readouterr().out

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
    assert "differs: fig/arm/seed2, row 1: eval/score" in out and "missing or unfinished in" in out


def test_a_run_still_running_in_b_is_unfinished_not_different(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [{"step": s, "loss/value": 0.1 * s} for s in range(1, 5)]
    _run(a, "fig/arm/seed0", rows)
    _run(b, "fig/arm/seed0", rows[:2], done=False)  # B's trainer has written two of its rows so far
    assert compare_runs(a, b) == {"identical": [], "differ": [], "missing": ["fig/arm/seed0"],
                                  "other_kernels": {}}


def test_a_run_recorded_before_provenance_is_not_called_another_kernel(tmp_path, capsys):
    # summary.json without "provenance" (runs from before it was recorded): unknown, not "different".
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [{"step": 1, "loss/value": 0.1}]
    _run(a, "fig/arm/seed0", rows)
    _run(b, "fig/arm/seed0", rows)
    (a / "runs" / "fig/arm/seed0" / "summary.json").write_text(json.dumps({"status": "completed"}))
    _provenance(b, "fig/arm/seed0", "AVX512")
    assert compare_runs(a, b)["other_kernels"] == {}
    assert main([str(a), str(b)]) == 0 and "note:" not in capsys.readouterr().out


def _provenance(root, name, capability):
    prov = {"cpu_model": "AMD EPYC", "cpu_capability": capability, "torch": "2.13.0+cpu", "device": "cpu"}
    summary = {"status": "completed", "provenance": prov}
    (root / "runs" / name / "summary.json").write_text(json.dumps(summary))


def test_runs_from_different_kernels_are_named_and_pointed_to_compare(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [{"step": 1, "loss/value": 0.1}]
    _run(a, "fig/arm/seed0", rows)
    _run(b, "fig/arm/seed0", [{"step": 1, "loss/value": 0.1000000001}])
    _provenance(a, "fig/arm/seed0", "AVX512")
    _provenance(b, "fig/arm/seed0", "AVX2")
    assert compare_runs(a, b)["other_kernels"] == {"fig/arm/seed0": ["cpu_capability: AVX512 vs AVX2"]}
    assert main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "come from different kernels or CPUs (cpu_capability: AVX512 vs AVX2)" in out
    assert "bitwise equality is not expected" in out and "python -m analysis.compare" in out
    _provenance(b, "fig/arm/seed0", "AVX512")  # the same kernel path: no note
    main([str(a), str(b)])
    assert "note:" not in capsys.readouterr().out


def test_a_torn_metrics_line_is_one_error_line(tmp_path, capsys):
    """Was a JSONDecodeError traceback."""
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, "fig/arm/seed0", [{"step": 1}])
    _run(b, "fig/arm/seed0", [{"step": 1}])
    path = b / "runs" / "fig/arm/seed0" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 2, "loss/va')
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path} line 2: not valid JSON" in err


def test_the_trainer_records_its_provenance():
    from rl_core.provenance import provenance

    p = provenance()
    import torch

    assert p["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and p["cpu_model"]
    assert p["torch"] == torch.__version__ and p["versions"]["torch"] and "commit" in p


def test_provenance_outside_git_records_no_commit(tmp_path):
    from rl_core.provenance import git_commit

    assert git_commit(tmp_path) == ""
