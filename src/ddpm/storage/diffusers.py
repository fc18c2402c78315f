"""A run in diffusers' format, both ways: the configs and the weights of a UNet2DModel, a DDPMScheduler
and a vqvae, mapped to ddpm's and back (storage/diffusers_folders.py reads and writes the folders).

    ddpm export --run RUN --out DIR                       # DDPMPipeline / DDIMPipeline.from_pretrained(DIR)
    ddpm import --from DIR --out RUN --data cifar10       # google/ddpm-cifar10-32 as a ddpm run

The folder is diffusers' own: model_index.json, unet/config.json with a UNet2DModel's config and
unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json with a DDPMScheduler's.
Neither direction needs diffusers installed: it is JSON and safetensors (a .bin is read with
torch.load(weights_only=True)).

ddpm's UNet with per-block skips (`model.skips: block`, Ho et al.'s layout) is UNet2DModel's
network, key for key (`to_diffusers_key`):

    stem, time_mlp.0 / .2           conv_in, time_embedding.linear_1 / linear_2
    down.i.res.j (norm1, conv1,     down_blocks.i.resnets.j (norm1, conv1, time_emb_proj, norm2,
      time, norm2, conv2, skip)       conv2, conv_shortcut)
    down.i.attention.j (norm,       down_blocks.i.attentions.j (group_norm, to_q | to_k | to_v
      qkv, out: 1x1 convs)            stacked in qkv, to_out.0: linear layers)
    down.i.downsample               down_blocks.i.downsamplers.0.conv
    neck.0, neck_attention, neck.1  mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
    up.i.res.j / attention.j        up_blocks.i.resnets.j / attentions.j (i = 0 is the lowest level)
    up.i.upsample.1                 up_blocks.i.upsamplers.0.conv
    head_norm, head                 conv_norm_out, conv_out

A network no UNet2DModel computes (the CPU defaults' skip per level among them) exports as itself,
ddpm's own class in diffusers' form (models/for_diffusers.DdpmUNet), and a latent run as an LDMPipeline
whose vqvae is its autoencoder: every run exports but what no pipeline folder can hold (a
class-conditional run, a consistency student) and what no diffusers scheduler names. Those, and
what ddpm cannot express of a diffusers folder, are refused with one line that names them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..config import Config
from ..diffusion.schedules import NoiseSchedule, make_schedule
from ..errors import InputError
from ..registry import STUDENTS

UNET, SCHEDULER, VQVAE, WEIGHTS = "unet", "scheduler", "vqvae", "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.27.0"  # the oldest version the folder is written for (our optional extra's floor)
PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
VARIANCE = {"small": "fixed_small", "large": "fixed_large"}
SPACING = {"uniform": "linspace", "trailing": "trailing", "leading": "leading"}
PADDING = {"after": 0, "both": 1}


def _refuse(what: str, fix: str = "") -> None:
    raise InputError(f"{what} has no diffusers counterpart" + (f"; {fix}" if fix else ""))


# ---- the network's config ----------------------------------------------------------------------


# The model keys unet2d_config maps or checks; any other must be at its default to export.
UNET2D_KEYS = {"network", "channels", "attention", "num_res", "neck_length", "time_emb_dim", "dropout", "num_classes",
               "norm", "activation", "upsample", "skips", "neck_attention", "patch_size", "time_freq_shift",
               "time_cos_first", "downsample_padding", "norm_groups", "norm_eps", "attention_head_dim"}


def pipeline_refusals(config: Config) -> None:
    """What no pipeline folder can hold for the run, whatever network it writes: one line naming it."""
    student = config.student and STUDENTS.get(config.student)
    if student and student.export is not None:
        _refuse(f"{student.called} ({student.export})")
    if config.model.num_classes:
        _refuse(f"model.num_classes {config.model.num_classes}", "DDPMPipeline draws without labels")


def unet2d_config(config: Config) -> dict:
    """UNet2DModel's config for the run's UNet, or one line naming what it cannot express."""
    m = config.model
    if m.network != "unet":
        _refuse(f"model.network {m.network}")
    for key, value, wanted, fix in [
        ("model.skips", m.skips, "block", "UNet2DModel keeps a skip per residual block: train with --set model.skips=block"),
        ("model.norm", m.norm, "group", ""), ("model.activation", m.activation, "silu", ""),
        ("model.upsample", m.upsample, "nearest", ""), ("model.patch_size", m.patch_size, 1, ""),
        ("model.time_emb_dim", m.time_emb_dim, m.channels[0],
         f"UNet2DModel's time embedding is as wide as its first level: set model.time_emb_dim={m.channels[0]}"),
    ]:
        if value != wanted:
            _refuse(f"{key} {value}", fix)
    default = type(m)()
    for key in sorted(set(m.values()) - UNET2D_KEYS):  # an option this exporter was not taught: only its default
        if getattr(m, key) != getattr(default, key):
            _refuse(f"model.{key} {getattr(m, key)}", "the exporter does not map it to a UNet2DModel")
    if m.neck_length not in (0, 2) or (m.neck_length == 0 and m.neck_attention):
        _refuse(f"model.neck_length {m.neck_length}", "UNet2DModel's middle is two residual blocks (or none)")
    groups = _uniform_groups(config)
    head_dim = m.attention_head_dim
    attended = [c for c, a in zip(m.channels, m.attention) if a] + ([m.channels[-1]] if m.neck_attention else [])
    if head_dim is not None and any(c % head_dim for c in attended):
        _refuse(f"model.attention_head_dim {head_dim} with attention at {attended} channels",
                "UNet2DModel's heads split every attention layer into that many channels")
    channels, size = config.model_input()
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": size, "in_channels": channels, "out_channels": channels, "center_input_sample": False,
        "time_embedding_type": "positional", "time_embedding_dim": 4 * m.time_emb_dim,
        "freq_shift": m.time_freq_shift, "flip_sin_to_cos": m.time_cos_first,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in m.attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(m.attention)],
        "mid_block_type": "UNetMidBlock2D" if m.neck_length else None, "add_attention": m.neck_attention,
        "block_out_channels": list(m.channels), "layers_per_block": m.num_res, "mid_block_scale_factor": 1,
        "downsample_padding": PADDING[m.downsample_padding], "downsample_type": "conv", "upsample_type": "conv",
        "dropout": m.dropout, "act_fn": "silu", "attention_head_dim": head_dim, "norm_num_groups": groups,
        "attn_norm_num_groups": None, "norm_eps": m.norm_eps, "resnet_time_scale_shift": "default",
        "class_embed_type": None, "num_class_embeds": None,
    }


def _uniform_groups(config: Config) -> int:
    """The one GroupNorm size of every norm of the run's UNet (UNet2DModel has one), or a refusal."""
    from ..models.unet import unet_from_config

    sizes = {module.num_groups for module in unet_from_config(config).modules()
             if isinstance(module, torch.nn.GroupNorm)}
    if len(sizes) != 1:
        _refuse(f"GroupNorms of {sorted(sizes)} groups in one network",
                f"UNet2DModel has one size: set model.norm_groups to one of {sorted(sizes)}")
    return sizes.pop()


def model_options(unet: dict) -> dict:
    """The run config's keys for a UNet2DModel config, or one line naming what ddpm cannot express."""
    get = unet.get
    down, up = list(get("down_block_types", ())), list(get("up_block_types", ()))
    attention = [kind == "AttnDownBlock2D" for kind in down]
    for key, value, allowed in [
        ("time_embedding_type", get("time_embedding_type", "positional"), ("positional",)),
        ("center_input_sample", get("center_input_sample", False), (False,)),
        ("act_fn", get("act_fn", "silu"), ("silu",)),
        ("resnet_time_scale_shift", get("resnet_time_scale_shift", "default"), ("default",)),
        ("downsample_type", get("downsample_type", "conv"), ("conv",)),
        ("upsample_type", get("upsample_type", "conv"), ("conv",)),
        ("mid_block_scale_factor", get("mid_block_scale_factor", 1), (1,)),
        ("mid_block_type", get("mid_block_type", "UNetMidBlock2D"), ("UNetMidBlock2D", None)),
        ("downsample_padding", get("downsample_padding", 1), tuple(PADDING.values())),
        ("class_embed_type", get("class_embed_type"), (None,)), ("num_class_embeds", get("num_class_embeds"), (None,)),
        ("time_embedding_dim", get("time_embedding_dim"), (None, 4 * get("block_out_channels", [0])[0])),
        ("attn_norm_num_groups", get("attn_norm_num_groups"), (None, get("norm_num_groups", 32))),
        ("in_channels", get("in_channels", 3), (1, 3)), ("out_channels", get("out_channels", 3), (get("in_channels", 3),)),
        ("down_block_types", all(kind in ("DownBlock2D", "AttnDownBlock2D") for kind in down), (True,)),
        ("up_block_types", up == ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)], (True,)),
    ]:
        if value not in allowed:
            raise InputError(f"the UNet2DModel's {key} {value!r} has no counterpart in ddpm's UNet (it takes "
                             f"{' or '.join(map(repr, allowed))})")
    channels = list(get("block_out_channels"))
    middle = get("mid_block_type", "UNetMidBlock2D") is not None
    return {
        "model.channels": channels, "model.attention": attention, "model.num_res": get("layers_per_block", 2),
        "model.neck_length": 2 if middle else 0, "model.neck_attention": middle and get("add_attention", True),
        "model.time_emb_dim": channels[0], "model.dropout": float(get("dropout", 0.0)), "model.skips": "block",
        "model.norm": "group", "model.activation": "silu", "model.upsample": "nearest",
        "model.norm_groups": get("norm_num_groups", 32), "model.norm_eps": float(get("norm_eps", 1e-5)),
        "model.attention_head_dim": get("attention_head_dim", 8), "model.time_freq_shift": get("freq_shift", 0),
        "model.time_cos_first": bool(get("flip_sin_to_cos", True)),
        "model.downsample_padding": {v: k for k, v in PADDING.items()}[get("downsample_padding", 1)],
        "data.channels": get("in_channels", 3), "data.image_size": _size(get("sample_size")),
    }


def _size(size) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise InputError(f"the UNet2DModel's sample_size {size} is not square; ddpm's images are")
        size = size[0]
    if not isinstance(size, int):
        raise InputError(f"the UNet2DModel's sample_size {size!r} is not a size in pixels")
    return size


# ---- the scheduler's config ---------------------------------------------------------------------


def scheduler_config(config: Config) -> dict:
    """DDPMScheduler's config for the run's schedule, objective, variance, clipping and spacing."""
    d, s = config.diffusion, config.sample
    if d.objective not in PREDICTION:
        _refuse(f"diffusion.objective {d.objective}", f"DDPMScheduler predicts {', '.join(PREDICTION.values())}")
    if s.spacing not in SPACING:
        _refuse(f"sample.spacing {s.spacing}", f"export takes {', '.join(SPACING)}: --spacing trailing")
    named = {"beta_schedule": "linear", "beta_start": d.beta_start * 1000 / d.timesteps,
             "beta_end": d.beta_end * 1000 / d.timesteps, "trained_betas": None}
    if d.schedule == "cosine":
        named = {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None}
    if d.schedule == "sigmoid" or d.log_snr_shift:  # no named diffusers schedule: its betas, exactly
        named = {"beta_schedule": "linear", "trained_betas": _schedule(config).betas.tolist()}
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": d.timesteps, **named, "variance_type": VARIANCE[s.options_for("ddpm").variance],
            "clip_sample": s.clip_denoised, "clip_sample_range": 1.0, "prediction_type": PREDICTION[d.objective],
            "timestep_spacing": SPACING[s.spacing], "steps_offset": 0, "thresholding": False}


def diffusion_options(scheduler: dict) -> dict:
    """The run config's keys for a DDPM or DDIM scheduler config, or one line naming what ddpm lacks."""
    get = scheduler.get
    variance = get("variance_type", "fixed_small")
    if get("_class_name", "DDPMScheduler") == "DDIMScheduler":
        variance = "fixed_small"
    allowed = [("prediction_type", get("prediction_type", "epsilon"), tuple(PREDICTION.values())),
               ("variance_type", variance, tuple(VARIANCE.values())),
               ("timestep_spacing", get("timestep_spacing", "leading"), tuple(SPACING.values())),
               ("thresholding", get("thresholding", False), (False,)),
               ("steps_offset", get("steps_offset", 0), (0,)),
               ("clip_sample_range", float(get("clip_sample_range", 1.0)), (1.0,)),
               ("beta_schedule", get("beta_schedule", "linear"), ("linear", "squaredcos_cap_v2"))]
    for key, value, choices in allowed:
        if value not in choices:
            raise InputError(f"the scheduler's {key} {value!r} has no counterpart in ddpm (it takes "
                             f"{' or '.join(map(repr, choices))})")
    steps = get("num_train_timesteps", 1000)
    options = {"diffusion.timesteps": steps,
               "diffusion.objective": {v: k for k, v in PREDICTION.items()}[get("prediction_type", "epsilon")],
               "sample.variance": {v: k for k, v in VARIANCE.items()}[variance],
               "sample.clip_denoised": bool(get("clip_sample", True)),
               "sample.spacing": {v: k for k, v in SPACING.items()}[get("timestep_spacing", "leading")]}
    if get("beta_schedule", "linear") == "squaredcos_cap_v2":
        options["diffusion.schedule"] = "cosine"
    else:  # ddpm's linear schedule scales its ends by 1000 / T
        options.update({"diffusion.schedule": "linear", "diffusion.beta_start": get("beta_start", 1e-4) * steps / 1000,
                        "diffusion.beta_end": get("beta_end", 0.02) * steps / 1000})
    if get("trained_betas") is not None:
        _refuse_unnamed_betas(get("trained_betas"), options)
    return options


def _refuse_unnamed_betas(betas: list, options: dict) -> None:
    """A scheduler's own betas import when they are a named schedule's; ddpm has no schedule of
    arbitrary betas in its config."""
    for schedule in ("linear", "cosine"):
        candidate = _schedule(Config().override({**options, "diffusion.schedule": schedule}))
        if torch.allclose(candidate.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-6, atol=1e-9):
            options["diffusion.schedule"] = schedule
            return
    raise InputError("the scheduler's trained_betas are neither the linear nor the cosine schedule; ddpm's config "
                     "names its schedule")


def _schedule(config: Config) -> NoiseSchedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end, d.log_snr_shift)


# ---- the weights ---------------------------------------------------------------------------------


RULES = [(r"^stem\.", "conv_in."), (r"^time_mlp\.0\.", "time_embedding.linear_1."),
         (r"^time_mlp\.2\.", "time_embedding.linear_2."), (r"^down\.(\d+)\.res\.(\d+)\.", r"down_blocks.\1.resnets.\2."),
         (r"^down\.(\d+)\.attention\.(\d+)\.", r"down_blocks.\1.attentions.\2."),
         (r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.conv."),
         (r"^neck\.(\d+)\.", r"mid_block.resnets.\1."), (r"^neck_attention\.", "mid_block.attentions.0."),
         (r"^up\.(\d+)\.res\.(\d+)\.", r"up_blocks.\1.resnets.\2."),
         (r"^up\.(\d+)\.attention\.(\d+)\.", r"up_blocks.\1.attentions.\2."),
         (r"^up\.(\d+)\.upsample\.1\.", r"up_blocks.\1.upsamplers.0.conv."),
         (r"^head_norm\.", "conv_norm_out."), (r"^head\.", "conv_out.")]
INSIDE = [(r"resnets\.(\d+)\.time\.", r"resnets.\1.time_emb_proj."), (r"resnets\.(\d+)\.skip\.", r"resnets.\1.conv_shortcut."),
          (r"attentions\.(\d+)\.norm\.", r"attentions.\1.group_norm."), (r"attentions\.(\d+)\.out\.", r"attentions.\1.to_out.0.")]
QKV = ("to_q", "to_k", "to_v")  # stacked in that order in ddpm's qkv convolution


def to_diffusers_key(key: str) -> str:
    """The UNet2DModel key of one of ddpm's UNet keys; an attention's qkv names its to_q (see QKV)."""
    for pattern, replacement in RULES:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key)
            break
    else:
        raise InputError(f"the UNet's weight {key} has no UNet2DModel counterpart")
    for pattern, replacement in INSIDE:
        key = re.sub(pattern, replacement, key)
    return re.sub(r"\.qkv\.", ".to_q.", key)


def to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ddpm's UNet weights as UNet2DModel's: qkv split into to_q, to_k, to_v, 1x1 convolutions of the
    attention as linear layers."""
    out = {}
    for key, value in state.items():
        theirs = to_diffusers_key(key)
        if ".attentions." in theirs and value.ndim == 4:  # a 1x1 convolution: a linear layer
            value = value[:, :, 0, 0]
        if ".to_q." in theirs:
            for name, part in zip(QKV, value.chunk(3)):
                out[theirs.replace(".to_q.", f".{name}.")] = part.contiguous()
        else:
            out[theirs] = value.contiguous()
    return out


def from_diffusers(theirs: dict[str, Tensor], ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """UNet2DModel's weights as ddpm's UNet's, shaped as `ours` (its state_dict), key for key."""
    out = {}
    for key, like in ours.items():
        name = to_diffusers_key(key)
        if ".to_q." in name:
            value = torch.cat([_weight(theirs, name.replace(".to_q.", f".{part}.")) for part in QKV])
        else:
            value = _weight(theirs, name)
        out[key] = value.reshape(like.shape).to(like.dtype)
    unused = sorted(set(theirs) - {to for key in ours for to in _names(to_diffusers_key(key))})
    if unused:
        raise InputError(f"the UNet2DModel's weight {unused[0]} (and {len(unused) - 1} more) has no place in ddpm's UNet")
    return out


def _names(key: str) -> list[str]:
    return [key.replace(".to_q.", f".{part}.") for part in QKV] if ".to_q." in key else [key]


def _weight(theirs: dict[str, Tensor], name: str) -> Tensor:
    if name not in theirs:
        raise InputError(f"the diffusers weights have no {name}; is the folder a UNet2DModel of this config?")
    return theirs[name]
