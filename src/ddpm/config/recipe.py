"""The measured recipe: what a new run starts from, beyond the schema's digit defaults.

schema.py declares what a setting is; this module holds what the project measured and chose: the
color defaults, the network and latent diffusion chosen by a CPU time budget, the own autoencoder's
widths and share, the sampling steps of a latent run, and the rule that tells a requeued run's
command from another run. Each choice cites the measurement behind it, which docs/cpu-default.md and
docs/latent.md hold with their tables. `compose_config` layers it all:

    defaults (schema.py) < the recipe for the data and budget < --preset < --config < flags < --set

so a flag, a preset or a config file always wins over a measured choice, and the saved config.yaml
says (as comments) which settings the budget chose and why.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from .schema import OWN, AutoencoderRun, Config, DataConfig
from ..errors import InputError
from ..data.folders import planned
from .presets import load_preset
from .students import student_sections
from ..registry import DATASETS
from ..runtime.speed import CPU_GFLOPS_VARIABLE, cpu_gflops

# The dataclass defaults were measured on 28x28 gray digits. Data with 3 channels (emoji, cifar10,
# celeba, a folder of the user's own pictures) starts from these instead, measured on 32x32 emoji
# groups at the same budget: docs/cpu-default.md, "Defaults for color" and "The recipe study".
COLOR_DEFAULTS: dict[str, object] = {
    "model.channels": [32, 64, 128],
    "model.attention": [False, False, True],
    # measured with v, the default objective, and only there: a run that chooses another objective
    # (a paper's preset, EDM with its own weight) keeps that objective's unweighted loss
    "diffusion.min_snr_gamma": 5.0,
}

# Color on a CPU, by the time budget. A budget counts in minutes of the machine the sizes were
# measured on (BUDGET_SIZES_GFLOPS): --max-minutes scaled by this CPU's matrix-multiply rate over that
# one. Rows of (most such minutes, settings), the first that covers the run's budget chosen:
# - below the shortest budget latents were measured at, the narrow pixel UNet;
# - latent diffusion on its own autoencoder (latent.autoencoder own, OWN_SIZES held in memory), which
#   beat pixels at every budget measured against them, from that one to 76 of these minutes, up to
#   where the two tie near 150 (docs/cpu-default.md, "The budget rule at its thresholds");
# - for a run that stays in pixels, the narrow UNet up to 11, where its steps beat width (ibid.,
#   "Model size by the budget"); past each row's bound, the color default 32/64/128 in pixels.
# No bound lies near 10 or 30 minutes of a machine of the usual speed (170-440 GFLOP/s), so the
# probe's wobble cannot flip the README's budgets.
BUDGET_SIZES_GFLOPS = 171.0
NARROW = {"model.channels": [16, 32, 64]}
# On those latents, EDM2's magnitude-preserving network with its inverse-square-root decay: at 10 wall
# minutes on emoji, three runs each, FID 93.5 / 91.8 / 91.5 against the UNet's 96.9 / 101.9 / 98.8, in
# half the steps; at 30 minutes 75.2 against 82.3 (docs/edm2.md, "Three runs per arm"). Its learning
# rate and schedule go with the network: a run that a layer gives another network keeps the schema's
# (sized_by_budget's `network`, which _kept reads off the layers).
EDM2_DYNAMICS = {"model.network": "mp-unet", "train.lr": 0.03, "train.lr_schedule": "rsqrt", "train.lr_step_size": 1000}
COLOR_CPU_BUDGET_SIZES: tuple[tuple[float, dict[str, object]], ...] = (
    (2.4, NARROW),
    (150.0, {"latent.autoencoder": OWN, **EDM2_DYNAMICS}),
    (11.0, NARROW),
)
#
# Such a run samples as every run does, with DDPM in 50 steps, the best of the samplers at <= 50 NFE
# on the 10-minute emoji default (docs/cpu-default.md, "The color default at <= 50 NFE").
OWN_SIZES = (32, 64)

# The autoencoder's share of an own-autoencoder run's --max-minutes, by image size; a third elsewhere:
# a fifth at 32x32, where it won on all emoji and on group B, and a third at 64x64, where the
# autoencoder bounds the samples (docs/cpu-default.md, "The autoencoder's share").
OWN_SHARES = {32: 0.2}

# What training resolves and writes into the run's config (from the data and the autoencoder).
RESOLVED = ("data.image_size", "data.channels", "latent.sha256", "latent.scale", "latent.channels", "latent.factor")


# ---- the own autoencoder ----------------------------------------------------------------------


def own_widths(config: Config) -> list[int]:
    """The level widths of the autoencoder an own-autoencoder run trains: latent.own_widths, or
    [64, 128, 128, ...] with as many levels as bring the images down to 16x16 latents (f = 2 at
    32x32, 4 at 64x64), the sizes measured (docs/latent.md)."""
    if config.latent.own_widths:
        return list(config.latent.own_widths)
    size = config.data.image_size
    factor = size // 16
    if size % 16 or factor < 2 or factor & (factor - 1):
        raise InputError(f"a run that trains its own autoencoder chooses its factor for 16x16 latents, which "
                         f"{size}x{size} images do not give; set latent.own_widths, e.g. [64,128] for f = 2")
    return [64] + [128] * (factor.bit_length() - 1)


def own_share(config: Config) -> float:
    """The share of train.max_minutes that a run's own autoencoder trains for: latent.own_share, or
    OWN_SHARES at the run's resolved image size, or a third."""
    return config.latent.own_share or OWN_SHARES.get(config.data.image_size, 1 / 3)


def own_autoencoder(config: Config) -> AutoencoderRun:
    """The autoencoder run that a diffusion run with latent.autoencoder: own trains first, into
    RUN/autoencoder: the default autoencoder at own_widths, on the same data (with flips, as
    train-autoencoder's default) at the resolved image size, for own_share(config) of the run's minutes
    (and at most own_steps), with the run's seed, device and bookkeeping."""
    latent, t = config.latent, config.train
    run = AutoencoderRun(data=dataclasses.replace(config.data, flip=True))
    for key in ("seed", "device", "precision", "channels_last", "log_every", "checkpoint_every", "keep_checkpoints",
                "tensorboard"):
        setattr(run.train, key, getattr(t, key))
    run.train.max_minutes = t.max_minutes * own_share(config) if t.max_minutes else None
    run.train.max_steps = latent.own_steps or run.train.max_steps
    run.autoencoder.channels = own_widths(config)
    return run


# ---- the time budget on a CPU -----------------------------------------------------------------


def _on_cpu(device: str) -> bool:
    """Whether a run on `device` (train.device) trains on the CPU: cpu, or auto without CUDA."""
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device.split(":")[0] == "cpu"


def data_channels(data: DataConfig) -> int:
    """How many channels the data set of `data` holds as the model will see it: data.channels when
    set, else the named set's own (its spec in ddpm.registry.DATASETS; 3 for a folder, read as RGB)."""
    return data.channels or DATASETS.get(data.name, "data set").channels


def _sized(chosen: Config) -> bool:
    """Whether the time budget sizes this run's network: a pixel-space color run on the CPU, with
    --max-minutes."""
    return (chosen.train.max_minutes is not None and data_channels(chosen.data) == 3
            and chosen.latent.autoencoder is None and _on_cpu(chosen.train.device))


def budget_gflops() -> float:
    """The matrix-multiply rate that scales a time budget: this CPU's (speed.cpu_gflops),
    but under torchrun the study's own unless DDPM_CPU_GFLOPS gives one, since every rank must
    choose the same network and ranks that share a machine's cores measure different rates."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and CPU_GFLOPS_VARIABLE not in os.environ:
        return BUDGET_SIZES_GFLOPS
    return cpu_gflops()


def budget_minutes(chosen: Config) -> float:
    """A run's --max-minutes in minutes of the CPU the sizes were measured on: scaled by this
    CPU's matrix-multiply rate over BUDGET_SIZES_GFLOPS."""
    return chosen.train.max_minutes * budget_gflops() / BUDGET_SIZES_GFLOPS


def _own_fits(data: DataConfig) -> bool:
    """Whether a run on `data` may train its own autoencoder by default: images of a size it was
    measured at (OWN_SIZES) that are held in memory, as encoding the training set once needs."""
    size, in_memory = planned(data.name, data.image_size, data.crop)
    return in_memory and size in OWN_SIZES


def sized_by_budget(chosen: Config, pixels: bool = False, network: bool = True) -> dict[str, object]:
    """The settings that a color run's time budget (train.max_minutes) chooses over COLOR_DEFAULTS:
    those of the first COLOR_CPU_BUDGET_SIZES row that covers it, in minutes of the study's machine,
    for a pixel-space color run on the CPU; none for any other run. The rows that choose an
    autoencoder are passed over, with all they set, where its own does not fit the data (_own_fits)
    or `pixels` says a flag kept the run in pixels; without `network` (a flag chose another network),
    a row's network goes with the training dynamics measured with it (EDM2_DYNAMICS)."""
    if not _sized(chosen):
        return {}
    rows = [(most, settings) for most, settings in COLOR_CPU_BUDGET_SIZES
            if "latent.autoencoder" not in settings or (not pixels and _own_fits(chosen.data))]
    row = next((dict(settings) for most, settings in rows if budget_minutes(chosen) <= most), {})
    return row if network else {key: value for key, value in row.items() if key not in EDM2_DYNAMICS}


def _kept(first: Config, config: Config) -> dict[str, bool]:
    """sized_by_budget's arguments for a run whose layers (`first`) gave `config` over the recipe: in
    pixels where a flag kept it there, and without the row's network where a flag chose another."""
    pixels = config.latent.autoencoder is None
    wanted = sized_by_budget(first, pixels).get("model.network", config.model.network)
    return {"pixels": pixels, "network": config.model.network == wanted}


def chosen_by_budget(first: Config, config: Config) -> dict[str, str]:
    """Why each setting that the time budget of `first` (the layers above the defaults) chose is in
    `config` (those layers over the defaults): {"model.channels": "[16, 32, 64], chosen by ..."}, for
    the settings no layer overrode."""
    settings = sized_by_budget(first, **_kept(first, config))
    if not settings:
        return {}
    flat = config.flat()
    why = (f"chosen by the time budget: --max-minutes {first.train.max_minutes:g} on a CPU at {budget_gflops():.0f} "
           f"GFLOP/s, {budget_minutes(first):.1f} minutes of the {BUDGET_SIZES_GFLOPS:.0f} GFLOP/s CPU the sizes "
           f"were measured on (recipe.COLOR_CPU_BUDGET_SIZES; docs/cpu-default.md)")
    return {key: f"{value}, {why}" for key, value in settings.items() if flat[key] == value}


def said_by_budget(config: Config) -> list[str]:
    """What the time budget chose (`config.chosen`), as the command line says it: one line per reason,
    the settings it chose before it ("model.network mp-unet, train.lr 0.03, chosen by ..."), where the
    config's header gives each setting its own line."""
    flat, reasons = config.flat(), {}
    for key, why in config.chosen.items():
        reasons.setdefault(why.removeprefix(f"{flat[key]}, "), []).append(f"{key} {flat[key]}")
    return [f"{', '.join(keys)}, {reason}" for reason, keys in reasons.items()]


def notes() -> dict[str, str]:
    """What the recipe changes, by config key, as the command line's help says it: read off the
    tables above, so that a measured number is written once."""
    said = {key: f"{value} for color data" for key, value in COLOR_DEFAULTS.items()}
    least, own, pixels = COLOR_CPU_BUDGET_SIZES
    sizes = " and ".join(f"{s}x{s}" for s in OWN_SIZES)
    narrow = ", ".join(f"{key} {value}" for key, value in NARROW.items())
    said["train.max_minutes"] = (f"on the CPU, color data trains latent diffusion on its own autoencoder from "
                                 f"{least[0]:g} to {own[0]:g} ({sizes} images held in memory), with the "
                                 f"{EDM2_DYNAMICS['model.network']} network and its learning rate, and {narrow} below "
                                 f"{least[0]:g} or, in pixels, up to {pixels[0]:g}, in minutes of a "
                                 f"{BUDGET_SIZES_GFLOPS:g} GFLOP/s CPU scaled by this one's matrix-multiply rate "
                                 f"({CPU_GFLOPS_VARIABLE}=R gives it; recipe.COLOR_CPU_BUDGET_SIZES); no step cap "
                                 f"unless one is given")
    return said


# ---- composition ------------------------------------------------------------------------------


def defaults_for(chosen: Config, pixels: bool = False, network: bool = True) -> Config:
    """The config a run starts from, given what the layers above the defaults chose (`chosen`): the
    gray defaults, or COLOR_DEFAULTS over them for 3-channel data. Chosen by what the data is, not
    its name, so a user's own folder of color images gets what emoji and CIFAR-10 get. The color
    loss weight goes with the objective it was measured with: a run on another objective keeps
    that objective's own loss. On the CPU the time budget chooses latent diffusion where the run's
    own autoencoder fits its data, and for a run in pixels a narrower network on a short budget
    (sized_by_budget, which `pixels` and `network` pass to). With --max-minutes the minutes are the budget: the
    schema's step cap (20,000) would end a fast machine's run early (docs/cpu-default.md, "No step
    cap under a time budget"), so such a run has none unless a layer gives one."""
    uncapped = {"train.max_steps": None} if chosen.train.max_minutes is not None else {}
    if data_channels(chosen.data) != 3:
        return Config().override(uncapped)
    color = dict(COLOR_DEFAULTS)
    if chosen.diffusion.objective != Config().diffusion.objective:
        del color["diffusion.min_snr_gamma"]
    return Config().override({**color, **uncapped, **sized_by_budget(chosen, pixels, network)})


def compose_config(preset: Optional[str] = None, config_file: Optional[str] = None,
                   overrides: Optional[dict] = None) -> Config:
    """Settings in layers: the defaults < the recipe < a preset < a config file < overrides ({"train.lr": 1e-3}).

    The recipe depends on the data the layers above choose: gray or color, and for color on the CPU
    the time budget (defaults_for). What the budget chose, the config says in `chosen`.
    """
    def layered(base: Config) -> Config:
        config = load_preset(preset, base) if preset else base
        if config_file:
            config = Config.from_yaml(config_file, base=config)
        return config.override(overrides or {})

    first = layered(Config())
    config = layered(defaults_for(first))
    kept = _kept(first, config)
    if (kept["pixels"] and sized_by_budget(first).get("latent.autoencoder")) or not kept["network"]:
        config = layered(defaults_for(first, **kept))  # a flag kept pixels or another network: what went with them goes
    config.chosen = chosen_by_budget(first, config)
    return config


# ---- the same run, requeued -------------------------------------------------------------------


def requeued(run: "Config | AutoencoderRun", given: "Config | AutoencoderRun", path: str):
    """The config of the run at `path` (`run`) for a command that would start it anew with `given` (a
    requeued job's `--resume-if-exists`): the two must agree, but in the budget (the resumable keys,
    which `given` sets), in what training resolved where `given` left it unset (sizes, the
    autoencoder's hash), and in how the run samples by default (`sample`, which trains nothing: the
    run keeps its own, as one started when latent runs sampled in 100 steps does), and, for a run that
    is no student, in the student's sections. A network sized by the time budget stays the run's when
    the budget changes."""
    mine, theirs, resumable = run.flat(), given.flat(), run.resumable()
    differ = [key for key in sorted(mine.keys() | theirs.keys())
              if mine.get(key) != theirs.get(key) and key not in resumable
              and not (key in RESOLVED and theirs.get(key) is None)
              and not (run.kind != "autoencoder" and _sized_alike(run, key, mine.get(key), given, theirs.get(key)))
              and not key.startswith("sample.")
              and not (key.split(".")[0] in student_sections() and run.kind == given.kind != "student")]
    if differ:
        raise InputError(f"{path} holds a run whose config differs from this command's in {', '.join(differ[:4])}"
                         + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                         + "; give the run's settings (only the budget may change), or another --out")
    return run.override({key: theirs[key] for key in resumable if key in theirs})


def _sized_alike(run: Config, key: str, mine: object, given: Config, theirs: object) -> bool:
    """Whether `key` differs between the run (`mine`) and `given` (`theirs`) only because their time
    budgets sized the network: `given`'s value came from its budget, or a budget chose the run's (on
    whatever machine it started) and `given` holds its own budget's default."""
    if key in given.chosen:
        return True
    unsized = run.override({"latent.autoencoder": None}) if run.latent.autoencoder == OWN else run
    by_a_budget = _sized(unsized) and any(mine == settings.get(key) for _, settings in COLOR_CPU_BUDGET_SIZES)
    return by_a_budget and theirs == defaults_for(given).flat()[key]
