"""What every test process shares: one thread per xdist worker, the CPU speed the recipe's sizes
were measured at, and a fixed torch seed per test. The helpers the tests import are in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of make test's workers, one per core (Makefile):
    torch.set_num_threads(1)  # one thread each, here
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes its tests start
# A color run's time budget sizes its network by this CPU's speed (recipe.sized_by_budget): the tests
# give every process the speed of the machine the sizes were measured on, so that none depends on the
# machine that runs it. The tests of the measure itself unset it.
os.environ["DDPM_CPU_GFLOPS"] = "171"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
