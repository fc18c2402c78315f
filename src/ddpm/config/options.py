"""A pluggable idea's own small set of options: a sampler's eta, EDM's sigma_data.

An option is a `settings.setting` (its default, help and range declared once); `option` is the
same function, kept by its name for option sets written before.

    @dataclass(frozen=True)
    class DDIMOptions(Options):
        eta: float = option(0.0, "0 deterministic, 1 ancestral", ge=0, le=1)

    DDIMOptions.build({"eta": "0.5"}, "sample.")    # DDIMOptions(eta=0.5), or an InputError
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..errors import InputError
from .settings import check, check_choice, check_declared, checked, coerce, hints, setting

__all__ = ["Options", "option", "check", "check_choice", "checked", "coerce", "hints"]  # as before settings.py
option = setting


@dataclass(frozen=True)
class Options:
    """A small set of options with defaults: a sampler's, an objective's. Subclasses add fields
    made with `option` (ranges declared there) and may override `check` for rules between them;
    `label` names the owner in messages."""

    label: ClassVar[str] = ""

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def what(cls, name: str) -> str:
        """How a message names option `name`: 'the variance', or the label and name: 'DDIM's eta'."""
        return cls.fields()[name].metadata.get("what") or name

    @classmethod
    def build(cls, values: dict[str, object], prefix: str = "") -> "Options":
        """The options in `values` (others keep their defaults), each type-checked and within its
        declared range, then `check`ed. `prefix` ("sample.") names them in messages as the config
        does; without it, by `label`."""
        types = hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types:
                raise InputError(f"{cls.label or cls.__name__} takes no option {key!r}; its options are "
                                 f"{', '.join(cls.fields()) or 'none'}")
            named = f"{prefix}{key}" if prefix else f"{cls.label} {key}".strip()
            kwargs[key] = checked(value, types[key], named, "" if prefix else named)
        built = cls(**kwargs)
        for key, field in cls.fields().items():
            check_declared(field, getattr(built, key), built.named(key, prefix))
        built.check(prefix)
        return built

    def check(self, prefix: str = "") -> None:
        """Rules between options; each option's type and range are already checked."""

    def named(self, name: str, prefix: str = "") -> str:
        """Option `name` as messages name it: by its config key ("sample.eta"), or by its owner ("DDIM's eta")."""
        return f"{prefix}{name}" if prefix else f"{self.label}'s {name}" if self.label else name

    def values(self) -> dict[str, object]:
        return dataclasses.asdict(self)
