"""The README's add-an-arm snippet works as pasted, and the grid Snakemake runs is the one asked for: a bare
`snakemake -n` plans the paper's grid; `--configfile` replaces that default whole (a smoke grid does not
inherit the paper's figures)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl_core.orchestration.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
RUN_DIR = re.compile(r"output: \S*/runs/([^/\s]+)/([^/\s]+)/seed(\d+)/summary\.json")


def add_an_arm_snippet() -> tuple[str, str]:
    """(figure key, YAML block) of the README's "Adding an arm" section, as a reader would copy them."""
    section = (ROOT / "README.md").read_text().split("## Adding an arm", 1)[1].split("\n## ", 1)[0]
    figure = re.search(r"add under `(\w+): arms:`", section).group(1)
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return figure, block


def paste(grid_text: str, figure: str, block: str) -> str:
    """`block` pasted on the line after `figure`'s `arms:` line, as the README says."""
    lines = grid_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{figure}:")
    arms = next(i for i in range(start, len(lines)) if lines[i].strip() == "arms:")
    return "".join(lines[: arms + 1]) + block + "".join(lines[arms + 1:])


def planned_runs(*args: str, results: Path) -> set[tuple[str, str, int]]:
    """(figure, arm, seed) of every RL run `snakemake -n` plans (on a fresh results folder)."""
    out = subprocess.run([str(SNAKEMAKE), "-n", "--nolock", *args, "--config", f"results={results}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {(f, a, int(s)) for f, a, s in RUN_DIR.findall(out.stdout + out.stderr)}


@pytest.fixture(scope="module")
def paper_runs() -> set[tuple[str, str, int]]:
    return {(r.figure, r.arm, r.seed) for r in load_grid(ROOT / "experiments" / "paper.yaml").runs}


def test_the_readme_add_an_arm_snippet_adds_exactly_one_arm(tmp_path, paper_runs):
    figure, block = add_an_arm_snippet()
    grid = tmp_path / "paper_plus.yaml"
    grid.write_text(paste((ROOT / "experiments" / "paper.yaml").read_text(), figure, block))
    arm = re.match(r"\s*(\w+):", block).group(1)
    runs = {(r.figure, r.arm, r.seed) for r in load_grid(grid).runs}
    assert runs - paper_runs == {(figure, arm, s) for s in (0, 1, 2)} and paper_runs <= runs  # no alias trap
    assert planned_runs("--configfile", str(grid), results=tmp_path / "results") == runs


def test_shipped_grids_use_no_yaml_aliases():
    for path in (ROOT / "experiments").glob("*.yaml"):
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert not re.search(r"(^|\s)[&*][A-Za-z_]", text), f"{path.name}: a YAML anchor or alias"


def test_bare_snakemake_plans_the_paper_grid_and_a_configfile_replaces_it(tmp_path, paper_runs):
    assert planned_runs(results=tmp_path / "bare") == paper_runs
    smoke = {(r.figure, r.arm, r.seed) for r in load_grid(ROOT / "experiments" / "smoke.yaml").runs}
    assert planned_runs("--configfile", "experiments/smoke.yaml", results=tmp_path / "smoke") == smoke
    assert not {f for f, _, _ in smoke} & {f for f, _, _ in paper_runs}  # nothing of the paper inherited
