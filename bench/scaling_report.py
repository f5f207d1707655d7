"""`make bench`'s scaling part: RL step time against width, batch and response length, and the cost model.

bench/scaling.py measures the points (one factor at a time around the first);
:func:`rl_core.orchestration.cost.fit` turns them into the coefficients that `python -m
rl_core.orchestration.grid GRID --estimate` uses, written to bench.json under ``cost_model``. The table here
lists every point beside what the fitted model predicts for it, and the slopes: the log-log exponent of step
time in each factor (1 = linear), and the linear fit's seconds per unit.
"""

from __future__ import annotations

import math

from rl_core import config as C
from rl_core.orchestration import cost

#: One factor at a time around the first point (width d, prompts B, response length L); G = 8, N = 1.
SCALING = {"G": 8, "N": 1, "warmup": 1, "steps": 2,
           "points": [{"d": 128, "B": 8, "L": 48}, {"d": 256, "B": 8, "L": 48}, {"d": 512, "B": 8, "L": 48},
                      {"d": 128, "B": 16, "L": 48}, {"d": 128, "B": 32, "L": 48},
                      {"d": 128, "B": 8, "L": 24}, {"d": 128, "B": 8, "L": 96}],
           "formats": ["fp32", "bf16", "fp8_w8a16", "fp8", "mxfp4"],
           "coldstart": {"batch_size": 32, "steps": 3}}
FACTORS = {"d": "width d", "B": "prompts B", "L": "response length L"}


def _cov(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))


def slopes(points: list[dict]) -> dict[str, dict]:
    """Per factor, over the points that vary only it: log-log exponent, linear slope (s per unit)."""
    base = points[0]
    out = {}
    for key in FACTORS:
        pts = [base] + [p for p in points[1:] if all(p[k] == base[k] for k in FACTORS if k != key)
                        and p[key] != base[key]]
        if len(pts) < 2:
            continue
        xs, ys = [p[key] for p in pts], [p["step_s"] for p in pts]
        lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
        exponent = _cov(lx, ly) / _cov(lx, lx)
        per_unit = _cov(xs, ys) / _cov(xs, xs)
        ax, ay = sum(xs) / len(xs), sum(ys) / len(ys)
        out[key] = {"exponent": exponent, "s_per_unit": per_unit, "intercept_s": ay - per_unit * ax}
    return out


def predicted(c: dict, p: dict) -> float:
    """The cost model's step time for a scaling point (every response exactly L tokens: resp_frac 1)."""
    return cost.step_seconds({**c, "resp_frac": 1.0}, p["d"], p["N"], p["B"], p["G"], p["L"],
                             p["rollout_precision"], p["train_precision"])


def format_scaling(sc: dict, c: dict) -> str:
    """The scaling table (CPU s per global step, N = 1, G = 8, fp32) and the slopes."""
    head = "| d | B | L | responses x L | step s | rollout s | update s | cost model s |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for p in sc["points"] + [sc["stress"]]:
        tag = "" if p is not sc["stress"] else " (fp8 rollout, bf16 train)"
        lines.append(f"| {p['d']}{tag} | {p['B']} | {p['L']} | {p['B'] * p['G']} x {p['L']} | "
                     f"{p['step_s']:.3f} | {p['rollout_s']:.3f} | {p['step_s'] - p['rollout_s']:.3f} | "
                     f"{predicted(c, p):.3f} |")
    for key, s in slopes(sc["points"]).items():
        lines.append(f"step time vs {FACTORS[key]}: ~ {key}^{s['exponent']:.2f} (log-log); linear fit "
                     f"{s['intercept_s']:.3f} s + {s['s_per_unit'] * 1e3:.2f} ms per unit of {key}")
    lines.append(f"cost model: rollout (L x {c['r_step'] * 1e3:.2f} ms + rows x tokens x "
                 f"{c['r_row'] * 1e6:.1f} us) x (d/{c['d0']})^{c['a_roll']:.2f}; "
                 f"update ({c['u_fixed'] * 1e3:.0f} ms + tokens x "
                 f"{c['u_tok'] * 1e6:.1f} us) x (d/{c['d0']})^{c['a_train']:.2f}; rollout format x "
                 + ", ".join(f"{k} {v:.2f}" for k, v in c["f_roll"].items())
                 + f"; bf16 trainer x {c['f_train']['bf16']:.2f}")
    return "\n".join(lines)


def arm_check(c: dict, arm: dict, arm_cfg: dict) -> dict:
    """The cost model's seconds for the bench's short arm (RL steps, evals, fixed part) against the CPU
    seconds its process took (its wall where the CPU time is missing)."""
    pred = cost.arm_seconds(c, C.from_dict(arm_cfg))
    return {"predicted_s": pred["total_s"], "measured_s": arm.get("train_cpu_s", arm["train_wall_s"])}


__all__ = ["SCALING", "slopes", "predicted", "format_scaling", "arm_check"]
