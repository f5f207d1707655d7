"""rl_core.training.adamw.AdamW against torch.optim.AdamW: the same numbers, bitwise, the same state_dict, and
no torch._dynamo import (the reason it exists)."""

import copy
import subprocess
import sys

import pytest
import torch

from rl_core.training.adamw import AdamW


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def _step(model, opt, seed):
    torch.manual_seed(seed)
    opt.zero_grad(set_to_none=True)
    model(torch.randn(5, 7)).square().mean().backward()
    opt.step()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_bitwise_torch_adamw(wd):
    ours_m, torch_m = _model(), _model()
    ours = AdamW(ours_m.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=wd)
    ref = torch.optim.AdamW(torch_m.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=wd)
    for i in range(6):
        if i == 3:  # a schedule changes lr between steps
            ours.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 3e-3
        _step(ours_m, ours, i)
        _step(torch_m, ref, i)
        assert _same(ours_m, torch_m), i
    assert not _same(ours_m, _model())  # it did move the weights
    sd_o, sd_t = ours.state_dict(), ref.state_dict()
    assert sd_o["param_groups"] == sd_t["param_groups"]
    assert sd_o["state"].keys() == sd_t["state"].keys()
    for i in sd_t["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sd_o["state"][i][k], sd_t["state"][i][k]), (i, k)


def test_state_dict_crosses_both_ways():
    """A checkpoint written by torch.optim.AdamW (every checkpoint before this class) resumes here, and the
    other way round, continuing bitwise as an uninterrupted run."""
    base_m = _model()
    base = torch.optim.AdamW(base_m.parameters(), lr=1e-2)
    for i in range(3):
        _step(base_m, base, i)
    sd = copy.deepcopy(base.state_dict())  # torch's state_dict holds the live tensors

    ours_m = _model()
    ours_m.load_state_dict(base_m.state_dict())
    ours = AdamW(ours_m.parameters())
    ours.load_state_dict(sd)
    assert ours.param_groups[0]["lr"] == 1e-2
    back_m = _model()
    back_m.load_state_dict(base_m.state_dict())
    for i in range(3, 5):
        _step(base_m, base, i)
        _step(ours_m, ours, i)
    assert _same(base_m, ours_m)

    back = torch.optim.AdamW(back_m.parameters())
    ours2_m = _model()
    ours2_m.load_state_dict(back_m.state_dict())
    ours2 = AdamW(ours2_m.parameters(), lr=1e-2)
    ours2.load_state_dict(sd)
    back.load_state_dict(ours2.state_dict())
    for i in range(3, 5):
        _step(back_m, back, i)
    assert _same(back_m, base_m)


def test_refuses_what_it_does_not_implement():
    m = _model()
    sd = torch.optim.AdamW(m.parameters(), amsgrad=True).state_dict()
    with pytest.raises(ValueError, match="amsgrad"):
        AdamW(m.parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameters per group"):
        AdamW(list(m.parameters())[:2]).load_state_dict(sd)


@pytest.mark.parametrize("cls, imports", [("rl_core.training.adamw.AdamW", False),
                                          ("torch.optim.AdamW", True)])
def test_no_dynamo_import(cls, imports):
    """torch.optim's step imports torch._dynamo (the control: this check can fail); ours does not."""
    module, name = cls.rsplit(".", 1)
    code = (f"import sys, torch, importlib\n"
            f"opt_cls = getattr(importlib.import_module('{module}'), '{name}')\n"
            "m = torch.nn.Linear(3, 2)\nopt = opt_cls(m.parameters())\n"
            "m(torch.randn(4, 3)).sum().backward()\nopt.step()\nopt.zero_grad()\n"
            "opt.load_state_dict(opt.state_dict())\nprint('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(imports)
