"""Test-only: megatron-core 0.16.1 on a CPU, its CUDA calls mapped to the CPU. Never imported by rl_core.

megatron-core assumes a GPU in a few places even with ``use_cpu_initialization=True`` and the local (no
Transformer Engine) layer spec; each is listed with what stands in for it here:

* ``torch.cuda.current_device()`` (RoPE's ``inv_freq.to(...)``, the router's weight move in ``gating``,
  the global memory buffer of DotProductAttention): returns ``"cpu"``.
* ``get_default_causal_mask`` builds its mask with ``device="cuda"``: rebuilt on the CPU (the engine passes
  its own mask, so this only matters to callers that pass none).
* The RNG tracker (``model_parallel_cuda_manual_seed``, ``CudaRNGStatesTracker.add`` / ``fork``) saves and
  sets CUDA generator states: the CPU generator's instead (dropout is 0 in our configs, so nothing draws).
* ``router_gating_linear`` names ``te_general_gemm``, which 0.16.1 leaves undefined when Transformer Engine
  is absent (``NameError``): defined as None, so the plain ``torch.mm`` path runs.
* ``torch.cuda.Stream()`` / ``Event`` (the all-to-all dispatcher's side streams): no-op stand-ins. The engine
  uses the allgather dispatcher; these only keep the alltoall one from failing at construction.

:func:`install` applies all of it and returns a function that undoes it.
"""

from __future__ import annotations

import contextlib

import torch


class _NoStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args):
        pass

    def record(self, *args):
        pass

    def wait(self, *args):
        pass

    def synchronize(self):
        pass


def install():
    """Patch megatron-core and torch.cuda's device / stream / RNG entry points for the CPU; returns undo()."""
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils as mutils
    from megatron.core.transformer.moe import moe_utils

    causal = lambda sq: torch.triu(torch.ones(sq, sq), diagonal=1).bool()  # noqa: E731
    patches = [
        (torch.cuda, "current_device", lambda: "cpu"),
        (torch.cuda, "manual_seed", lambda seed: None),  # the tracker keeps CPU states: leave the CPU seed
        (torch.cuda, "get_rng_state", lambda device="cuda": torch.get_rng_state()),
        (torch.cuda, "Stream", _NoStream), (torch.cuda, "Event", _NoStream),
        (torch.cuda, "stream", lambda s: contextlib.nullcontext()),
        (mrandom, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state()),
        (mrandom, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state)),
        (mutils, "get_default_causal_mask", causal), (fused_softmax, "get_default_causal_mask", causal),
        (moe_utils, "te_general_gemm", None),
    ]
    saved = [(obj, name, getattr(obj, name, None)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)

    def undo():
        for obj, name, value in saved:
            setattr(obj, name, value)

    return undo
