"""The draws `ddpm serve` runs, one class per task: the request fields it takes, declared once with
their ranges (config/settings.py's `setting`), how they are checked into a plan before the stream
starts (so a refusal is a 400, never a broken stream), and how the draw runs through the Pipeline's
own methods, each step a frame for the page:

    sample       Pipeline.draw
    inpaint      Pipeline.inpaint (RePaint)
    img2img      Pipeline.img2img (SDEdit)
    interpolate  Pipeline.interpolate (DDIM inversion and slerp)

A range that depends on the run (steps up to its T, a class below its count, the run's place in
the list) is checked when the run is known, by the same settings.check_range.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from ..config.settings import Section, check_range, setting
from ..data.imagedata import to_uint8
from ..diffusion.process import levels
from ..editor import Editor, repaint_eta
from ..pipeline import Pipeline
from . import encoding
from .limits import MAX_IMAGES, MAX_STEPS, PREVIEW_SHARE, SEEDS, Refused, whole
from .runs import Model

Emit = Callable[[dict], None]
ALIASES = {"class": "classes"}  # a request field named by a Python keyword


@dataclass
class Fields(Section):
    """What every draw takes."""

    run: int = setting(0, "the run, by its place in the page's list", ge=0)
    task: str = setting("sample", "sample, inpaint, img2img or interpolate")


@dataclass
class SampleFields(Fields):
    n: int = setting(1, "images to draw", ge=1, le=MAX_IMAGES)
    seed: int = setting(0, "the seed", ge=0, le=SEEDS)
    steps: Optional[int] = setting(None, "sampling steps, at most the run's T (its own when left out)", ge=1)
    sampler: Optional[str] = setting(None, "the sampler (the run's own when left out)")
    guidance: Optional[float] = setting(None, "classifier-free guidance (a class-conditional run)", ge=0, le=100)
    classes: object = None  # "class": a label below the run's count, or "all"
    options: object = None  # the sampler's own options, e.g. {"eta": 0.5}


@dataclass
class InpaintFields(SampleFields):
    image: Optional[str] = setting(None, "data:K (the K-th data set image) or upload:ID")
    mask: object = None  # a PNG data URL: white is filled, black is kept
    resample: int = setting(1, "RePaint's passes at each jump point", ge=1, le=10)
    jump: int = setting(10, "RePaint's jump, in steps (at most the draw's steps)", ge=1)


@dataclass
class Img2ImgFields(SampleFields):
    image: Optional[str] = setting(None, "data:K (the K-th data set image) or upload:ID")
    strength: float = setting(0.5, "how far the image is noised: 0 keeps it, 1 is plain sampling", ge=0, le=1)


@dataclass
class InterpolateFields(Fields):
    image: Optional[str] = setting(None, "the first image: data:K or upload:ID")
    image_b: Optional[str] = setting(None, "the last image: data:K or upload:ID")
    frames: int = setting(8, "images from the first to the last", ge=2, le=MAX_IMAGES)
    steps: Optional[int] = setting(None, "DDIM steps of the inversion, at most the run's T", ge=1)


class Task:
    """A checked draw: the pipeline it runs on, its plan, and how many steps the page will see."""

    name: ClassVar[str]
    fields: ClassVar[type[Fields]]
    total: int = 0

    def __init__(self, model: Model, fields: Fields):
        self.model, self.pipe, self.f = model, model.pipe, fields

    @property
    def nfe(self) -> int:
        return self.plan.nfe

    @classmethod
    def read(cls, request: dict) -> Fields:
        """The request's fields, each checked by its declaration: type, then range."""
        names = {ALIASES.get(f.name, f.name): f.name for f in dataclasses.fields(cls.fields)}
        unknown = sorted(set(request) - set(names))
        if unknown:
            raise Refused(f"unknown field {unknown[0]!r}; {cls.name} takes {', '.join(sorted(names))}")
        fields = cls.fields()
        for key, value in request.items():
            setattr(fields, names[key], value)
        fields.check_fields("")  # as a config section is checked, each message naming the field alone
        return fields

    def run(self, emit: Emit) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The images (uint8 [n, C, H, W]) and their labels, calling `emit(frame)` after every step."""
        raise NotImplementedError

    def _steps(self) -> Optional[int]:
        steps = self.f.steps
        if steps is not None:
            check_range(steps, "steps", ge=1, le=min(MAX_STEPS, self.pipe.diffusion.timesteps))
        return steps


class Sample(Task):
    name, fields = "sample", SampleFields

    def __init__(self, model: Model, fields: SampleFields):
        super().__init__(model, fields)
        options = fields.options or {}
        if not isinstance(options, dict):
            raise Refused("options must be an object of the sampler's options, e.g. {\"eta\": 0.5}")
        classes = fields.classes
        if classes is not None and classes != "all":
            classes = whole(classes, "the class", 0, max(0, self.pipe.config.model.num_classes - 1))
        # refuses what the command line refuses: an unknown sampler or option, guidance without classes
        self.plan = self.pipe.plan(fields.n, fields.sampler, self._steps(), None, classes, fields.guidance, **options)
        self.total = self.plan.steps

    def run(self, emit: Emit):
        images = self.pipe.draw(self.plan, self.f.seed, progress=False, callback=Frames(self.pipe, emit).step)
        return images, self.plan.labels

    def _common(self) -> dict:
        """What an edit of the pipeline takes from the plan: n, sampler, steps, seed and guidance."""
        plan = self.plan
        return {"n": self.f.n, "sampler": plan.sampler, "steps": plan.steps, "seed": self.f.seed,
                "guidance": plan.guidance if self.pipe.config.model.num_classes else None}


class Inpaint(Sample):
    name, fields = "inpaint", InpaintFields

    def __init__(self, model: Model, fields: InpaintFields):
        super().__init__(model, fields)
        repaint_eta(self.plan)  # a sampler that takes no DDIM steps is refused here, before the stream
        self.mask = encoding.mask(fields.mask, self.pipe)
        self.image = model.image(fields.image)
        check_range(fields.jump, "jump", ge=1, le=self.plan.steps)
        self.total = self.plan.steps + (fields.resample - 1) * fields.jump * (self.plan.steps // fields.jump)

    def run(self, emit: Emit):
        images = Editor(self.pipe).inpaint(self.image, self.mask, resample=self.f.resample, jump=self.f.jump,
                                   callback=Frames(self.pipe, emit).repaint, **self._common())
        return images, None


class Img2Img(Sample):
    name, fields = "img2img", Img2ImgFields

    def __init__(self, model: Model, fields: Img2ImgFields):
        super().__init__(model, fields)
        self.image = model.image(fields.image)
        self.total = round(fields.strength * self.plan.steps)

    def run(self, emit: Emit):
        images = Editor(self.pipe).img2img(self.image, self.f.strength, callback=Frames(self.pipe, emit).step, **self._common())
        return images, None


class Interpolate(Task):
    name, fields = "interpolate", InterpolateFields

    def __init__(self, model: Model, fields: InterpolateFields):
        super().__init__(model, fields)
        self.a, self.b = model.image(fields.image), model.image(fields.image_b)
        self.plan = self.pipe.plan(None, "ddim", self._steps(), eta=0.0)

    @property
    def nfe(self) -> int:
        return 0  # the inversion's steps are not streamed

    def run(self, emit: Emit):
        return Editor(self.pipe).interpolate(self.a, self.b, self.f.frames, self.f.steps), None


TASKS = {task.name: task for task in (Sample, Inpaint, Img2Img, Interpolate)}


def parse(models: list[Model], request: dict) -> Task:
    """A draw request (JSON), every field checked, as its task."""
    name = request.get("task", "sample")
    if name not in TASKS:
        raise Refused(f"unknown task {name!r}; choose {', '.join(TASKS)}")
    task = TASKS[name]
    fields = task.read(request)
    check_range(fields.run, "run", ge=0, le=len(models) - 1)
    return task(models[fields.run], fields)


class Frames:
    """Each step of a draw as a frame for the page: t, sigma_t and log SNR, x_t and the predicted x0.
    A latent run's x_t are latents (their first three channels are shown); its x0 is decoded while
    previews cost at most PREVIEW_SHARE of the draw's time so far."""

    def __init__(self, pipe: Pipeline, emit: Emit):
        self.pipe, self.emit = pipe, emit
        self.count, self.started, self.decoding = 0, time.perf_counter(), 0.0

    def step(self, i: int, t, x_t: torch.Tensor, prediction) -> None:
        self._frame(t, x_t, prediction.x0)

    def repaint(self, level: int, x: torch.Tensor, target: torch.Tensor) -> None:
        self._frame(level, x, None)

    def _frame(self, t, x_t: torch.Tensor, x0: Optional[torch.Tensor]) -> None:
        pipe = self.pipe
        alpha, s, _ = levels(pipe.diffusion.schedule, torch.tensor([float(t)]), x_t[:1])
        alpha, s = float(alpha.flatten()[0]), float(s.flatten()[0])
        frame = {"step": self.count, "t": round(float(t), 3), "sigma": s / max(alpha, 1e-12),
                 "log_snr": 2 * math.log(max(alpha, 1e-12) / max(s, 1e-12))}
        if pipe.codec is None:
            frame["x_t"] = encoding.data_url(to_uint8(x_t.clamp(-1, 1).float().cpu()))
            if x0 is not None:
                frame["x0"] = encoding.data_url(to_uint8(x0.clamp(-1, 1).float().cpu()))
        else:
            latents = x_t[:, :3].float().cpu()
            frame["x_t"] = encoding.data_url(to_uint8((latents / latents.abs().amax().clamp(min=1e-6)).clamp(-1, 1)))
            elapsed = time.perf_counter() - self.started
            if x0 is not None and self.decoding <= PREVIEW_SHARE * elapsed:
                begun = time.perf_counter()
                frame["x0"] = encoding.data_url(to_uint8(pipe.to_images(x0)))
                self.decoding += time.perf_counter() - begun
            frame["preview_share"] = round(self.decoding / max(elapsed, 1e-9), 3)
        self.count += 1
        self.emit(frame)
