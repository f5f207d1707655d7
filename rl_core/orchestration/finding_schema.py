"""The schema of a grid's ``findings:`` items and its validation (see analysis.findings for the verdicts).

Kept apart from analysis.findings so that rl_core.orchestration.grid can validate a grid's findings while
Snakemake builds the DAG without importing pandas or numpy: a finding naming an arm, figure, kind or metric
that does not exist fails before any job starts.
"""

from __future__ import annotations

from dataclasses import dataclass


class FindingError(ValueError):
    """A malformed finding; the message names the finding and the key."""


@dataclass(frozen=True)
class Metric:
    """A per-run stability column that findings can compare."""

    column: str
    higher_is_better: bool
    tolerance: float  # default of `similar` / `different`
    relative: bool  # whether that tolerance is relative to the mean IQM
    fmt: str


METRICS = {
    "peak_score": Metric("peak_score", True, 0.05, False, ".3f"),
    "final_score": Metric("final_score", True, 0.05, False, ".3f"),
    "collapse_step": Metric("survival_step", True, 0.2, True, ".0f"),
    # the train-inference KL: k3 (never negative), what every table and figure shows; k1 by its name
    "max_kl": Metric("max_kl_k3", False, 0.5, True, ".2e"),
    "mean_kl": Metric("mean_kl_k3", False, 0.5, True, ".2e"),
    "max_kl_k1": Metric("max_kl_k1", False, 0.5, True, ".2e"),
    "mean_kl_k1": Metric("mean_kl_k1", False, 0.5, True, ".2e"),
    "final_reward": Metric("final_reward", True, 0.05, False, ".3f"),
    "final_length": Metric("final_length", True, 0.15, True, ".1f"),
    "entropy_max_rel": Metric("entropy_max_rel", False, 0.25, True, ".2f"),
    "entropy_min_rel": Metric("entropy_min_rel", True, 0.25, True, ".2f"),
}


def shown(metric: str) -> str:
    """A metric as findings name it: a KL with its estimator, e.g. ``mean_kl (k3)``."""
    column = METRICS[metric].column
    if "_kl_" in column and not metric.endswith(column[-3:]):
        return f"{metric} ({column.rsplit('_', 1)[1]})"
    return metric


KINDS = {  # kind -> (required keys, optional keys)
    "better": ({"metric", "better", "worse"}, {"tolerance", "relative"}),
    "similar": ({"metric", "arms"}, {"tolerance", "relative"}),
    "different": ({"metric", "arms"}, {"tolerance", "relative"}),
    "collapses": ({"arm"}, {"by_frac"}),
    "stable": ({"arm"}, {"by_frac"}),
    "more_stable": ({"more", "less"}, set()),  # a stress figure's base arms, compared by critical stress
}
COMMON = {"id", "claim", "figure", "kind"}


def _check_values(item: dict, where: str) -> None:
    """Types and ranges of an item's values (the keys are checked by validate_findings)."""
    for key in ("id", "claim", "figure"):
        if not isinstance(item[key], str) or not item[key]:
            raise FindingError(f"{where}: '{key}' must be a non-empty string, got {item[key]!r}")
    refs = [item[k] for k in ("better", "arm", "more", "less") if k in item]
    if "worse" in item:
        refs += item["worse"] if isinstance(item["worse"], list) else [item["worse"]]
    if "arms" in item:
        if not isinstance(item["arms"], list):
            raise FindingError(f"{where}: 'arms' must be a list of arms, got {item['arms']!r}")
        refs += item["arms"]
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise FindingError(f"{where}: an arm must be 'arm' or 'figure/arm', got {ref!r}")
    if "tolerance" in item and (not _is_number(item["tolerance"]) or item["tolerance"] < 0):
        raise FindingError(f"{where}: 'tolerance' must be a number >= 0, got {item['tolerance']!r}")
    if "by_frac" in item and (not _is_number(item["by_frac"]) or not 0 < item["by_frac"] <= 1):
        raise FindingError(f"{where}: 'by_frac' must be a number in (0, 1], got {item['by_frac']!r}")
    if "relative" in item and not isinstance(item["relative"], bool):
        raise FindingError(f"{where}: 'relative' must be true or false, got {item['relative']!r}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_findings(findings: list, figures: dict | None = None) -> list[dict]:
    """Check every item against the schema (and, given the grid's `figures`, that its figure and arms
    exist). `figures` maps figure key -> {"arms": {arm key: ...}} with the arms as expanded (axes and
    stress crossed) and, for a figure with a stress axis, "stress_arms": its base arms (axes crossed)."""
    if not isinstance(findings, list):
        raise FindingError(f"findings: expected a list, got {type(findings).__name__}")
    seen = set()
    for i, item in enumerate(findings):
        where = f"findings[{i}] ({item.get('id', '?') if isinstance(item, dict) else item!r})"
        if not isinstance(item, dict):
            raise FindingError(f"{where}: expected a mapping")
        kind = item.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise FindingError(f"{where}: kind {kind!r} is not one of {sorted(KINDS)}")
        required, optional = KINDS[kind]
        missing = sorted((COMMON | required) - set(item))
        unknown = sorted(set(item) - COMMON - required - optional, key=str)
        if missing or unknown:
            raise FindingError(f"{where}: missing keys {missing}" if missing else
                               f"{where}: unknown key '{unknown[0]}' for kind {kind!r}")
        _check_values(item, where)
        if item["id"] in seen:
            raise FindingError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        if "metric" in required and item["metric"] not in METRICS:
            raise FindingError(f"{where}: metric {item['metric']!r} is not one of {sorted(METRICS)}")
        if kind in ("similar", "different") and len(item["arms"]) < 2:
            raise FindingError(f"{where}: 'arms' needs at least two arms")
        if figures is not None:
            if item["figure"] not in figures:
                raise FindingError(f"{where}: figure '{item['figure']}' is not one of the grid's figures "
                                   f"{sorted(figures)}")
            _check_arms(item, figures, where)
    return findings


def _check_arms(item: dict, figures: dict, where: str) -> None:
    """Every arm the item names exists: a `more_stable` item names base arms of stress figures (the
    figure's ``stress_arms``: its arms crossed with its axes, not with the stress levels, which the margin
    reads across); every other kind names arms as run (``arms``: crossed with axes and stress)."""
    key = "stress_arms" if item["kind"] == "more_stable" else "arms"
    for figure, arm in finding_arms(item):
        known = (figures.get(figure) or {}).get(key)
        if key == "stress_arms" and known is None:
            raise FindingError(f"{where}: kind 'more_stable' needs a figure with a stress axis; "
                               f"'{figure}' has none")
        if arm not in (known or {}):
            extra = " (a more_stable item names base arms, without the stress level)" \
                if key == "stress_arms" else ""
            raise FindingError(f"{where}: arm '{figure}/{arm}' is not in the grid's figures{extra}")


def resolve(ref: str, figure: str) -> tuple[str, str]:
    """``arm`` or ``figure/arm`` -> (figure, arm)."""
    return tuple(ref.split("/", 1)) if "/" in ref else (figure, ref)


def finding_arms(item: dict) -> list[tuple[str, str]]:
    """The (figure, arm) pairs an item names, in order."""
    refs = [item["more"], item["less"]] if "more" in item else []
    if "better" in item:
        worse = item["worse"]
        refs = [item["better"], *(worse if isinstance(worse, list) else [worse])]
    refs += list(item.get("arms", [])) + ([item["arm"]] if "arm" in item else [])
    return [resolve(str(r), item["figure"]) for r in refs]
