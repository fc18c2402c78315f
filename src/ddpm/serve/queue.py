"""The draws of `ddpm serve`: one runs at a time, up to MAX_QUEUE more wait in order, each with an
id, a cancel flag and its progress (what /api/status reports), and the last KEPT results."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Callable

import torch

from .limits import KEPT, MAX_QUEUE, Refused


class Cancelled(Exception):
    """A draw stopped by its page: the stop button, or the page closed."""


class Draws:
    """One draw at a time; up to MAX_QUEUE more wait in order. Each draw has an id, a cancel flag and
    its progress, which /api/status reports (the last KEPT draws)."""

    def __init__(self):
        self.condition = threading.Condition()
        self.queue: list[str] = []  # ids: the first is running
        self.state: OrderedDict = OrderedDict()
        self.results: OrderedDict = OrderedDict()
        self.ids = itertools.count(1)

    def enter(self) -> str:
        with self.condition:
            if len(self.queue) > MAX_QUEUE:
                raise Refused(f"{len(self.queue)} draws are running or waiting; try again when one ends", 429)
            key = f"d{next(self.ids)}"
            self.queue.append(key)
            self.state[key] = {"state": "queued", "steps_done": 0, "cancel": False}
            while len(self.state) > KEPT:
                self.state.popitem(last=False)
            return key

    def wait(self, key: str, tell: Callable[[int], None]) -> None:
        """Block until `key` is first in line, telling its place each time it changes."""
        told = None
        with self.condition:
            while self.queue[0] != key:
                place = self.queue.index(key)
                if place != told:
                    told = place
                    self.condition.release()
                    try:
                        tell(place)
                    finally:
                        self.condition.acquire()
                if self.state[key]["cancel"]:
                    raise Cancelled()
                self.condition.wait(0.2)
            self.state[key]["state"] = "running"

    def leave(self, key: str, state: str) -> None:
        with self.condition:
            self.queue.remove(key)
            if key in self.state:
                self.state[key]["state"] = state
            self.condition.notify_all()

    def step(self, key: str) -> None:
        """A step is done; stop here if the draw was cancelled."""
        record = self.state[key]
        if record["cancel"]:
            raise Cancelled()
        record["steps_done"] += 1

    def cancel(self, key: str) -> None:
        with self.condition:
            if key not in self.state:
                raise Refused(f"no draw {key!r}", 404)
            self.state[key]["cancel"] = True

    def keep(self, key: str, images: torch.Tensor, labels) -> None:
        self.results[key] = (images, labels)
        while len(self.results) > KEPT:
            self.results.popitem(last=False)

    def status(self) -> dict:
        with self.condition:
            return {"running": self.queue[0] if self.queue else None, "waiting": max(0, len(self.queue) - 1),
                    "draws": {key: {k: v for k, v in record.items() if k != "cancel"}
                              for key, record in self.state.items()}}
