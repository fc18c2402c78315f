"""Named configurations shipped with the package (src/ddpm/presets/NAME.yaml).

A preset is a config file with one extra top-level key, `description`: a line for `ddpm presets`.
`recipe.compose_config` layers a preset over the defaults and the measured recipe.
"""

from __future__ import annotations

from importlib import resources
from typing import Optional

import yaml

from .schema import Config
from ..errors import InputError


def _files() -> dict:
    folder = resources.files("ddpm") / "presets"
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
