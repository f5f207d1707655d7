"""What the policy writes, per arm: its rollout samples (RUN_DIR/samples.jsonl, rl_core.samples) before and
after its collapse step, the tokens whose train-inference ratio was extreme highlighted.

Per arm, its first run (lowest seed): with a collapse step (analysis.stability's rule), the training
samples of the global step it falls in and of the one before; without one, of the first
and the last global step. Each response is drawn token by token: a token with |log pi_old/mu_old| >=
:data:`EXTREME` (a ratio beyond 2x either way) is marked (its colour says the sign), a token the clip mask
dropped is struck through, a token a correction zeroed is greyed; hovering shows its log-ratio and weight.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

#: |log pi_old/mu_old| from which a token is marked: log 2, a ratio outside [0.5, 2].
EXTREME = math.log(2.0)
CSS = (".tok-hi{background:#f6c28b}.tok-lo{background:#9fc5f8}.tok-clip{text-decoration:line-through}"
       ".tok-mask{color:#999}.sample{font-family:monospace;white-space:pre-wrap;margin:.2em 0}")


def read_samples(run_dir: str | Path) -> list[dict]:
    rows = []
    path = Path(run_dir) / "samples.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in rows if isinstance(r, dict)]


def before_after(rows: list[dict], collapse_step: float | None) -> list[tuple[str, list[dict]]]:
    """[(title, samples)]: the training samples of the global step of the collapse step and of the one
    before it; without a collapse, of the first and the last global step."""
    train = [r for r in rows if r.get("kind") == "train"]
    steps = sorted({r["step"] for r in train})
    if not steps:
        return []
    of = lambda s: [r for r in train if r["step"] == s]  # noqa: E731
    if collapse_step is not None and math.isfinite(collapse_step):
        # samples are kept once per global step (its first rows: its first update's step), so the collapse
        # step's own global step is the last kept step at or before it
        upto = [s for s in steps if s <= collapse_step] or steps[:1]
        at, before = upto[-1], upto[-2] if len(upto) > 1 else None
        out = [(f"before the collapse (step {before})", of(before))] if before is not None else []
        return out + [(f"at the collapse (step {at}, the global step of collapse step {collapse_step:g})",
                       of(at))]
    return [(f"first step ({steps[0]})", of(steps[0]))] + \
        ([(f"last step ({steps[-1]})", of(steps[-1]))] if steps[-1] != steps[0] else [])


def token_html(row: dict) -> str:
    """The response, token by token, marked (module docstring)."""
    toks, logr = row.get("tokens") or [], row.get("log_ratio") or []
    weight, clip, mask = (row.get(k) or [0] * len(toks) for k in ("is_weight", "clipped", "masked"))
    out = []
    for i, tok in enumerate(toks):
        lr = logr[i] if i < len(logr) else 0.0
        cls = []
        if lr is not None and abs(lr) >= EXTREME:
            cls.append("tok-hi" if lr > 0 else "tok-lo")
        if i < len(clip) and clip[i]:
            cls.append("tok-clip")
        if i < len(mask) and mask[i]:
            cls.append("tok-mask")
        w = weight[i] if i < len(weight) else None
        title = f"log pi_old/mu_old {lr:.3g}" + (f", IS weight {w:.3g}" if isinstance(w, int | float) else "")
        out.append(f'<span class="{" ".join(cls)}" title="{html.escape(title)}">{html.escape(tok)}</span>')
    return "".join(out)


def arm_samples_html(per_run: pd.DataFrame, limit: int = 4) -> str:
    """One collapsible block per arm of `per_run` (one figure's runs), '' when no run kept samples."""
    parts = []
    for arm, runs in per_run.sort_values("seed").groupby("arm", sort=False):
        run = runs.iloc[0]
        collapse = run.get("collapse_step")
        groups = before_after(read_samples(run["run_dir"]), None if pd.isna(collapse) else float(collapse))
        if not groups:
            continue
        body = []
        for title, rows in groups:
            body.append(f"<p><b>{html.escape(title)}</b></p>")
            for r in rows[:limit]:
                body.append(f'<div class=sample>{html.escape(r.get("prompt", ""))}'
                            f'{token_html(r)}  <span class=muted>reward {r.get("reward", float("nan")):g}'
                            "</span></div>")
        label = f"{arm} (seed {run['seed']})"
        parts.append(f"<details><summary>{html.escape(label)}</summary>{''.join(body)}</details>")
    if not parts:
        return ""
    legend = (f"<p class=muted>Rollouts as sampled: <span class=tok-hi>ratio above 2</span> / "
              f"<span class=tok-lo>below 1/2</span> (|log pi_old/mu_old| &ge; {EXTREME:.2f}), "
              "<span class=tok-clip>clipped</span>, <span class=tok-mask>zeroed by a correction</span>; "
              "hover a token for its log-ratio and IS weight.</p>")
    return f"<h3>What the policy writes</h3>{legend}{''.join(parts)}"
