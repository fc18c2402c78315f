"""What the commands share: the parser class, flags made from config fields, sampling flags."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Optional, Sequence

from ..config import Config
from ..errors import InputError
from .ema import add_ema_flag
from ..config.names import SPACINGS
from ..config.recipe import notes as recipe_notes
from ..config.settings import declared, flags_of, hints
from ..registry import SAMPLERS, option_fields, owners


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error of `ddpm`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def add_config_flags(parser: argparse.ArgumentParser, schema: type = Config, sections: Sequence[str] = (),
                     keys: Sequence[str] = ()) -> None:
    """A flag for every field declared with a flag (settings.setting) in `sections` of a `schema` config
    (a diffusion run's, or an autoencoder run's), and for each of `keys` ("train.lr"): its spelling,
    help, type, choices and default come from the declaration, and what the recipe changes for it
    from recipe.notes(). The flag's value is None unless given, so it overrides only when used."""
    default = schema()
    notes = recipe_notes() if schema is Config else {}
    chosen = [f"{name}.{key}" for name in sections for key in flags_of(type(getattr(default, name)))] + list(keys)
    for dotted in chosen:
        section_name, name = dotted.split(".")
        section = getattr(default, section_name)
        field = declared(type(section))[name]
        meta, hint = field.metadata, hints(type(section))[name]
        if typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        flag = meta["flag"] if isinstance(meta["flag"], str) else "--" + name.replace("_", "-")
        value = getattr(section, name)
        shown = f", default {value}" if value is not None else f"; null {meta['null']}" if meta["null"] else ""
        names = meta["names"]  # a registry: its names when the parser is built, plugins' too
        closed = names is not None and not any(getattr(spec, "prefix", False) for spec in names)
        help = meta["help"] + (f" (one of {', '.join(names.names())})" if names is not None and not closed else "")
        help += f" (config {dotted}{shown}{'; ' + notes[dotted] if dotted in notes else ''})"
        options = {"dest": dotted, "default": None, "help": help.replace("%", "%%")}  # argparse formats help with %
        if hint is bool:
            parser.add_argument(flag, action="store_true", **options)
            continue
        if closed:
            options["choices"] = names.names()
        elif meta["choices"] is not None:
            options.update(choices=meta["choices"], type=type(meta["choices"][0]))
        elif typing.get_origin(hint) is typing.Literal:
            options["choices"] = typing.get_args(hint)
        else:
            options["type"] = str if typing.get_origin(hint) is list else hint  # a list is read as YAML: [64,128]
            options["metavar"] = meta["metavar"] or name.upper()
        parser.add_argument(flag, **options)


def config_overrides(args: argparse.Namespace) -> dict:
    """{"section.key": value} for every config flag given, then every --set."""
    overrides = {key: value for key, value in vars(args).items() if "." in key and value is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r} must look like section.key=value, e.g. --set train.ema_decay=0.9995")
        overrides[key.strip()] = value
    return overrides


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --spacing, and a flag for each option of each registered sampler (--eta,
    --variance, --churn, ...), read from ddpm.registry.SAMPLERS; each left out is the run's own."""
    parser.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS.names())} (default: the run's)")
    parser.add_argument("--steps", type=int, help="timesteps to visit (default: the run's); heun and edm evaluate "
                                                  "the network 2 x steps - 1 times")
    parser.add_argument("--spacing", choices=SPACINGS, help="how the timesteps are chosen (default: the run's, or "
                                                            "the sampler's own)")
    for name, (options, field) in option_fields(SAMPLERS).items():
        hint = hints(options)[name]
        kind = {"choices": typing.get_args(hint)} if typing.get_origin(hint) is typing.Literal else {"type": hint}
        takers = ", ".join(spec.name for spec in owners(SAMPLERS, name))
        parser.add_argument("--" + name.replace("_", "-"), dest=name, **kind,
                            help=f"{field.metadata.get('help', name)} ({takers} only; default: the run's, "
                                 f"else {field.default})")


def sampler_option_names() -> list[str]:
    return list(option_fields(SAMPLERS))


def add_sampling_args(parser: argparse.ArgumentParser, n: int) -> None:
    """Flags for drawing samples from a run; each one left out takes the run's own `sample` config."""
    parser.add_argument("--n", type=int, default=n, help=f"number of samples (default {n})")
    add_sampler_args(parser)
    parser.add_argument("--class", dest="classes", metavar="CLASSES",
                        help="class-conditional runs: a class, a list (1,4,7) or all (default all, cycled)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance weight: 0 unconditional, 1 conditional, >1 guided (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    parser.add_argument("--batch-size", type=int, help="images per sampling batch")
    parser.add_argument("--checkpoint", help="a checkpoint folder of the run (default: the newest)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    add_ema_flag(parser)
    parser.add_argument("--device", default="auto")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The pipeline's keyword arguments for the sampling flags that were given."""
    given = {name: getattr(args, name, None) for name in ("sampler", "steps", "spacing", "guidance", "batch_size",
                                                          *sampler_option_names())}
    return {name: value for name, value in given.items() if value is not None}


def parse_classes(text: Optional[str]):
    """--class: "3", "1,4,7" or "all"; None when not given (the pipeline checks them against the run)."""
    if text is None or text == "all":
        return text
    try:
        return [int(c) for c in text.split(",") if c.strip()] or None
    except ValueError:
        raise InputError(f"--class must be 'all' or class numbers, e.g. 3 or 1,4,7 (got {text!r})") from None


def parse_ints(text: str, flag: str, example: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{flag} must be comma-separated integers, e.g. {example} (got {text!r})")
    return values


def picture_out(out: Optional[str], default: Path) -> Path:
    path = Path(out) if out else default
    if path.suffix.lower() != ".png":
        raise InputError(f"--out must name a .png file (got {path})")
    return path


def positive(value: int, flag: str, least: int = 1) -> int:
    if value < least:
        raise InputError(f"{flag} must be >= {least} (got {value})")
    return value


def split_names(text: str) -> Sequence[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
