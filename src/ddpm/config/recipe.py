"""The measured recipe: what a new run starts from, beyond the schema's digit defaults.

schema.py declares what a setting is; this module holds what the project measured and chose: the
color defaults, the network and latent diffusion chosen by a CPU time budget, the own autoencoder's
widths and share, the sampling steps of a latent run, and the rule that tells a requeued run's
command from another run. Each number carries the measurement behind it; docs/cpu-default.md and
docs/latent.md have the studies. `compose_config` layers it all:

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

# Model size by the time budget, for color images on a CPU: a short --max-minutes buys more from the
# steps of a narrower UNet than from the color default's width. On emoji group A, 16/32/64 against
# 32/64/128 scored FID 233 against 284 in 5 minutes and 185 against 190 in 10, and sampled 2.3x as
# fast; in 30 minutes 32/64/128 won, 135 against 154. What decides is the steps a budget buys: the
# curves cross where 32/64/128 makes about 1,130 steps, and on a machine twice as fast 32/64/128 won
# in 10 minutes too (127 against 150). So a budget counts in minutes of the machine the sizes were
# measured on (BUDGET_SIZES_GFLOPS, where the 10-minute rows ran): --max-minutes scaled by this CPU's
# matrix-multiply rate over that one (docs/cpu-default.md, "Model size by the budget"). Rows of (most
# such minutes, settings): the first whose minutes cover the run's budget. Measured in pixel space
# on the CPU only: a GPU's minute, or a latent run's, buys other sizes.
BUDGET_SIZES_GFLOPS = 171.0
#
# Above that, latent diffusion: part of the budget (OWN_SHARES) trains an autoencoder to 16x16x4
# latents, the rest the color default's UNet on them, each step 3.4x cheaper than in pixels. With a
# third, on emoji at 32x32 in 10 minutes (about 24 of these minutes) it scored FID 82.5 and 107.0 on
# groups A and B, where pixels scored 127.2 and 170-172; at 64x64 (f = 4) in 30 minutes (27 of
# these), 136.4 against 217.2 (docs/latent.md); on all emoji in 30 minutes at 432 GFLOP/s (76 of
# these), 81.8 against 93.1, and with a fifth for its autoencoder 72.1 at 434 GFLOP/s (76.1 of
# these) against 90.8 for pixels. It is chosen where it was measured: up to 80 such minutes (the
# last point and 5 % more, above the 429-436 GFLOP/s that runs on that machine measured that day,
# so that the rule does not flip on the machine it was measured on: at 76 a 30-minute run there
# chose pixels and scored 90.8), 32x32 and 64x64 images held in memory. In 60 minutes (153) it
# scored 69.1, where the pixel curve predicts 71.4: too close to choose on a prediction
# (docs/cpu-default.md).
#
# Such a run samples as every run does, with DDPM in 50 steps (50 network evaluations), the best of
# the samplers at <= 50 NFE on the 10-minute emoji default: FID 98.0 against 94.1 for DDPM in 100 on
# the same seed (+4.1 %, within the 5 % the project allows for halving the cost; DPM-Solver++(2M) 20
# and 50 106.8 and 106.4, DDIM 50 107.2, Heun 25 (49 NFE) 106.4). Networks of the recipe before it,
# with a third of the budget for the autoencoder, had lost 3.7-7.0 % at 50 (docs/cpu-default.md).
COLOR_CPU_BUDGET_SIZES: tuple[tuple[float, dict[str, object]], ...] = (
    (11.0, {"model.channels": [16, 32, 64]}),
    (80.0, {"latent.autoencoder": OWN}),
)
OWN_SIZES = (32, 64)

# The autoencoder's share of an own-autoencoder run's --max-minutes, by image size; a third elsewhere.
# At 32x32 (f = 2) a fifth, since the UNet's steps bound the samples and the autoencoder's rFID after
# 120 s (about 30) sits far below them. On all emoji (DDPM 100 steps) two 10-minute runs scored FID
# 88.3 and 87.6 against a third's 91.3-96.5 over four, and 30 minutes 72.1 against 75.2; on emoji
# group B, 99.3 and 102.4 on two seeds against 103.8 and 105.6 (a tenth: 101.9 and 104.8). At 64x64
# (f = 4) a third of 30 minutes left the autoencoder at rFID 82, the bound there: not cut unmeasured.
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


def sized_by_budget(chosen: Config, pixels: bool = False) -> dict[str, object]:
    """The settings that a color run's time budget (train.max_minutes) chooses over COLOR_DEFAULTS:
    those of the first COLOR_CPU_BUDGET_SIZES row that covers it, in minutes of the study's machine,
    for a pixel-space color run on the CPU; none for any other run. With `pixels` (a flag kept the
    run in pixels) the rows that choose an autoencoder are passed over, with all they set."""
    if not _sized(chosen):
        return {}
    rows = [(most, settings) for most, settings in COLOR_CPU_BUDGET_SIZES
            if "latent.autoencoder" not in settings or (not pixels and _own_fits(chosen.data))]
    return next((dict(settings) for most, settings in rows if budget_minutes(chosen) <= most), {})


def chosen_by_budget(first: Config, config: Config) -> dict[str, str]:
    """Why each setting that the time budget of `first` (the layers above the defaults) chose is in
    `config` (those layers over the defaults): {"model.channels": "[16, 32, 64], chosen by ..."}, for
    the settings no layer overrode."""
    settings = sized_by_budget(first)
    if not settings:
        return {}
    flat = config.flat()
    why = (f"chosen by the time budget: --max-minutes {first.train.max_minutes:g} on a CPU at {budget_gflops():.0f} "
           f"GFLOP/s, {budget_minutes(first):.1f} minutes of the {BUDGET_SIZES_GFLOPS:.0f} GFLOP/s CPU the sizes "
           f"were measured on (recipe.COLOR_CPU_BUDGET_SIZES; docs/cpu-default.md)")
    return {key: f"{value}, {why}" for key, value in settings.items() if flat[key] == value}


def notes() -> dict[str, str]:
    """What the recipe changes, by config key, as the command line's help says it: read off the
    tables above, so that a measured number is written once."""
    said = {key: f"{value} for color data" for key, value in COLOR_DEFAULTS.items()}
    rows = []
    for most, settings in COLOR_CPU_BUDGET_SIZES:
        if settings.get("latent.autoencoder") == OWN:
            sizes = " and ".join(f"{s}x{s}" for s in OWN_SIZES)
            rows.append(f"latent diffusion on its own autoencoder up to {most:g} ({sizes} images)")
        else:
            rows.append(", ".join(f"{key} {value}" for key, value in settings.items()) + f" up to {most:g}")
    said["train.max_minutes"] = (f"on the CPU, color data trains {', then '.join(rows)}, in minutes of a "
                                 f"{BUDGET_SIZES_GFLOPS:g} GFLOP/s CPU scaled by this one's matrix-multiply rate "
                                 f"({CPU_GFLOPS_VARIABLE}=R gives it; recipe.COLOR_CPU_BUDGET_SIZES); no step cap "
                                 f"unless one is given")
    return said


# ---- composition ------------------------------------------------------------------------------


def defaults_for(chosen: Config, pixels: bool = False) -> Config:
    """The config a run starts from, given what the layers above the defaults chose (`chosen`): the
    gray defaults, or COLOR_DEFAULTS over them for 3-channel data. Chosen by what the data is, not
    its name, so a user's own folder of color images gets what emoji and CIFAR-10 get. The color
    loss weight goes with the objective it was measured with: a run on another objective keeps
    that objective's own loss. A short time budget on the CPU chooses a narrower network, a longer
    one latent diffusion (sized_by_budget, which `pixels` passes to). With --max-minutes the minutes are the budget: the
    schema's step cap (20,000) would end the run early wherever it takes more steps than that in its
    minutes (the 30-minute emoji default took 20,000 in 29.4 of its minutes at 434 GFLOP/s; a GPU, or a
    faster CPU, in far fewer), so such a run has none unless a layer gives one."""
    uncapped = {"train.max_steps": None} if chosen.train.max_minutes is not None else {}
    if data_channels(chosen.data) != 3:
        return Config().override(uncapped)
    color = dict(COLOR_DEFAULTS)
    if chosen.diffusion.objective != Config().diffusion.objective:
        del color["diffusion.min_snr_gamma"]
    return Config().override({**color, **uncapped, **sized_by_budget(chosen, pixels)})


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
    if config.latent.autoencoder is None and sized_by_budget(first).get("latent.autoencoder"):
        config = layered(defaults_for(first, pixels=True))  # a flag kept pixels: the rest of the latent row goes too
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
              and not (key.startswith(("distill.", "consistency.")) and run.kind == given.kind != "student")]
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
