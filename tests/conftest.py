"""Session-wide: the pytest header names the CPU and the kernel path the numbers come from (make test runs
the suite twice: on the default kernels and under ATEN_CPU_CAPABILITY=avx2)."""

import platform


def pytest_report_header(config):
    import torch

    cpu = platform.processor() or platform.machine()
    return [f"cpu kernels: {torch.backends.cpu.get_cpu_capability()} ({cpu}), torch {torch.__version__}"]
