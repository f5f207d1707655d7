"""results/index.html: one row per grid, whose link opens its report."""

import json

from analysis.index import build_index, find_reports


def test_each_grid_is_listed_once_and_no_link_is_dead(tmp_path):
    """The report logged into MLflow is copied under mlartifacts/ (tracking.log_report): not a grid."""
    info = {"grid": "smoke", "html": "report.html", "n_runs": 3}
    copy = tmp_path / "mlartifacts" / "smoke" / "abc" / "artifacts" / "report"
    for folder in (tmp_path / "smoke" / "report", copy):
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(info))
        (folder / "report.html").write_text("<html></html>")
    assert find_reports(tmp_path) == [tmp_path / "smoke" / "report" / "report.json"]
    page = build_index(tmp_path, tmp_path / "index.html").read_text()
    assert page.count("<tr><td>") == 1 and 'href="smoke/report/report.html"' in page
