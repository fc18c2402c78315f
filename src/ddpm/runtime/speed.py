"""How fast this machine multiplies matrices: the figure the docs record beside every timed number,
and what scales a CPU run's time budget to the machine its model sizes were measured on
(recipe.sized_by_budget). Torch is imported when a rate is measured, not before."""

from __future__ import annotations

import functools
import os
import time

from ..errors import InputError

CPU_GFLOPS_VARIABLE = "DDPM_CPU_GFLOPS"


def matmul_rate(device, dtype, size: int, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matrix multiply on `device` in `dtype` (a torch.device and dtype),
    over one window of `seconds`: the practical limit of this device and dtype."""
    return matmul_rates(device, dtype, size, seconds, rounds=1)[0]


def matmul_rates(device, dtype, size: int, seconds: float, rounds: int) -> list[float]:
    """The FLOP/s of `rounds` back-to-back windows of `seconds / rounds` each, after a warm-up."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    rates = []
    for _ in range(rounds):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / rounds:
            a @ b
            count += 1
            if device.type == "cuda" and count % 10:
                continue
            synchronize(device)
        synchronize(device)
        rates.append(2 * size**3 * count / (time.perf_counter() - started))
    return rates


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a CUDA stream runs ahead of Python; a CPU does not)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def cpu_gflops() -> float:
    """This CPU's fp32 matrix-multiply rate in GFLOP/s (2048 x 2048 for about a second, measured once
    a process); or the rate that the environment variable DDPM_CPU_GFLOPS gives, so that a cluster's
    nodes, or a test, agree on one. Two readings on an idle machine of this project's kind differ by
    up to 5 %, and no longer or median reading did better (benchmarks/probe_spread.py), so the
    budget rule keeps its bounds away from the budgets people run (config/recipe.py)."""
    given = os.environ.get(CPU_GFLOPS_VARIABLE)
    if given is None:
        return _measured_cpu_gflops()
    try:
        rate = float(given)
    except ValueError:
        rate = 0.0
    if not 0 < rate < float("inf"):
        raise InputError(f"{CPU_GFLOPS_VARIABLE}={given!r} is not a matrix-multiply rate; give a positive number "
                         f"of GFLOP/s, e.g. {CPU_GFLOPS_VARIABLE}=171, or unset it to measure this CPU")
    return rate


@functools.cache
def _measured_cpu_gflops() -> float:
    import torch

    return matmul_rate(torch.device("cpu"), torch.float32, size=2048, seconds=1.0) / 1e9
