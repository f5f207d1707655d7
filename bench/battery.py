"""A battery of hostile inputs and faults against the platform: bad keys and values, duplicate arms, bad
findings, corrupt and truncated files, two trainers on one directory, torn metrics.

    .venv/bin/python bench/battery.py [--coldstart DIR]     # about a minute on one core

Each case says what happened: ``error`` (refused before any work, with a message that names the key, file
or directory), ``recovered`` (the fault was named and the run went on correctly), or ``SILENT`` (accepted
without a word: a bug). Exit status 1 when any case is SILENT.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rl_core

from rl_core import config as C  # noqa: E402
from rl_core.orchestration import grid as G  # noqa: E402
from rl_core.paths import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

CASES: list = []


def case(name: str):
    def wrap(fn):
        CASES.append((name, fn))
        return fn
    return wrap


def tiny(**fig) -> dict:
    figure = {"title": "F", "arms": {"a": {"label": "A"}}, **fig}
    return {"name": "t", "preset": "smoke", "figures": {"f": figure}}


def grid_error(data_or_text, *named: str, preset: str | None = None) -> str:
    """'error' when loading the grid raises GridError naming every string in `named`, else 'SILENT'."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.yaml"
        path.write_text(data_or_text if isinstance(data_or_text, str) else yaml.safe_dump(data_or_text))
        try:
            G.load_grid(path, preset)
        except G.GridError as e:
            return "error" if all(n in str(e) for n in named) else f"SILENT (message lacks {named}: {e})"
    return "SILENT"


def arm(config: dict) -> dict:
    data = tiny()
    data["figures"]["f"]["arms"]["a"]["config"] = config
    return data


def finding(**item) -> dict:
    data = tiny()
    data["findings"] = [{"id": "x", "claim": "c", "figure": "f", "kind": "stable", "arm": "a", **item}]
    return data


# ------------------------------------------------------------------------------------------ grids

case("unknown key in an arm")(lambda ctx: grid_error(arm({"loss": {"objectve": "x"}}), "loss.objectve"))
case("wrong type (lr: 'fast')")(lambda ctx: grid_error(arm({"train": {"lr": "fast"}}), "train.lr"))
case("out of range (group_size 1)")(lambda ctx: grid_error(arm({"rollout": {"group_size": 1}}),
                                                            "rollout.group_size"))
case("bad choice (replay.mode r4)")(lambda ctx: grid_error(arm({"replay": {"mode": "r4"}}), "replay.mode"))
case("two arms of one name")(lambda ctx: grid_error(
    "name: d\nfigures:\n  f:\n    title: F\n    arms:\n      a: {label: A}\n      a: {label: B}\n",
    "line 7", "duplicate key 'a'"))
case("duplicate key in the grid base")(lambda ctx: grid_error(
    "name: d\nbase: {loss: {is_cap: 2, is_cap: 3}}\nfigures: {f: {title: F, arms: {a: {label: A}}}}\n",
    "duplicate key 'is_cap'"))
case("finding names a missing arm")(lambda ctx: grid_error(finding(arm="nope"), "f/nope"))
case("finding names a missing figure")(lambda ctx: grid_error(finding(figure="g"), "figure 'g'"))
case("finding with an unknown kind")(lambda ctx: grid_error(finding(kind="collapse"), "kind 'collapse'"))
case("finding with an unknown metric")(lambda ctx: grid_error(tiny() | {"findings": [
    {"id": "x", "claim": "c", "figure": "f", "kind": "better", "metric": "final_scroe", "better": "a",
     "worse": "a"}]}, "final_scroe"))
case("finding with by_frac 2")(lambda ctx: grid_error(finding(by_frac=2), "by_frac"))
case("unknown preset")(lambda ctx: grid_error(tiny(), "unknown preset 'huge'", preset="huge"))
case("axis over an unknown key")(lambda ctx: grid_error(tiny(axes={"train.lrr": [1]}), "train.lrr"))
case("an arm changes the shared base model")(lambda ctx: grid_error(arm({"model": {"hidden_size": 64}}),
                                                                     "model.hidden_size"))
case("steps not a multiple of N")(lambda ctx: grid_error(arm({"train": {"n_minibatches": 3}}), "train.steps"))
case("eval.n_problems > task.n_bench")(lambda ctx: grid_error(arm({"eval": {"n_problems": 99}}),
                                                               "eval.n_problems"))
case("prompt + max_new_tokens > positions")(lambda ctx: grid_error(arm({"rollout": {"max_new_tokens": 250}}),
                                                                    "max_position_embeddings"))
case("missing grid file")(lambda ctx: "error" if _raises(lambda: G.load_grid("/no/grid.yaml"),
                                                         "/no/grid.yaml") else "SILENT")
case("invalid YAML")(lambda ctx: grid_error("name: [\n", "not valid YAML"))
case("grid is a list")(lambda ctx: grid_error("- 1\n", "a grid file is a YAML mapping"))
case("arm without a label")(lambda ctx: grid_error(
    {"name": "t", "figures": {"f": {"title": "F", "arms": {"a": {}}}}}, "'label' is a required property"))
case("seed that is a string")(lambda ctx: grid_error(tiny() | {"seeds": ["one"]}, "seeds.0"))


@case("an lr axis under the mini preset (was silently dropped)")
def _lr_axis(ctx) -> str:
    data = tiny(axes={"train.lr": [1e-4, 1e-3]})
    del data["figures"]["f"]["arms"]
    runs = G.grid_from_dict(data, preset="mini").runs
    return "recovered" if [r.config.train.lr for r in runs] == [1e-4, 1e-3] else "SILENT"


def _raises(fn, named: str) -> bool:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any refusal that names the thing counts
        return named in str(e)
    return False


# ---------------------------------------------------------------------------------------- trainer


def train_cli(*args: str) -> tuple[int, str]:
    from rl_core.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue().strip()


def refused(code: int, err: str, *named: str) -> str:
    ok = code == 2 and len(err.splitlines()) == 1 and all(n in err for n in named)
    return "error" if ok else f"SILENT (exit {code}: {err[:200]})"


def cfg_json(ctx, *overrides: str) -> str:
    from test_train import TINY

    return C.to_json(C.resolve(TINY, {"init": str(ctx["cold"])}, overrides=["train.steps=4", *overrides]))


case("malformed --config-json")(lambda ctx: refused(*train_cli("--out", f"{ctx['tmp']}/x", "--config-json",
                                                               "{bad"), "--config-json"))
case("--config-json that is a list")(lambda ctx: refused(*train_cli("--out", f"{ctx['tmp']}/x",
                                                                    "--config-json", "[1]"), "--config-json"))
case("missing --config file")(lambda ctx: refused(*train_cli("--out", f"{ctx['tmp']}/x", "--config",
                                                             "/no/c.yaml"), "/no/c.yaml"))
case("init that does not exist")(lambda ctx: refused(*train_cli("--out", f"{ctx['tmp']}/x", "init=/no/ckpt"),
                                                     "/no/ckpt"))
case("unknown override key")(lambda ctx: refused(*train_cli("--out", f"{ctx['tmp']}/x", "train.lrr=1"),
                                                 "train.lrr"))
case("model.* that the init checkpoint lacks")(lambda ctx: refused(*train_cli(
    "--out", f"{ctx['tmp']}/x", "--config-json", cfg_json(ctx, "model.num_experts=8")), "model.num_experts"))


@case("truncated safetensors init")
def _truncated_init(ctx) -> str:
    import shutil

    broken = Path(ctx["tmp"]) / "broken_init"
    shutil.copytree(ctx["cold"], broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:999])
    cfg = dataclasses.replace(C.from_json(cfg_json(ctx)), init=str(broken))
    code, err = train_cli("--out", f"{ctx['tmp']}/x", "--config-json", C.to_json(cfg))
    return refused(code, err, "model.safetensors")


@case("two trainers on one run directory")
def _two_trainers(ctx) -> str:
    from rl_core.rundir import hold_lock

    out = Path(ctx["tmp"]) / "locked"
    with hold_lock(out):
        code, err = train_cli("--out", str(out), "--config-json", cfg_json(ctx))
    return refused(code, err, str(out), str(os.getpid()))


def _finished_run(ctx, name: str) -> Path:
    out = Path(ctx["tmp"]) / name
    code, err = train_cli("--out", str(out), "--config-json", cfg_json(ctx))
    assert code == 0, err
    return out


@case("corrupt state.pt: resume from state.prev.pt")
def _corrupt_ckpt(ctx) -> str:
    out = _finished_run(ctx, "corrupt")
    (out / "ckpt" / "state.pt").write_bytes(b"\0" * 100)
    (out / "DONE").unlink()
    code, err = train_cli("--out", str(out), "--config-json", cfg_json(ctx))
    ok = code == 0 and "state.pt: cannot be read" in err and (out / "ckpt" / "state.pt.corrupt").exists()
    return "recovered" if ok and (out / "DONE").exists() else f"SILENT ({code}: {err[:200]})"


@case("both checkpoints corrupt: restart from scratch")
def _both_corrupt(ctx) -> str:
    out = _finished_run(ctx, "both")
    for name in ("state.pt", "state.prev.pt"):
        (out / "ckpt" / name).write_text("garbage")
    (out / "DONE").unlink()
    code, err = train_cli("--out", str(out), "--config-json", cfg_json(ctx))
    return "recovered" if code == 0 and "restarting from scratch" in err else f"SILENT ({code}: {err[:200]})"


@case("finished run, then another config on the same directory")
def _replaced(ctx) -> str:
    out = _finished_run(ctx, "replaced")
    code, err = train_cli("--out", str(out), "--config-json", cfg_json(ctx, "loss.eps_high=0.3"))
    aside = list(out.parent.glob("replaced.replaced-*"))
    return "recovered" if code == 0 and aside and "moved it to" in err else f"SILENT ({code}: {err[:200]})"


@case("torn last metrics line after a kill, then resume")
def _torn_resume(ctx) -> str:
    out = _finished_run(ctx, "torn")
    (out / "DONE").unlink()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "kl/tra')
    code, _ = train_cli("--out", str(out), "--config-json", cfg_json(ctx))
    rows = (out / "metrics.jsonl").read_text().splitlines()
    ok = code == 0 and all(_json_ok(r) for r in rows)
    return "recovered" if ok else "SILENT (torn line kept)"


def _json_ok(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# --------------------------------------------------------------------------------------- analysis


@case("NaN loss in a run that says completed")
def _nan_loss(ctx) -> str:
    from analysis.load import load_grid
    from analysis.stability import stability_runs

    root = Path(ctx["tmp"]) / "nan_grid"
    run = root / "runs" / "f" / "a" / "seed0"
    run.mkdir(parents=True)
    rows = [{"step": s, "minibatch": 1, "kl/train_infer_k1": 1e-3, "loss/value": math.nan if s == 2 else 0.1}
            for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps_done": 3}))
    (run / "DONE").write_text("")
    per_run = stability_runs(*load_grid(root))
    return "error" if per_run["collapse_cause"].iloc[0] == "non-finite" else "SILENT"


@case("completed run with fewer step rows than train.steps")
def _short(ctx) -> str:
    from analysis.load import load_run

    run = Path(ctx["tmp"]) / "short_grid" / "runs" / "f" / "a" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "minibatch": 1, "loss/value": 0.1}) + "\n")
    (run / "config.json").write_text(json.dumps({"train": {"steps": 8}}))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps_done": 8}))
    (run / "DONE").write_text("")
    return "error" if "1 of train.steps=8" in load_run(run)[0]["warning"] else "SILENT"


# ------------------------------------------------------------------------------- other commands


def cli(module: str, *args: str, named: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO)
    err = proc.stderr.strip()
    ok = proc.returncode == 2 and "Traceback" not in err and named in err and len(err.splitlines()) == 1
    return "error" if ok else f"SILENT (exit {proc.returncode}: {err[-200:]})"


case("report: missing --grid-dir")(lambda ctx: cli("analysis.report", "--grid-dir", "/no/dir",
                                                   named="/no/dir"))
case("report: bad --rule")(lambda ctx: cli("analysis.report", "--grid-dir", ctx["tmp"], "--rule", "bogus=1",
                                           named="bogus"))
case("grid CLI: missing file")(lambda ctx: cli("rl_core.orchestration.grid", "/no/g.yaml",
                                               named="/no/g.yaml"))
case("coldstart eval: missing --ckpt")(lambda ctx: cli("rl_core.coldstart", "eval", "--ckpt", "/no/ck",
                                                       "--out", f"{ctx['tmp']}/e.json", named="/no/ck"))
case("tracking: missing --grid-dir")(lambda ctx: cli("rl_core.orchestration.tracking", "grid", "--grid-dir",
                                                     f"{ctx['tmp']}/no/gd", "--grid", "g", named="no/gd"))


def make_cold(root: Path) -> Path:
    import torch
    from test_train import TINY

    from rl_core import coldstart

    torch.set_num_threads(1)
    cfg = C.resolve(TINY)
    with contextlib.redirect_stdout(io.StringIO()):
        coldstart.pretrain(cfg, root / "base")
        coldstart.sft(cfg, "terse", root / "base", root / "sft")
    return root / "sft"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coldstart", help="a tiny cold start of tests/test_train.py's TINY config (else built)")
    args = ap.parse_args()
    counts = {"error": 0, "recovered": 0, "SILENT": 0}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"tmp": tmp, "cold": Path(args.coldstart) if args.coldstart else make_cold(Path(tmp) / "cold")}
        for name, fn in CASES:
            try:
                result = fn(ctx)
            except Exception as e:  # noqa: BLE001 - a crash with a traceback is not a clear error
                result = f"SILENT (crashed: {type(e).__name__}: {e})"
            kind = result.split()[0]
            counts[kind] += 1
            print(f"{kind:9s} {name}" + (f"  -- {result}" if kind == "SILENT" else ""))
    print(f"tried {len(CASES)}: clear error before work {counts['error']}, recovered {counts['recovered']}, "
          f"silently accepted {counts['SILENT']}")
    return 1 if counts["SILENT"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
