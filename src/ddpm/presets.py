"""Named configurations shipped with the package (src/ddpm/configs/NAME.yaml).

A preset is a config file with one extra top-level key, `description`: a line for `ddpm presets`.
"""

from __future__ import annotations

from importlib import resources
from typing import Optional

import yaml

from .config import Config, chosen_by_budget, defaults_for, sized_by_budget
from .errors import InputError


def _files() -> dict:
    folder = resources.files("ddpm") / "configs"
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """{name: one-line description} of every preset, sorted by name."""
    described = {}
    for name, entry in sorted(_files().items()):
        described[name] = (yaml.safe_load(entry.read_text()) or {}).get("description", "")
    return described


def load_preset(name: str, base: Optional[Config] = None) -> Config:
    files = _files()
    if name not in files:
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(sorted(files))} (see 'ddpm presets')")
    values = yaml.safe_load(files[name].read_text()) or {}
    values.pop("description", None)
    return Config.from_dict(values, base)


def compose_config(preset: Optional[str] = None, config_file: Optional[str] = None,
                   overrides: Optional[dict] = None) -> Config:
    """Settings in layers: the defaults < a preset < a config file < overrides ({"train.lr": 1e-3}).

    The defaults depend on the data the layers above choose: gray or color, and for color on the CPU
    the time budget (config.defaults_for). What the budget chose, the config says in `chosen`.
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
