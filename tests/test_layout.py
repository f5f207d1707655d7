"""The package layout holds: rl_core.orchestration imports no torch, the names that travel as strings (vLLM's
worker extension, `python -m` modules, dotted names in docs and comments) resolve, and both training engines
declare the TrainingEngine contract's capabilities."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl_core.paths import PACKAGE, REPO

ORCHESTRATION = sorted(f"rl_core.orchestration.{p.stem}" for p in (PACKAGE / "orchestration").glob("*.py")
                       if p.stem != "__init__")


@pytest.mark.parametrize("module", ["rl_core.config", "rl_core.cli", "rl_core.paths", *ORCHESTRATION])
def test_orchestration_modules_import_no_torch(module):
    """What Snakemake, make and analysis/ import, each in a fresh process: torch stays out."""
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0, f"{module} imports torch"


def resolve(name: str):
    """The object a dotted name names: the longest importable module prefix, then attributes (a dataclass
    field or annotated class attribute counts); raises LookupError where nothing answers to it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        obj = importlib.import_module(module)
        for attr in parts[i:]:
            if not hasattr(obj, attr) and attr in getattr(obj, "__annotations__", {}):
                return obj
            if not hasattr(obj, attr):
                raise LookupError(f"{name}: {module} has no {'.'.join(parts[i:])}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"{name}: no such module")


def test_the_vllm_worker_extension_resolves_without_importing_vllm():
    """vLLM is given its worker extension as a string; it must name a class (vllm itself stays out)."""
    code = ("import importlib, sys; from rl_core.rollout.vllm.engine import WORKER_EXTENSION as W; "
            "module, name = W.rsplit('.', 1); cls = getattr(importlib.import_module(module), name); "
            "assert isinstance(cls, type) and 'vllm' not in sys.modules, (W, cls); print(W)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "rl_core.rollout.vllm.worker.WeightSync"


TEXT = (".py", ".smk", ".yaml", ".md", ".toml", ".cfg")
DOTTED = re.compile(r"(?<![\w./])rl_core(?:\.[A-Za-z_]\w*)+")
PATHS = re.compile(r"(?<![\w./])(?:rl_core|bench|analysis|workflow|tests)/[\w/.-]+\.(?:py|smk|yaml)")


def tree_texts():
    roots = [REPO / n for n in ("Makefile", "Snakefile", "README.md", "pyproject.toml")]
    for d in ("rl_core", "analysis", "bench", "tests", "workflow", "experiments"):
        roots += [p for p in sorted((REPO / d).rglob("*"))
                  if p.suffix in TEXT and "__pycache__" not in p.parts]
    return [p for p in roots if p.is_file()]


def test_every_rl_core_name_and_path_in_the_tree_exists():
    """Dotted names (``python -m rl_core...``, docstrings, comments, strings) and file paths anywhere in the
    tree name what exists: a module moved without its references fails here."""
    missing = []
    for path in tree_texts():
        text = path.read_text()
        for m in DOTTED.finditer(text):
            try:
                resolve(m.group(0))
            except LookupError as e:
                missing.append(f"{path.relative_to(REPO)}: {e}")
        for m in PATHS.finditer(text):
            if not Path(m.group(0)).stem.isupper() and not (REPO / m.group(0)).exists():  # bench/NAME.py
                missing.append(f"{path.relative_to(REPO)}: {m.group(0)} does not exist")
    assert not missing, "\n".join(missing)


def test_both_training_engines_declare_the_contracts_capabilities():
    from rl_core.config import ModelConfig
    from rl_core.policy.model import MoEPolicy, hf_config
    from rl_core.train import TRAIN_ENGINES
    from rl_core.training.base import OWN_GRAD_REDUCTION, OWN_OPTIMIZER_STATE, TrainingEngine
    from rl_core.training.megatron.engine import MegatronPolicy  # imports no megatron until used

    policy = MoEPolicy(hf_config(ModelConfig(num_hidden_layers=1), vocab_size=24, eos_token_id=1,
                                 pad_token_id=0))
    assert isinstance(policy, TrainingEngine) and policy.capabilities == frozenset()
    assert MegatronPolicy.capabilities == {OWN_GRAD_REDUCTION, OWN_OPTIMIZER_STATE}
    for method in ("clip_grad_norm", "optimizer_state", "load_optimizer_state"):
        assert callable(getattr(MegatronPolicy, method)), method
    assert set(TRAIN_ENGINES) == {"torch", "megatron"}
