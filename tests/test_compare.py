"""analysis.compare: the verdicts of two runs of one grid, side by side."""

import pandas as pd

from analysis.compare import compare, main, summary_line

A = [("same_agree", "agrees"), ("same_dis", "disagrees"), ("flip", "agrees"), ("a_only", "disagrees"),
     ("b_only", "inconclusive: CIs overlap"), ("neither", "inconclusive: seeds split"), ("gone", "agrees")]
B = [("same_agree", "agrees"), ("same_dis", "disagrees"), ("flip", "disagrees"),
     ("a_only", "inconclusive: seeds split"), ("b_only", "agrees"), ("neither", "inconclusive: CIs overlap"),
     ("new", "agrees")]


def write(path, rows):
    frame = pd.DataFrame([{"id": i, "figure": "fig1", "claim": "c", "verdict": v} for i, v in rows])
    frame.to_csv(path, index=False)
    return path


def test_each_finding_gets_the_outcome_of_its_two_verdicts(tmp_path):
    a, b = write(tmp_path / "a.csv", A), write(tmp_path / "b.csv", B)
    table, counts = compare(pd.read_csv(a).set_index("id"), pd.read_csv(b).set_index("id"))
    assert dict(zip(table["id"], table["outcome"], strict=True)) == {
        "same_agree": "same verdict", "same_dis": "same verdict", "flip": "opposite verdicts",
        "a_only": "decided in A only", "b_only": "decided in B only", "neither": "undecided in both",
        "gone": "only in A", "new": "only in B"}
    assert summary_line(counts) == (
        "decided in both: 3, of which 2 got the same verdict and 1 the opposite; "
        "decided in one run only: 2; undecided in both: 1; only in A: 1; only in B: 1")


def test_the_command_prints_and_writes_the_table_and_refuses_a_file_that_is_not_findings(tmp_path, capsys):
    a, b = write(tmp_path / "a.csv", A), write(tmp_path / "b.csv", B)
    assert main([str(a), str(b), "--names", "seeds 0-2", "seeds 3-5", "--out", str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| finding | figure | seeds 0-2 | seeds 3-5 | outcome |")
    assert "| flip | fig1 | agrees | disagrees | opposite verdicts |" in out
    assert (tmp_path / "c.md").read_text() == out
    (tmp_path / "x.csv").write_text("arm,score\nminirl,0.5\n")
    assert main([str(a), str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "x.csv: not a findings.csv of analysis.report (no column figure, id, verdict)" in err
