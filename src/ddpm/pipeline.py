"""From a trained model to images: the one object every caller samples through.

    pipe = Pipeline.from_run("runs/mnist")                      # EMA weights, schedule and config
    images = pipe(16)                                           # uint8 [16, C, H, W], the run's own sampler
    images = pipe(16, sampler="dpm++2m", steps=20, seed=0, output="pil")

    plan = pipe.plan(1000, sampler="ddim", steps=20, eta=0.5)  # every choice resolved and checked once
    images = pipe.draw(plan, seed=0)                            # ... and reused (eval records plan.record())

Every option left out is taken from the run's `config.sample`, here and nowhere else
(`Pipeline.plan`). The command line (sample, eval, sweep, show), the training grids, the pictures
and the benchmarks all draw through a plan.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import Config
from .data.imagedata import to_pil, to_uint8
from .diffusion.process import Denoiser, Diffusion
from .diffusion.samplers import Callback, sampler_options
from .diffusion.schedules import spaced_timesteps
from .errors import DdpmWarning, InputError
from .factory import build_diffusion, load_run, run_codec
from .models.codec import Codec
from .config.options import Options
from .registry import SAMPLERS, STUDENTS, SamplerSpec, StudentSpec, resolve
from .runtime.devices import resolve_device
from .runtime.distributed import Distributed, init_distributed
from .storage.checkpoint import load_into, load_weights, verify

OUTPUTS = ("uint8", "float", "pil")
Classes = Union[None, int, str, Sequence[int]]


@dataclass(frozen=True)
class Plan:
    """How images are drawn, every choice resolved (none left to a default) and checked: the sampler,
    its own options, the steps and their spacing, the timesteps they give, the guidance weight,
    and, for n images of a class-conditional run, their labels."""

    sampler: str
    steps: int
    spacing: str
    options: Options  # the sampler's own: DDIM's eta, DDPM's variance, ...
    guidance: float  # class-conditional runs
    clip_denoised: bool
    timesteps: tuple[int, ...]
    labels: Optional[Tensor] = dataclasses.field(default=None, compare=False)
    n: Optional[int] = None

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS.get(self.sampler)

    @property
    def nfe(self) -> int:
        return self.spec.evaluations(self.steps)

    def function(self) -> Callable[..., Tensor]:
        """The sampler with its options bound."""
        return self.spec.bind(self.options)

    def record(self) -> dict:
        """The settings that change the images, by name, as a run's eval.csv records them."""
        return {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing, "nfe": self.nfe,
                **self.options.values()}


class Pipeline:
    """A network, its diffusion process and its config, ready to draw images.

    `Pipeline.from_run` loads a run directory; `Pipeline(network, diffusion, config)` wraps
    objects already in memory (the training loop's EMA model, a test's analytic denoiser). Under
    torchrun, `from_run` joins the process group and each call shares the batches out across the
    ranks; every rank gets all the images back.
    """

    def __init__(self, network: nn.Module, diffusion: Diffusion, config: Config, *, step: Optional[int] = None,
                 ranks: Optional[Distributed] = None, device: Optional[torch.device] = None,
                 codec: Optional[Codec] = None):
        self.network, self.diffusion, self.config, self.step = network, diffusion, config, step
        self.codec = codec  # a latent run's autoencoder: the pipeline samples latents and decodes them
        self._warned = None
        self.ranks = ranks or Distributed()
        parameter = next(iter(network.parameters()), None) if isinstance(network, nn.Module) else None
        self.device = device or (parameter.device if parameter is not None else torch.device("cpu"))

    @classmethod
    def from_run(cls, path: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None, ema: bool = True,
                 device: str = "auto") -> "Pipeline":
        """A run directory's newest checkpoint (or `checkpoint`), its EMA weights unless `ema=False`."""
        loaded = load_run(path, checkpoint, "ema" if ema else "model")
        ranks, device_name = init_distributed(device)  # under torchrun the ranks share the sampling
        device = resolve_device(device_name)
        config = loaded.config
        if "student_steps" in loaded.meta:  # a distillation phase's student samples in its own steps
            config = config.override({"sample.steps": loaded.meta["student_steps"]})
        codec = run_codec(config, path, device)
        # the run's memory format: channels_last convolutions sample 1.5-1.8x faster on 2 CPU cores (docs/cpu-default.md)
        memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
        network = loaded.network.to(device, memory_format=memory_format).eval()
        return cls(network, build_diffusion(config).to(device), config, step=loaded.meta["step"], ranks=ranks,
                   device=device, codec=codec)

    @classmethod
    def from_diffusers(cls, folder: Union[str, Path], data: str = "cifar10", device: str = "auto") -> "Pipeline":
        """A diffusers DDPM folder (UNet2DModel and DDPMScheduler, as google/ddpm-cifar10-32 is saved),
        converted to ddpm's UNet and process (storage/diffusers_folders.py); `data` names the data set it
        models, for evaluation. `ddpm import` writes the same as a run directory."""
        from .models.unet import unet_from_config
        from .storage.diffusers_folders import import_config

        config, weights = import_config(Path(folder), data)
        network = unet_from_config(config)
        load_into(network, weights, Path(folder), Path(folder) / "unet" / "config.json")
        device = resolve_device(device)
        network = network.to(device, memory_format=torch.channels_last).eval()
        return cls(network, build_diffusion(config).to(device), config, step=0, device=device)

    def load_checkpoint(self, folder: Path, ema: bool = True) -> int:
        """Swap in another checkpoint's weights of the same run (the progression picture, a distillation's
        phases); returns its step."""
        load_into(self.network, load_weights(folder, "ema" if ema else "model"), folder, "the pipeline's config")
        meta = verify(folder)
        if "student_steps" in meta:
            self.config = self.config.override({"sample.steps": meta["student_steps"]})
        self.step = meta["step"]
        return self.step

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the run makes."""
        d = self.config.data
        return (d.channels or 1, d.image_size, d.image_size)

    @property
    def _model_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of what the network denoises: the images, or a latent run's latents."""
        channels, size = self.config.model_input()
        return (channels, size, size)

    def to_images(self, x: Tensor) -> Tensor:
        """What the network denoises as images in [-1, 1] (float, on the CPU): a latent run decodes."""
        if self.codec is not None:
            x = self.codec.decode(x.to(self.device))
        return x.clamp(-1, 1).float().cpu()

    def plan(self, n: Optional[int] = None, sampler: Optional[str] = None, steps: Optional[int] = None,
             spacing: Optional[str] = None, classes: Classes = None, guidance: Optional[float] = None,
             **options) -> Plan:
        """Resolve and check how to draw (n) images, before any work. Each choice left out (None) is the
        run's own (`config.sample`): its sampler, steps and guidance; its values of the sampler's
        options (a run's eta is its DDIM eta); its spacing for its own sampler, for another sampler
        the spacing that sampler's spec prefers (Heun: quadratic). Refused: an unknown sampler, an
        option it does not take, steps beyond T, guidance or classes for an unconditional run."""
        s = self.config.sample
        sampler = sampler or s.sampler
        spec = SAMPLERS.get(sampler)
        steps = s.steps if steps is None else steps
        resolved = sampler_options(sampler, {k: v for k, v in options.items() if v is not None},
                                   s.options_for(sampler).values())
        if not 1 <= steps <= self.diffusion.timesteps:
            raise InputError(f"--steps must be between 1 and the model's T = {self.diffusion.timesteps} (got {steps})")
        # a student learnt its own sampler, and some methods only the steps they were trained for
        fixed = self._student is not None and self._student.fixed_steps
        if fixed and (steps > s.steps or sampler != s.sampler) and (sampler, steps) != self._warned:
            self._warned = (sampler, steps)
            warnings.warn(f"this student was distilled to sample in {s.steps} steps of {s.sampler}; {steps} steps "
                          f"of {sampler} ask it what it was not trained for", DdpmWarning, stacklevel=2)
        if guidance is not None and (not self.config.model.num_classes or guidance < 0):
            raise InputError(f"--guidance needs a class-conditional run and a weight >= 0 (got {guidance})")
        if spacing is None:
            spacing = s.spacing if sampler == s.sampler else spec.spacing or s.spacing
        schedule = self.diffusion.schedule
        timesteps = tuple(spaced_timesteps(schedule.timesteps, steps, spacing, schedule))
        labels = self._labels(n, classes) if n is not None else self._labels(1, classes) and None
        return Plan(sampler, steps, spacing, resolved, s.guidance if guidance is None else guidance, s.clip_denoised,
                    timesteps, labels, n)

    @property
    def _student(self) -> Optional[StudentSpec]:
        """The student method's spec (registry.STUDENTS) for a student run; None for any other."""
        return STUDENTS.get(self.config.student) if self.config.student else None

    def _labels(self, n: int, classes: Classes = None) -> Optional[Tensor]:
        """Class labels for n samples, cycling through `classes` (an int, a list, or "all"/None for
        every class); None for an unconditional run."""
        if not self.config.model.num_classes:
            if classes is not None:
                raise InputError("this run was trained without classes; train with --classes K to use --class")
            return None
        if classes is None or classes == "all":
            classes = range(self.config.model.num_classes)
        elif isinstance(classes, int):
            classes = [classes]
        classes = list(classes)
        if not classes or not all(isinstance(c, int) and 0 <= c < self.config.model.num_classes for c in classes):
            raise InputError(f"--class must be 'all' or class numbers in 0..{self.config.model.num_classes - 1}, e.g. 3 or "
                             f"1,4,7 (got {classes})")
        return class_labels(n, classes)

    def denoiser(self, plan: Plan, labels: Optional[Tensor] = None) -> Denoiser:
        """What the sampler calls: the network through its objective, clipped as the run samples,
        guided towards `labels` if given."""
        denoiser = self.diffusion.denoiser(self.network, plan.clip_denoised)
        if self._student is not None and self._student.denoiser is not None:  # its network read otherwise: f(x, sigma)
            denoiser = resolve(self._student.denoiser)(denoiser, self.config)
        return denoiser if labels is None else denoiser.conditioned(labels.to(self.device), plan.guidance)

    @torch.no_grad()
    def __call__(self, n: int, sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 0,
                 classes: Classes = None, guidance: Optional[float] = None, output: str = "uint8",
                 progress: bool = True, *, spacing: Optional[str] = None, batch_size: int = 256,
                 callback: Optional[Callback] = None, **options):
        """Draw n images: `draw(plan(n, ...))`. Options left out are the run's own (`plan`); the
        sampler's own are keywords (eta=0.5, variance="large", churn=10)."""
        check_output(output)
        if n < 1:
            raise InputError(f"the number of samples must be >= 1 (got {n})")
        plan = self.plan(n, sampler, steps, spacing, classes, guidance, **options)
        return self.draw(plan, seed, output, progress, batch_size, callback)

    @torch.no_grad()
    def draw(self, plan: Plan, seed: int = 0, output: str = "uint8", progress: bool = True, batch_size: int = 256,
             callback: Optional[Callback] = None):
        """The plan's n images. output: "uint8" [n, C, H, W] in 0..255, "float" [n, C, H, W] in [0, 1],
        or "pil", a list of PIL images. Batch b starts from noise seeded with (seed, b), so the images
        do not depend on how many ranks share the work. `callback(i, t, x_t, prediction)` sees every
        sampler step of every batch (the trajectory picture uses it)."""
        check_output(output)
        if plan.n is None:
            raise InputError("this plan was made without a number of images; make it with pipe.plan(n, ...)")
        if batch_size < 1:
            raise InputError(f"the batch size must be >= 1 (got {batch_size})")
        return as_output(self._sample(plan, seed, batch_size, progress, callback), output)

    def _sample(self, plan: Plan, seed: int, batch_size: int, progress: bool, callback: Optional[Callback]) -> Tensor:
        """The batch loop: float images in [-1, 1] on the CPU, gathered from every rank."""
        sample, schedule, labels, n = plan.function(), self.diffusion.schedule, plan.labels, plan.n
        ranks = self.ranks
        starts = range(0, n, batch_size)
        batches = []
        with tqdm(total=n, desc=f"sampling ({plan.sampler}, {plan.nfe} NFE)", unit="img",
                  disable=not (progress and ranks.is_main)) as bar:
            for start in starts[ranks.rank :: ranks.world_size]:  # under torchrun, every world_size-th batch
                count = min(batch_size, n - start)
                generator = torch.Generator(device=self.device).manual_seed(batch_seed(seed, start // batch_size))
                x = torch.randn((count, *self._model_shape), generator=generator, device=self.device)
                denoiser = self.denoiser(plan, None if labels is None else labels[start : start + count])
                x = sample(denoiser, x, schedule, plan.timesteps, generator=generator, callback=callback)
                batches.append((start, self.to_images(x)))
                bar.update(count * ranks.world_size)
        if ranks.enabled:
            gathered = [None] * ranks.world_size
            torch.distributed.all_gather_object(gathered, batches)
            batches = sorted((batch for part in gathered for batch in part), key=lambda batch: batch[0])
        return torch.cat([images for _, images in batches])


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise InputError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")


def as_output(x: Tensor, output: str):
    """Float images in [-1, 1] as `output` asks (checked before the work by check_output): uint8
    [N, C, H, W], float in [0, 1], or PIL images."""
    if output == "float":
        return (x.cpu() + 1) / 2
    images = to_uint8(x.cpu())
    return images if output == "uint8" else [to_pil(image) for image in images]


def class_labels(n: int, classes: Sequence[int]) -> Tensor:
    """Labels for n samples that cycle through `classes` (0, 1, 2, 0, 1, 2, ...): balanced."""
    return torch.tensor(list(classes), dtype=torch.long)[torch.arange(n) % len(classes)]


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch number `batch` of a sampling job seeded with `seed`."""
    return seed * 1_000_003 + batch

