"""Grid files: schema and typed-config errors name file/figure/arm/key; paper.yaml expands to the paper's
arms; the resolution order defaults <- preset <- base <- figure base <- arm <- seed."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_core.orchestration import grid as G

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "experiments" / "paper.yaml"
SMOKE = REPO / "experiments" / "smoke.yaml"

ON_POLICY = {"minirl", "minirl_length_norm", "minirl_no_is", "minirl_r3", "minirl_r3_length_norm",
             "minirl_r3_no_is"}
OFF_POLICY = {"minirl_no_clip", "minirl_r2_no_clip", "minirl_r2", "minirl_r3"}
PAPER_ARMS = (
    {("fig1_on_policy", a) for a in ON_POLICY}
    | {("fig2_off_policy_n2", a) for a in OFF_POLICY}
    | {("fig3_off_policy_n4", a) for a in OFF_POLICY}
    | {("fig4_off_policy_n8", a) for a in ("minirl_r2_no_clip", "minirl_r2", "minirl_r3")}
    | {("fig5_cold_start", a) for a in ("cold_terse", "cold_chain", "cold_scratchpad")}
    | {("fig1c_on_policy_fp32", a) for a in ON_POLICY}
    | {("fig6_precision_dose", f"{a}-precision={p}") for a in ("minirl", "minirl_no_is")
       for p in ("fp32", "bf16", "fp8_w8a16", "fp8", "mxfp4")}
)


def write_grid(tmp_path, data, name="g.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny(**figure_extra):
    fig = {"title": "F", "arms": {"a": {"label": "A"}}, **figure_extra}
    return {"name": "t", "preset": "smoke", "figures": {"f": fig}}


# ------------------------------------------------------------------------------------------ paper.yaml


@pytest.mark.parametrize("preset", ["smoke", "mini", "full"])
def test_paper_expands_to_exactly_the_papers_arms_at_every_preset(preset):
    grid = G.load_grid(PAPER, preset)
    pairs = [(r.figure, r.arm) for r in grid.runs]
    assert grid.seeds == [0, 1, 2] and len(pairs) == 3 * len(set(pairs)) == 3 * 36  # three seeds by default
    assert set(pairs) == PAPER_ARMS
    assert grid.cold_starts == ["terse", "chain", "scratchpad"]
    assert {r.preset for r in grid.runs} == {preset}


def test_paper_horizons_are_in_the_papers_proportions():
    """N = 1 / 2 / 4 / 8 train 1 : 2 : 10/3 : 55/12 times the preset's steps (the paper's 1,200 / 2,400 /
    4,000 / 5,500), rounded to a multiple of N; eval.every stretches alike."""
    for preset, s1 in (("mini", 32), ("smoke", 8)):
        cfgs = {r.figure: r.config for r in G.load_grid(PAPER, preset).runs}
        steps = {f: (c.train.n_minibatches, c.train.steps) for f, c in cfgs.items()}
        want = {1: s1, 2: 2 * s1, 4: 4 * round(s1 * 10 / 3 / 4), 8: 8 * max(1, round(s1 * 55 / 12 / 8))}
        assert all(st == want[n] and st % n == 0 for n, st in steps.values()), (preset, steps)
    mini = {r.figure: r.config for r in G.load_grid(PAPER, "mini").runs}
    assert [mini[f].eval.every for f in ("fig1_on_policy", "fig2_off_policy_n2", "fig3_off_policy_n4",
                                         "fig4_off_policy_n8")] == [8, 16, 27, 37]


def test_a_figure_horizon_stretches_steps_and_eval_cadence():
    fig = tiny(horizon=2.5, base={"train": {"n_minibatches": 4, "steps": 8}, "eval": {"every": 3}})
    cfg = G.grid_from_dict(fig).runs[0].config
    assert (cfg.train.steps, cfg.eval.every) == (20, 8)            # 8 x 2.5; 3 x 2.5 = 7.5 -> 8
    with pytest.raises(G.GridError, match="horizon"):
        G.grid_from_dict(tiny(horizon=0))


def test_paper_knobs_per_figure():
    runs = {(r.figure, r.arm): r.config for r in G.load_grid(PAPER).runs}
    n = {"fig1_on_policy": 1, "fig2_off_policy_n2": 2, "fig3_off_policy_n4": 4, "fig4_off_policy_n8": 8,
         "fig5_cold_start": 2, "fig1c_on_policy_fp32": 1, "fig6_precision_dose": 1}
    for (fig, arm), cfg in runs.items():
        assert cfg.train.n_minibatches == n[fig], (fig, arm)
        dose = arm.partition("-precision=")[2]
        assert cfg.rollout.precision == ("fp32" if fig == "fig1c_on_policy_fp32" else dose or "fp8")
        # The paper's stress test trains in bf16; the control has no precision gap at all.
        assert cfg.train.precision == ("fp32" if fig == "fig1c_on_policy_fp32" else "bf16")
        assert cfg.init == ""
        assert cfg.replay.mode == ("r3" if "r3" in arm else "r2" if "r2" in arm or fig == "fig5_cold_start"
                                   else "none"), (fig, arm)
        want = ("minirl_no_clip" if "no_clip" in arm else "minirl_no_is" if "no_is" in arm
                else "minirl_length_norm" if "length_norm" in arm else "minirl")
        assert cfg.loss.objective == want, (fig, arm)
    assert {runs["fig5_cold_start", f"cold_{t}"].cold_start for t in G.TEACHERS} == set(G.TEACHERS)
    assert {c.cold_start for (f, _), c in runs.items() if f != "fig5_cold_start"} == {"chain"}


def test_paper_labels_and_meta():
    grid = G.load_grid(PAPER)
    r = grid.run("fig1_on_policy", "minirl_no_is", 0)
    assert r.label == "MiniRL - train-infer-IS"
    assert grid.run("fig2_off_policy_n2", "minirl_r2_no_clip", 0).label == "MiniRL + R2 (no clipping)"
    assert r.run_dir == "runs/fig1_on_policy/minirl_no_is/seed0"
    meta = r.meta
    assert {k: meta[k] for k in ("grid", "figure", "arm", "seed", "preset", "paper_figure")} == {
        "grid": "paper", "figure": "fig1_on_policy", "arm": "minirl_no_is", "seed": 0, "preset": "mini",
        "paper_figure": 1}
    assert len(meta["config_hash"]) == 12 and meta["figure_title"]
    assert '"init":"results/paper/models/chain"' in r.config_json(init="results/paper/models/chain")


def test_smoke_grid_runs_the_dag_shapes_ci_needs():
    grid = G.load_grid(SMOKE)
    assert grid.preset == "smoke" and len(grid.runs) == 6 and len(grid.seeds) == 1
    assert len(grid.trained_runs) == 5   # precision/minirl-precision=fp8 is on_policy/minirl
    modes = {(r.config.train.n_minibatches, r.config.replay.mode) for r in grid.runs}
    assert (2, "r2") in modes and any(m == "r3" for _, m in modes)


# ---------------------------------------------------------------------------------------- resolution


def test_resolution_order_defaults_preset_base_figure_arm_seed(tmp_path):
    data = tiny(base={"loss": {"is_cap": 3.0}, "train": {"lr": 0.1}})
    data["seeds"] = [7]
    data["base"] = {"loss": {"is_cap": 2.0, "eps_low": 0.1}, "train": {"lr": 0.5, "steps": 96}}
    data["figures"]["f"]["arms"]["a"]["config"] = {"loss": {"is_cap": 4.0}}
    run = G.load_grid(write_grid(tmp_path, data)).runs[0]
    cfg = run.config
    assert cfg.loss.eps_low == 0.1      # grid base over defaults
    assert cfg.train.lr == 0.1          # figure base over grid base
    assert cfg.loss.is_cap == 4.0       # arm over figure base
    assert cfg.train.steps == 96        # the grid base over the preset (smoke: 8)
    assert cfg.train.batch_prompts == 4  # the preset (smoke) over the defaults where the grid is silent
    assert cfg.train.seed == 7          # the seeds axis owns train.seed
    assert cfg.loss.eps_high == 0.27    # untouched default
    assert run.over_preset == ("train.steps=96",)


@pytest.mark.parametrize("where", ["base", "figure", "arm", "axis"])
def test_a_train_seed_in_the_grid_is_refused_the_seeds_come_from_seeds(tmp_path, where):
    """An arm's `train: {seed: 5}` was overwritten by the grid seed without a word."""
    data = tiny()
    if where == "base":
        data["base"] = {"train": {"seed": 5}}
    elif where == "figure":
        data["figures"]["f"]["base"] = {"train": {"seed": 5}}
    elif where == "arm":
        data["figures"]["f"]["arms"]["a"]["config"] = {"train": {"seed": 5}}
    else:
        data["figures"]["f"]["axes"] = {"train.seed": [5, 6]}
    with pytest.raises(G.GridError, match=r"train\.seed is set \(5\), but in a grid every arm runs once per "
                                          r"seed of `seeds:`.*seeds: \[5\]"):
        G.load_grid(write_grid(tmp_path, data))


def test_an_lr_axis_under_the_mini_preset_keeps_three_lrs(tmp_path):
    """The preset used to be applied after the arms and ran all three arms at its lr 3e-4."""
    data = tiny(axes={"train.lr": [1e-4, 1e-3, 3e-3]})
    del data["figures"]["f"]["arms"]
    runs = G.load_grid(write_grid(tmp_path, data), "mini").runs
    assert [r.config.train.lr for r in runs] == [1e-4, 1e-3, 3e-3]
    assert len({r.meta["config_hash"] for r in runs}) == 3
    assert [r.over_preset for r in runs] == [("train.lr=0.0001",), ("train.lr=0.001",), ("train.lr=0.003",)]
    assert {r.config.train.steps for r in runs} == {32}  # the rest of the preset still applies


def test_an_arms_group_size_survives_the_preset(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"]["g16"] = {"label": "G16", "config": {"rollout": {"group_size": 16}}}
    for preset, default_g in (("smoke", 4), ("mini", 8), ("full", 16)):
        runs = {r.arm: r for r in G.load_grid(write_grid(tmp_path, data), preset).runs}
        assert runs["a"].config.rollout.group_size == default_g and runs["a"].over_preset == ()
        assert runs["g16"].config.rollout.group_size == 16
        assert runs["g16"].over_preset == (() if preset == "full" else ("rollout.group_size=16",))


def test_cli_shows_what_the_grid_sets_over_the_preset(tmp_path):
    data = tiny(axes={"train.lr": [1e-4]})
    out = subprocess.run([sys.executable, "-m", "rl_core.orchestration.grid", str(write_grid(tmp_path, data)),
                          "--preset", "mini"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "over preset mini: train.lr=0.0001" in out


def test_preset_argument_overrides_the_grid_default_and_unknown_preset_fails(tmp_path):
    path = write_grid(tmp_path, tiny())
    mini = G.load_grid(path, "mini").runs[0].config
    assert mini.train.steps == 32 and mini.train.batch_prompts == 16  # experiments/presets.yaml: mini
    with pytest.raises(G.GridError, match=r"unknown preset 'huge' \(presets: \['full', 'mini', 'smoke'\]\)"):
        G.load_grid(path, "huge")


def test_base_model_config_ignores_figures_and_arms(tmp_path):
    data = tiny(base={"loss": {"objective": "grpo"}})
    data["base"] = {"model": {"rope_theta": 500.0, "num_experts": 6}}
    grid = G.load_grid(write_grid(tmp_path, data))
    assert grid.base_config.model.rope_theta == 500.0 and grid.base_config.loss.objective == "minirl"
    assert grid.base_config.model.num_experts == 6  # the grid base over the preset (smoke: 4)
    assert grid.base_config.model.num_experts_per_tok == 2  # the preset where the grid is silent
    assert grid.base_config.model.hidden_size == 32  # the smoke preset
    sft = grid.stage_config("sft", "terse")
    assert sft["cold_start"] == "terse" and set(sft) == {"model", "task", "pipeline", "train", "cold_start",
                                                          "eval"}
    assert sft["eval"] == {"n_problems": sft["task"]["n_bench"]}  # only to pass the cross-check
    assert "loss" not in grid.stage_config("pretrain") and "rollout" in grid.stage_config("eval")


def test_one_cold_start_per_teacher_used(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"] = {"a": {"label": "A", "config": {"cold_start": "scratchpad"}},
                                    "b": {"label": "B", "config": {"cold_start": "scratchpad"}},
                                    "c": {"label": "C", "config": {"init": "/ckpt/mine"}}}
    assert G.load_grid(write_grid(tmp_path, data)).cold_starts == ["scratchpad"]


def test_axes_cross_with_arms(tmp_path):
    data = tiny(axes={"train.n_minibatches": [2, 4], "replay.mode": ["r2", "r3"]})
    data["figures"]["f"]["arms"]["b"] = {"label": "B", "config": {"loss": {"objective": "cispo"}}}
    runs = G.load_grid(write_grid(tmp_path, data)).runs
    assert len(runs) == 8
    r = next(r for r in runs if r.arm == "b-n_minibatches=4-mode=r3")
    assert (r.config.train.n_minibatches, r.config.replay.mode, r.config.loss.objective) == (4, "r3", "cispo")
    assert r.label == "B (n_minibatches=4, mode=r3)"


def test_axes_alone_make_the_arms(tmp_path):
    data = tiny(axes={"loss.is_cap": [2, 5]})
    del data["figures"]["f"]["arms"]
    assert [r.arm for r in G.load_grid(write_grid(tmp_path, data)).runs] == ["is_cap=2", "is_cap=5"]


# ------------------------------------------------------------------------------------------- errors


def test_misspelt_key_in_an_arm_names_file_figure_arm_and_key(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"]["a"]["config"] = {"loss": {"objectve": "minirl"}}
    path = write_grid(tmp_path, data)
    with pytest.raises(G.GridError) as e:
        G.load_grid(path)
    msg = str(e.value)
    assert str(path) in msg and "figure 'f', arm 'a'" in msg and "loss.objectve" in msg and "objective" in msg


def test_bad_value_in_figure_base_is_attributed_to_the_figure(tmp_path):
    path = write_grid(tmp_path, tiny(base={"replay": {"mode": "r4"}}))
    with pytest.raises(G.GridError, match=r"figure 'f', base: replay\.mode: 'r4' is not one of"):
        G.load_grid(path)


def test_bad_key_in_grid_base_is_attributed_to_the_base(tmp_path):
    data = tiny()
    data["base"] = {"trian": {"lr": 1.0}}
    with pytest.raises(G.GridError, match=r"g\.yaml: base: unknown key 'trian'"):
        G.load_grid(write_grid(tmp_path, data))


def test_schema_errors_name_where(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"]["a"]["confg"] = {}
    data["figures"]["f"]["arms"]["b"] = {"config": {}}
    data["seeds"] = [0, "one"]
    with pytest.raises(G.GridError) as e:
        G.load_grid(write_grid(tmp_path, data))
    msg = str(e.value)
    assert "figure 'f', arm 'a': Additional properties are not allowed ('confg' was unexpected)" in msg
    assert "figure 'f', arm 'b': 'label' is a required property" in msg
    assert "seeds.1: 'one' is not of type 'integer'" in msg


def test_figure_without_arms_or_axes(tmp_path):
    data = tiny()
    del data["figures"]["f"]["arms"]
    with pytest.raises(G.GridError, match=r"figure 'f': a figure needs `arms`, `axes` or `stress`"):
        G.load_grid(write_grid(tmp_path, data))


def test_unknown_axis_key_suggests_the_right_one(tmp_path):
    path = write_grid(tmp_path, tiny(axes={"train.n_minibatch": [2]}))
    with pytest.raises(G.GridError, match=r"figure 'f': axis 'train.n_minibatch' is not a RunConfig key "
                                          r"\(did you mean 'train.n_minibatches'\?\)"):
        G.load_grid(path)


def test_steps_not_a_multiple_of_n_names_the_arm(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"]["a"]["config"] = {"train": {"n_minibatches": 3}}
    with pytest.raises(G.GridError, match=r"arm 'a': train\.steps: 8 is not a multiple of"):
        G.load_grid(write_grid(tmp_path, data))


def test_arm_may_not_change_the_shared_base_model(tmp_path):
    data = tiny()
    data["figures"]["f"]["arms"]["a"]["config"] = {"model": {"rope_theta": 500.0}}
    with pytest.raises(G.GridError, match=r"arm 'a': model\.rope_theta = 500\.0 differs from the grid's"):
        G.load_grid(write_grid(tmp_path, data))


def test_not_a_mapping_and_bad_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(G.GridError, match=r"list\.yaml: a grid file is a YAML mapping"):
        G.load_grid(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [\n")
    with pytest.raises(G.GridError, match=r"bad\.yaml: not valid YAML"):
        G.load_grid(tmp_path / "bad.yaml")


def test_importing_grid_leaves_torch_out():
    code = "import sys, rl_core.orchestration.grid; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_cli_lists_runs():
    out = subprocess.run([sys.executable, "-m", "rl_core.orchestration.grid", str(SMOKE)],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "smoke: 6 runs, preset smoke, cold starts ['chain']" in out


def test_workflow_options_are_split_from_the_grid_and_cli_seeds_become_ints():
    grid, options = G.split_workflow_options({"name": "x", "seeds": ["0", "1"], "results": "out",
                                              "tracking_uri": None})
    assert grid == {"name": "x", "seeds": [0, 1]}
    assert options == {"results": "out", "tracking_uri": "", "live_tracking": True, "confirm_long": False,
                       "grid": "", "only_figures": ""}
    _, options = G.split_workflow_options({"name": "x", "live_tracking": False})
    assert options["live_tracking"] is False
    for word, value in (("false", False), ("OFF", False), ("0", False), ("true", True), ("yes", True)):
        _, options = G.split_workflow_options({"name": "x", "live_tracking": word, "confirm_long": word})
        assert options["live_tracking"] is value and options["confirm_long"] is value
    with pytest.raises(G.GridError, match=r"--config live_tracking=flase: not an on/off value \(one of true"):
        G.split_workflow_options({"name": "x", "live_tracking": "flase"})


def test_figures_option_keeps_those_figures_and_their_findings_and_names_an_unknown_one():
    data = G.read_yaml(SMOKE)
    assert {"on_policy", "off_policy_n2", "precision"} <= set(data["figures"])  # precondition
    grid, options = G.split_workflow_options(dict(data, only_figures="off_policy_n2"))
    assert list(grid["figures"]) == ["off_policy_n2"] and options["only_figures"] == "off_policy_n2"
    assert [f["figure"] for f in grid["findings"]] == ["off_policy_n2"] * len(grid["findings"])
    assert len(grid["findings"]) == sum(f["figure"] == "off_policy_n2" for f in data["findings"]) > 0
    assert grid["base"] == data["base"] and grid["seeds"] == data["seeds"]
    full, subset = G.grid_from_dict(data), G.grid_from_dict(grid)
    assert {r.figure for r in subset.runs} == {"off_policy_n2"}
    assert [r.meta["config_hash"] for r in subset.runs] == \
        [r.meta["config_hash"] for r in full.runs if r.figure == "off_policy_n2"]  # the same runs
    with pytest.raises(G.GridError, match=r"--config only_figures: nope is not a figure of this grid "
                                          r"\(its figures: on_policy, off_policy_n2, precision"):
        G.split_workflow_options(dict(data, only_figures="on_policy,nope"))
    out = subprocess.run([sys.executable, "-m", "rl_core.orchestration.grid", str(SMOKE), "--figures",
                          "on_policy"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert f"smoke: {sum(r.figure == 'on_policy' for r in full.runs)} runs" in out


# ------------------------------------------------------------------ duplicate keys and findings at load


def test_two_arms_of_one_name_fail_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: d\npreset: smoke\nfigures:\n  f:\n    title: F\n    arms:\n"
                    "      a: {label: A}\n      a: {label: A2, config: {replay: {mode: r3}}}\n")
    with pytest.raises(G.GridError, match=r"dup\.yaml, line 8: duplicate key 'a' \(first given on line 7\)"):
        G.load_grid(path)


def test_a_duplicate_key_inside_an_arm_config_fails_too(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: d\nfigures:\n  f:\n    title: F\n    arms:\n      a:\n        label: A\n"
                    "        config: {loss: {is_cap: 2, is_cap: 3}}\n")
    with pytest.raises(G.GridError, match=r"line 8: duplicate key 'is_cap'"):
        G.load_grid(path)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("name: m\npreset: smoke\nbase: &b {loss: {is_cap: 2.0}}\nfigures:\n  f:\n    title: F\n"
                    "    arms:\n      a: {label: A, config: {<<: *b, train: {lr: 1e-3}}}\n")
    cfg = G.load_grid(path).runs[0].config
    assert cfg.loss.is_cap == 2.0 and cfg.train.lr == 1e-3  # YAML 1.2 float, not the string '1e-3'


@pytest.mark.parametrize("finding, message", [
    ({"id": "x", "claim": "c", "figure": "f", "kind": "stable", "arm": "nope"}, r"arm 'f/nope' is not in"),
    ({"id": "x", "claim": "c", "figure": "g", "kind": "stable", "arm": "a"}, r"figure 'g' is not one of"),
    ({"id": "x", "claim": "c", "figure": "f", "kind": "collapse", "arm": "a"}, r"kind 'collapse' is not"),
    ({"id": "x", "claim": "c", "figure": "f", "kind": "better", "metric": "final_scroe", "better": "a",
      "worse": "a-lr=0.001"}, r"metric 'final_scroe' is not one of"),
    ({"id": "x", "claim": "c", "figure": "f", "kind": "stable", "arm": "a", "by_frac": 2}, r"'by_frac'"),
])
def test_a_bad_finding_fails_grid_loading(tmp_path, finding, message):
    data = tiny()
    data["findings"] = [finding]
    with pytest.raises(G.GridError, match=r"g\.yaml: findings\[0\] \('x'\): " + message):
        G.load_grid(write_grid(tmp_path, data))


def test_findings_may_name_arms_made_by_axes(tmp_path):
    data = tiny(axes={"train.lr": [1e-3, 3e-3]})
    data["findings"] = [{"id": "x", "claim": "c", "figure": "f", "kind": "better", "metric": "final_score",
                         "better": "a-lr=0.001", "worse": "a-lr=0.003"}]
    assert len(G.load_grid(write_grid(tmp_path, data)).runs) == 2


def test_importing_grid_leaves_pandas_out():
    code = ("import sys, rl_core.orchestration.grid; "
            "sys.exit('pandas' in sys.modules or 'numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_figure_may_list_its_panels_and_the_schema_knows_every_panel(tmp_path):
    from analysis.plots import PANELS
    schema = yaml.safe_load(G.SCHEMA_PATH.read_text())
    assert schema["$defs"]["figure"]["properties"]["panels"]["items"]["enum"] == list(PANELS)
    assert G.load_grid(write_grid(tmp_path, tiny(panels=["score", "masked", "seq_ratio"]))).runs
    with pytest.raises(G.GridError, match=r"figure 'f'.*'ratio' is not one of"):
        G.load_grid(write_grid(tmp_path, tiny(panels=["score", "ratio"])))


def test_corrections_grid_crosses_eight_objectives_with_two_settings_and_three_seeds():
    grid = G.load_grid(REPO / "experiments" / "corrections.yaml")
    objectives = {"minirl", "minirl_no_is", "tis_decoupled", "icepop", "seq_mis", "gspo", "grpo", "cispo"}
    assert grid.seeds == [0, 1, 2] and len(grid.runs) == 2 * 8 * 3 and grid.cold_starts == ["chain"]
    for r in grid.runs:
        c = r.config
        assert c.loss.objective == r.arm and r.arm in objectives
        assert (c.rollout.precision, c.train.precision) == ("fp8", "bf16")          # the stress test
        n, replay = (1, "none") if r.figure == "fig7_corrections" else (4, "r2")
        assert (c.train.n_minibatches, c.replay.mode) == (n, replay), (r.figure, r.arm)


def test_runs_the_paper_grid_repeats_are_trained_once():
    grid = G.load_grid(PAPER)
    shared = {(f, a): (by.figure, by.arm) for (f, a, _), by in grid.trained_by.items()
              if (by.figure, by.arm) != (f, a)}
    fig6 = "fig6_precision_dose"
    assert shared == {("fig5_cold_start", "cold_chain"): ("fig2_off_policy_n2", "minirl_r2"),
                      (fig6, "minirl-precision=fp8"): ("fig1_on_policy", "minirl"),
                      (fig6, "minirl_no_is-precision=fp8"): ("fig1_on_policy", "minirl_no_is")}
    assert len(grid.trained_runs) == len(grid.runs) - 3 * len(grid.seeds)


def test_a_stress_axis_crosses_every_arm_with_every_level(tmp_path):
    grid = G.load_grid(write_grid(tmp_path, tiny(stress={"train.lr": [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]})))
    arms = grid.figures["f"]
    assert len(arms) == 5 * len(tiny()["figures"]["f"]["arms"])
    assert sorted({r.config.train.lr for r in grid.runs}) == [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]


@pytest.mark.parametrize("levels, message", [
    ([1e-4, 2e-4, 4e-4, 8e-4], "at least 5 levels"),
    ([1e-4, 2e-4, 4e-4, 8e-4, 2e-3], r"at most 2x apart; 0.0008 -> 0.002 is 2.5x"),
    ([1e-4, 2e-4, 4e-4, 3e-4, 6e-4], "levels must increase"),
    ([1e-4, 1e-4, 2e-4, 4e-4, 8e-4], "levels repeat"),
])
def test_a_learning_rate_stress_axis_is_checked(tmp_path, levels, message):
    with pytest.raises(G.GridError, match=message):
        G.load_grid(write_grid(tmp_path, tiny(stress={"train.lr": levels})))


def test_the_stress_grid_loads_with_every_arm_at_every_level():
    grid = G.load_grid(REPO / "experiments" / "stress.yaml")
    for figure, arms in grid.figures.items():
        levels = grid.data["figures"][figure]["stress"]["train.lr"]
        assert len(arms) == len(levels) * len(grid.data["figures"][figure]["arms"])


def test_bad_seeds_on_the_command_line_are_one_line(capsys):
    assert G.main([str(G.REPO / "experiments" / "smoke.yaml"), "--seeds", "0,a"]) == 2
    assert "error: --seeds: 'a' is not a seed (comma-separated integers" in capsys.readouterr().err
