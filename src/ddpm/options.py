"""Typed settings without torch: a value checked against its field's type hint, and small option sets.

The config's sections and every pluggable idea's options (a sampler's eta, EDM's sigma_data) are
dataclasses whose fields are checked here against their annotations: a `Literal` is a set of
names, `Optional[X]` admits None, a list is checked item by item, and an int becomes a float where
a float is asked for, the only conversion that loses nothing.

    @dataclass(frozen=True)
    class DDIMOptions(Options):
        eta: float = option(0.0, "0 deterministic, 1 ancestral")

    DDIMOptions.build({"eta": "0.5"}, "sample.")    # DDIMOptions(eta=0.5), or an InputError
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import InputError


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_choice(name: str, value: object, choices: tuple[str, ...], what: str = "") -> None:
    check(isinstance(value, str) and value in choices,
          f"unknown {what or name} {value!r}; choose one of {', '.join(choices)}")


def hints(cls: type) -> dict[str, object]:
    """The type hints of a dataclass's fields (not its class variables), resolved."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls)}


def coerce(value: object, hint: object, name: str) -> object:
    """Check `value` against a field's type hint, converting where it is lossless (int to float).
    A Literal's name is checked as a string here; `check_choice` checks it is one of the names."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        hint = str
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), name)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise InputError(f"{name} must be a list, e.g. [1, 2, 3] (got {value!r})")
        return [coerce(item, args[0], name) for item in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise InputError(f"{name} must be of type {getattr(hint, '__name__', hint)} (got {value!r})")


def checked(value: object, hint: object, name: str, what: str = "") -> object:
    """`coerce`, and for a Literal also that the value is one of its names."""
    value = coerce(value, hint, name)
    if typing.get_origin(hint) is typing.Literal:
        check_choice(name, value, typing.get_args(hint), what)
    return value


def option(default: Any, help: str, what: str = "") -> Any:
    """A field of an option set: its default, a line of help (it becomes the command line's), and
    how a message names it (default: its own name)."""
    return dataclasses.field(default=default, metadata={"help": help, "what": what})


@dataclass(frozen=True)
class Options:
    """A small set of options with defaults: a sampler's, an objective's. Subclasses add fields
    made with `option` and may override `check` for ranges; `label` names the owner in messages."""

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
        """The options in `values` (others keep their defaults), each type-checked, then `check`ed.
        `prefix` ("sample.") names them in messages as the config does; without it, by `label`."""
        types = hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types:
                raise InputError(f"{cls.label or cls.__name__} takes no option {key!r}; its options are "
                                 f"{', '.join(cls.fields()) or 'none'}")
            named = f"{prefix}{key}" if prefix else f"{cls.label} {key}".strip()
            kwargs[key] = checked(value, types[key], named, "" if prefix else named)
        built = cls(**kwargs)
        built.check(prefix)
        return built

    def check(self, prefix: str = "") -> None:
        """Ranges; the types and names are already checked."""

    def named(self, name: str, prefix: str = "") -> str:
        """Option `name` as messages name it: by its config key ("sample.eta"), or by its owner ("DDIM's eta")."""
        return f"{prefix}{name}" if prefix else f"{self.label}'s {name}" if self.label else name

    def values(self) -> dict[str, object]:
        return dataclasses.asdict(self)
