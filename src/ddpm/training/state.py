"""What a training run carries besides the weights: its random generators, its clock, its log (the
signals that pause it are ddpm/runtime/signals.py's). The loop (loop.py) calls these; none of them knows
about diffusion.
"""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_min")


# ---- random generators -----------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    """Every random generator's state, as tensors and plain data (loadable with weights_only)."""
    numpy_state = np.random.get_state()
    state = {
        "loss": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["loss"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---- the time budget ------------------------------------------------------------------------


class Clock:
    """Training time in seconds over the run's whole life: a checkpoint carries it across resumes,
    so train.max_minutes, like max_steps, is a budget for the run, not for one invocation.

    Under torchrun every rank reads the slowest rank's time, so all of them stop at the same step
    and use the same learning rate.
    """

    def __init__(self, max_minutes: Optional[float]):
        self.limit = 60 * max_minutes if max_minutes else math.inf
        self.seconds = 0.0
        self.signalled = False
        self._origin = time.monotonic()

    def start(self, seconds_before: float) -> None:
        self.seconds = seconds_before
        self._origin = time.monotonic() - seconds_before

    def tick(self, ranks, device: torch.device, stop_requested: bool) -> bool:
        """Read the time; True when the budget is spent, or any rank was asked to stop."""
        stop, self.seconds = ranks.max([float(stop_requested), time.monotonic() - self._origin], device)
        self.signalled = stop > 0  # this rank, or another: all stop at this step
        return stop > 0 or self.seconds >= self.limit

    def fraction(self) -> float:
        """How much of the time budget is spent: 0 without one, 1 at its end."""
        return min(1.0, self.seconds / self.limit)


class Log:
    """The CSV log: mean loss and gradient norm over each `log_every` steps; the same scalars and
    the sample grids also go to TensorBoard when given a folder for its event files.

    When resuming it keeps the rows up to the resumed step and drops any written after the
    checkpoint (TensorBoard's purge_step does the same), so the log reads as one uninterrupted run.
    """

    def __init__(self, path: Path, start_step: int, tensorboard: Optional[Path] = None):
        self.path = path
        self.board = None
        if tensorboard is not None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported here: it takes a second
            )

            self.board = SummaryWriter(str(tensorboard), purge_step=start_step + 1 if start_step else None)
        self.loss_sum, self.grad_sum, self.count = 0.0, 0.0, 0
        self.last_step = start_step
        rows = []
        if start_step and path.is_file():
            with open(path, newline="") as handle:  # a row torn by a crash or a full disk is dropped
                rows = [r for r in csv.DictReader(handle) if None not in r.values()
                        and (r["step"] or "").isdigit() and int(r["step"]) <= start_step]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss_sum += loss.item()
        self.grad_sum += grad_norm.item()
        self.count += 1

    def write(self, step: int, lr: float, images_per_s: float, elapsed_min: float) -> dict:
        row = {
            "step": step,
            "loss": self.loss_sum / self.count,
            "lr": lr,
            "grad_norm": self.grad_sum / self.count,
            "images_per_s": round(images_per_s, 2),
            "elapsed_min": round(elapsed_min, 3),
        }
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, LOG_FIELDS).writerow(row)
        if self.board is not None:
            for name in LOG_FIELDS[1:5]:
                self.board.add_scalar(f"train/{name}", row[name], step)
        self.loss_sum, self.grad_sum, self.count = 0.0, 0.0, 0
        self.last_step = step
        return row

    def flush(self, step: int, lr: float, images_per_s: float, elapsed_min: float) -> None:
        """Write the partial interval at the end of a run, if any."""
        if self.count:
            self.write(step, lr, images_per_s, elapsed_min)

    def images(self, step: int, images: torch.Tensor) -> None:
        """A sample grid (uint8 [N, C, H, W]) for TensorBoard's image tab."""
        if self.board is not None:
            from torchvision.utils import make_grid

            self.board.add_image("samples", make_grid(images, nrow=max(1, math.isqrt(len(images)))), step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
