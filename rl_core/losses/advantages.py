"""Advantages from a group's binary rewards (docs/objective.md §3.4): MiniRL's group mean, GRPO's z-score.

Rewards are group-contiguous (B*G,): prompt i's G responses are rows i*G .. i*G+G-1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B*G,) group-contiguous -> (B, G) float."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size {group_size} does not divide {rewards.numel()} rewards")
    r = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    return r.reshape(-1, group_size)


def _centred(g: Tensor) -> Tensor:
    """R - group mean; exactly 0 for a constant group (a float mean of equal values can be off by 1 ulp)."""
    constant = (g == g[:, :1]).all(-1, keepdim=True)
    return torch.where(constant, 0.0, g - g.mean(-1, keepdim=True))


def group_mean(rewards: Tensor, group_size: int) -> Tensor:
    """A = R - mean of its group (MiniRL, CISPO). rewards (B*G,) group-contiguous -> (B*G,)."""
    return _centred(_groups(rewards, group_size)).reshape(-1)


def group_zscore(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """A = (R - mean) / (std + eps) over its group (GRPO). rewards (B*G,) -> (B*G,).

    std is the unbiased (Bessel-corrected) group std, as in TRL's and verl's GRPO, so the numbers match
    what users of those frameworks see; eps = 1e-6 as in verl. A constant group gives exactly 0.
    """
    if group_size < 2:
        raise ValueError(f"group_zscore needs group_size >= 2 (unbiased std), got {group_size}")
    g = _groups(rewards, group_size)
    return (_centred(g) / (g.std(-1, keepdim=True) + eps)).reshape(-1)


ADVANTAGES: dict[str, Callable[[Tensor, int], Tensor]] = {
    "group_mean": group_mean, "group_zscore": group_zscore}


__all__ = ["group_mean", "group_zscore", "ADVANTAGES"]
