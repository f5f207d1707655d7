"""One grouped matmul for the experts, whatever the installed torch offers.

``torch.nn.functional.grouped_mm`` (torch 2.13, the pinned version) multiplies each group of rows of `a`
(the rows from ``offs[g-1]`` to ``offs[g]``) by its own matrix ``b[g]``. A GPU machine's image may carry an
older torch: there the private ``torch._grouped_mm`` (same signature) stands in, and without either a loop
over the groups (one ``mm`` each, the same products) does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_mm_loop(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a (N, k), b (G, k, n), offs (G,) cumulative row counts -> (N, n): rows of group g times b[g]."""
    ends = offs.tolist()
    parts, start = [], 0
    for g, end in enumerate(ends):
        parts.append(a[start:end] @ b[g])
        start = end
    if start < a.shape[0]:  # rows past the last offset belong to no group: zero, as grouped_mm leaves them
        parts.append(a.new_zeros(a.shape[0] - start, b.shape[-1]))
    return torch.cat(parts)


#: The implementation this torch provides (checked once at import).
grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None) or grouped_mm_loop
