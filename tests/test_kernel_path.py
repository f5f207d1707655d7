"""The second pass of `make test` is only a second kernel path if torch honours ATEN_CPU_CAPABILITY."""

import os

import pytest
import torch


@pytest.mark.skipif(not os.environ.get("ATEN_CPU_CAPABILITY"), reason="the default kernels: nothing asked")
def test_the_requested_kernel_path_is_the_one_torch_runs():
    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()
