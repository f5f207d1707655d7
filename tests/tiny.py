"""The tiny cold start the trainer's tests share: pretrain + SFT of a 2-layer MoE on a small task."""

from pathlib import Path

import torch

from rl_core import coldstart
from rl_core import config as C


def build_cold_start(root: Path, tiny: dict, teacher: str = "terse") -> Path:
    """Pretrain and SFT (`teacher`) under the config `tiny` into root/base and root/sft; returns root/sft."""
    torch.set_num_threads(1)
    cfg = C.resolve(tiny)
    coldstart.pretrain(cfg, root / "base")
    coldstart.sft(cfg, teacher, root / "base", root / "sft")
    return root / "sft"
