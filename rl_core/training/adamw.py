"""AdamW exactly as ``torch.optim.AdamW`` computes it on a CPU, in its ``state_dict`` format, without
torch.optim's wrappers.

Why: ``torch.optim.Optimizer``'s ``step``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` are
wrapped for torch.compile, and their first call imports ``torch._dynamo``: 1.0-1.7 s of every arm's
process, which never compiles anything. The grid starts a process per arm, so that import is paid ~100
times per ``make reproduce``.

The arithmetic is torch's single-tensor AdamW (the path it takes for CPU tensors, and for DTensors under
FSDP2), op for op, so the numbers are bitwise torch's: ``tests/test_adamw.py`` steps both side by side and
loads each one's ``state_dict`` into the other. Only what the trainer uses is here: one parameter group of
lr / betas / eps / decoupled weight decay; a state_dict asking for amsgrad, maximize, capturable,
differentiable or fused is refused by name rather than stepped differently.
"""

from __future__ import annotations

import torch

# torch.optim.AdamW's param_group fields, with the values this class implements
_FIXED = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
          "fused": None, "decoupled_weight_decay": True}


class AdamW:
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        self.param_groups = [{"params": list(params), "lr": lr, "betas": tuple(betas), "eps": eps,
                              "weight_decay": weight_decay, **_FIXED}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.state.get(p)
                if not s:
                    s = self.state[p] = {"step": torch.tensor(0.0)}
                    for k in ("exp_avg", "exp_avg_sq"):
                        s[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["step"] += 1
                if wd != 0:
                    p.mul_(1 - lr * wd)
                s["exp_avg"].lerp_(p.grad, 1 - beta1)
                s["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step = s["step"].item()
                denom = (s["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                p.addcdiv_(s["exp_avg"], denom, value=-(lr / (1 - beta1**step)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """torch.optim's format: state keyed by the parameter's index, only parameters stepped so far."""
        index = {p: i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return {"state": {index[p]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """A state_dict of this class or of torch.optim.AdamW over the same parameters, copied (tensors
        cast to their parameter's dtype and device, ``step`` as saved)."""
        saved = state_dict["param_groups"]
        theirs, mine = ([len(g["params"]) for g in groups] for groups in (saved, self.param_groups))
        if theirs != mine:
            raise ValueError(f"optimizer state for {theirs} parameters per group, this optimizer has {mine}")
        for g in saved:
            unsupported = {k: g[k] for k, v in _FIXED.items() if k in g and bool(g[k]) != bool(v)}
            if unsupported:
                raise ValueError(f"optimizer state with {unsupported}: rl_core.training.adamw.AdamW "
                                 f"implements { {k: _FIXED[k] for k in unsupported} } only")
        params, self.state = self._params(), {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: v.clone() if k == "step" else v.to(p.device, p.dtype, copy=True)
                             for k, v in s.items()}
        for mine, g in zip(self.param_groups, saved, strict=True):
            mine.update({k: (tuple(v) if k == "betas" else v) for k, v in g.items() if k != "params"})

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]
