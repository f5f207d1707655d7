"""analysis.dose: the dose-response reading of a figure across rollout formats, on synthetic frames."""

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from analysis.dose import dose_figure, dose_frame, dose_lines  # noqa: E402


def frames(precisions=("fp32", "fp8", "mxfp4")):
    runs, per_run = [], []
    kl = {"fp32": 1e-4, "fp8": 3e-3, "mxfp4": 2e-2}
    for obj, arm in (("minirl", "minirl"), ("minirl_no_is", "minirl_no_is")):
        for p in precisions:
            for seed in (0, 1):
                name = f"{arm}-precision={p}"
                runs.append({"figure": "fig6", "arm": name, "seed": seed,
                             "config": {"loss": {"objective": obj}, "rollout": {"precision": p}}})
                drop = 0.0 if obj == "minirl" else {"fp32": 0.0, "fp8": 0.1, "mxfp4": 0.3}[p]
                per_run.append({"figure": "fig6", "arm": name, "seed": seed, "mean_kl_k3": kl[p] * (1 + seed),
                                "final_score": 0.6 - drop + 0.01 * seed, "survival_step": 96 - 100 * drop,
                                "collapse_step": 96 - 100 * drop if drop else float("nan")})
    runs.append({"figure": "other", "arm": "x", "seed": 0, "config": {}})
    return pd.DataFrame(runs), pd.DataFrame(per_run)


def test_dose_frame_has_one_row_per_run_with_its_objective_precision_and_kl():
    runs, per_run = frames()
    f = dose_frame(runs, per_run, "fig6")
    assert len(f) == 12 and set(f["objective"]) == {"minirl", "minirl_no_is"}
    row = f[(f["arm"] == "minirl_no_is-precision=mxfp4") & (f["seed"] == 1)].iloc[0]
    assert row["precision"] == "mxfp4" and row["kl"] == 4e-2 and row["final_score"] == 0.6 - 0.3 + 0.01


def test_dose_lines_average_seeds_and_order_by_kl():
    runs, per_run = frames()
    lines = dose_lines(dose_frame(runs, per_run, "fig6"), "final_score")
    no_is = lines[lines["objective"] == "minirl_no_is"]
    assert list(no_is["precision"]) == ["fp32", "fp8", "mxfp4"]                 # ascending KL
    assert no_is["final_score"].round(6).tolist() == [0.605, 0.505, 0.305]   # mean of seeds 0 and 1
    assert no_is["kl"].round(9).tolist() == [1.5e-4, 4.5e-3, 3e-2]


def test_a_figure_with_one_rollout_format_has_no_dose_reading():
    runs, per_run = frames(precisions=("fp8",))
    assert dose_frame(runs, per_run, "fig6").empty
    assert dose_frame(runs, per_run, "missing").empty


def test_dose_figure_draws_two_log_x_panels():
    runs, per_run = frames()
    fig = dose_figure(dose_frame(runs, per_run, "fig6"), "fig6")
    axes = fig.get_axes()
    assert len(axes) == 2 and all(ax.get_xscale() == "log" for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["minirl", "minirl_no_is"]


def test_the_report_shows_the_dose_panel_for_a_figure_spanning_rollout_formats(tmp_path):
    import json

    import numpy as np
    from test_analysis import make_run, write_run

    from analysis.report import build_report

    grid_dir = tmp_path / "toy"
    rng = np.random.default_rng(0)
    for arm, objective in (("minirl", "minirl"), ("no_is", "minirl_no_is")):
        for precision in ("fp32", "fp8"):
            for fig in ("dose", "plain"):
                run_dir = write_run(grid_dir, fig, f"{arm}-{precision}", 0, *make_run(40, rng))
                config = json.loads((run_dir / "config.json").read_text())
                config["loss"]["objective"] = objective
                config["rollout"]["precision"] = precision if fig == "dose" else "fp8"
                (run_dir / "config.json").write_text(json.dumps(config))
    html = build_report(grid_dir).read_text()
    assert (grid_dir / "report" / "fig_dose_dose.png").is_file()
    assert not (grid_dir / "report" / "fig_plain_dose.png").exists()
    assert "across rollout formats" in html and html.count("data:image/png") == 3


def test_a_figure_with_axes_lays_out_the_arms_as_run_not_their_templates():
    from analysis.report import figure_layout

    grid = {"figures": {"f": {"title": "F", "arms": {"m": {"label": "M"}},
                              "axes": {"rollout.precision": ["fp32", "fp8"]}}}}
    runs = pd.DataFrame({"figure": ["f", "f"], "arm": ["m-precision=fp32", "m-precision=fp8"],
                         "label": ["M (precision=fp32)", "M (precision=fp8)"], "figure_title": ["F", "F"]})
    (fig,) = figure_layout(grid, runs)
    assert [a for a, _ in fig["arms"]] == ["m-precision=fp32", "m-precision=fp8"]
    assert dict(fig["arms"])["m-precision=fp8"] == "M (precision=fp8)"


def test_the_survival_panel_says_so_in_words_when_no_run_collapsed():
    runs, per_run = frames()
    texts = [t.get_text() for t in dose_figure(dose_frame(runs, per_run, "fig6"), "fig6").get_axes()[1].texts]
    assert not any("no run collapsed" in t for t in texts)  # the no-IS runs collapse at fp8 and mxfp4
    per_run["survival_step"], per_run["collapse_step"] = 32.0, float("nan")
    texts = [t.get_text() for t in dose_figure(dose_frame(runs, per_run, "fig6"), "fig6").get_axes()[1].texts]
    assert "no run collapsed: all 12 survived to their last step (32)" in texts
