"""The runs `ddpm serve` serves: each one's pipeline, its data set (loaded when first asked for), its
uploads, and what the page is told of it. The run directories are only read."""

from __future__ import annotations

import itertools
import math
import typing
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from ..config.settings import hints
from ..data.datasets import load_data
from ..pipeline import Pipeline
from ..registry import SAMPLERS
from .encoding import array, picture
from .limits import KEPT, Refused, whole


@dataclass
class Model:
    """A run being served: its pipeline, its data set (loaded when first asked for) and its uploads."""

    name: str
    path: Path
    pipe: Pipeline
    _data: Optional[torch.Tensor] = None
    uploads: OrderedDict = field(default_factory=OrderedDict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            self._data = load_data(self.pipe.config.data).images  # uint8 [N, C, H, W], at the run's size and channels
        return self._data

    def info(self) -> dict:
        config, pipe = self.pipe.config, self.pipe
        s = config.sample
        alpha_bar = pipe.diffusion.schedule.alpha_bar
        stride = max(1, len(alpha_bar) // 200)
        return {
            "name": self.name, "data": config.data.name, "steps_trained": pipe.step, "kind": config.kind,
            "objective": config.diffusion.objective, "schedule": config.diffusion.schedule,
            "parameters": sum(p.numel() for p in pipe.network.parameters()), "image": list(pipe.image_shape),
            "classes": config.model.num_classes, "T": pipe.diffusion.timesteps,
            "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
            "samplers": [sampler_info(spec, s) for spec in SAMPLERS],
            "alpha_bar": [[t, float(alpha_bar[t])] for t in range(0, len(alpha_bar), stride)],
        }

    def image(self, ref: object) -> torch.Tensor:
        """`data:K` (the K-th data set image) or `upload:ID`, as uint8 [C, H, W]."""
        kind, _, key = str(ref).partition(":")
        if kind == "data":
            index = whole(key, "the image index")
            if not 0 <= index < len(self.data):
                raise Refused(f"the data set has {len(self.data)} images; the index must be in 0..{len(self.data) - 1} "
                              f"(got {index})")
            return self.data[index]
        if kind == "upload" and key in self.uploads:
            return self.uploads[key]
        raise Refused(f"unknown image {ref!r}; give data:K for the K-th data set image or upload:ID for an upload")

    def upload(self, body: bytes) -> str:
        """An uploaded image, cropped to a square at its center and resized to the run's images: its id."""
        opened = picture(body, "the upload")
        c, h, w = self.pipe.image_shape
        opened = opened.convert("L" if c == 1 else "RGB")
        side = min(opened.size)
        left, top = (opened.width - side) // 2, (opened.height - side) // 2
        opened = opened.crop((left, top, left + side, top + side)).resize((w, h), Image.BICUBIC)
        image = torch.from_numpy(array(opened)).permute(2, 0, 1).contiguous()
        key = f"u{next(self._ids)}"
        self.uploads[key] = image
        while len(self.uploads) > KEPT:
            self.uploads.popitem(last=False)
        return key


def sampler_info(spec, s) -> dict:
    """A sampler as the page shows it: its options with their defaults, the run's values for its own."""
    own = s.options_for(spec.name).values()
    options = []
    for name, f in spec.options.fields().items():
        hint = hints(spec.options)[name]
        choices = list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else []
        value = own[name]
        options.append({"name": name, "help": f.metadata.get("help", name), "value": None if value == math.inf else value,
                        "choices": [c for c in choices if isinstance(c, str)], "text": hint is str and not choices})
    return {"name": spec.name, "description": spec.description, "options": options,
            "nfe": [spec.evaluations(k) for k in (1, 2)]}


def load_models(runs: list[str], device: str = "auto", checkpoints: Optional[list] = None) -> list[Model]:
    """Each run directory as a served Model, its pipeline on `device` with the weights of the
    matching folder of `checkpoints` (None: the run's newest)."""
    checkpoints = checkpoints or [None] * len(runs)
    return [Model(Path(path).name or str(path), Path(path), Pipeline.from_run(path, checkpoint, device=device))
            for path, checkpoint in zip(runs, checkpoints)]
