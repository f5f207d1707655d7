"""Which loss.* knobs each objective reads: the one table the config validation derives its rule from.

A knob set (to a value other than its default) under an objective that does not read it would change
nothing and say nothing, so the config refuses it, naming the knob, the objective and the objectives that
read it (rl_core.config.checks._knob_checks). rl_core.losses.objectives keeps its registry in step with this
table (an import-time check), and LossConfig's ``objective`` choices are its keys. No torch here: the workflow
validates grids with it while Snakemake builds the DAG. ``seq_ratio`` is read by every objective (the
seq/ratio_log_std stat), so it is in no row.
"""

from __future__ import annotations

_CLIP = ("eps_low", "eps_high")
_CAP = ("is_cap", "is_cap_on")

#: objective -> the loss.* knobs its loss function reads (rl_core.losses.objectives and .corrections).
READS: dict[str, tuple[str, ...]] = {
    "minirl": (*_CAP, *_CLIP),
    "minirl_length_norm": (*_CAP, *_CLIP),
    "minirl_no_is": _CLIP,  # w = 1: no cap
    "minirl_no_clip": _CAP,  # M = 1: no clip range
    "grpo": _CLIP,
    "cispo": (*_CLIP, "cispo_norm"),
    "tis_decoupled": ("is_cap", *_CLIP),  # caps pi_old/mu_old only: is_cap_on has no meaning here
    "icepop": ("icepop_low", "icepop_high", *_CLIP),
    "seq_mis": ("seq_mis_low", "seq_mis_high", *_CLIP),
    "seq_tis": ("is_cap", *_CLIP),  # caps the sequence product: is_cap_on has no meaning here
    "gspo": ("gspo_eps_low", "gspo_eps_high"),
}
#: Every knob some objective reads (and only some: the others ignore it).
KNOBS: tuple[str, ...] = tuple(dict.fromkeys(k for knobs in READS.values() for k in knobs))


def readers(knob: str) -> list[str]:
    """The objectives that read `knob`."""
    return [name for name, knobs in READS.items() if knob in knobs]
