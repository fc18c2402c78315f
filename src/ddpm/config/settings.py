"""Settings declared once: each field says its default, its help, its range and its flag, in one place.

    @dataclass
    class TrainConfig(Section):
        lr: float = setting(1.5e-3, "peak learning rate", gt=0, flag=True)
        max_minutes: Optional[float] = setting(None, "stop after this many minutes", gt=0, flag=True,
                                               resumable=True)

Everything else reads the declaration: the type comes from the annotation (a `Literal` is a set of
names, `Optional[X]` admits None, a list is checked item by item, an int becomes a float where a
float is asked for, the only conversion that loses nothing); the range from `ge`/`gt`/`le`/`lt`
(each item of a list); the names of a registry from `names`; the command line's flag and its help
from `flag` and `help` (cli/common.add_config_flags); the resume rule from `resumable`. A section's
`validate()` keeps only the rules between fields.

`Sections` is what a whole config shares: its sections, validation, the YAML round trip and dotted
overrides ("train.lr=1e-3"). No torch here, so reading a config is cheap.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import InputError


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_choice(name: str, value: object, choices: tuple[str, ...], what: str = "") -> None:
    check(isinstance(value, str) and value in choices,
          f"unknown {what or name} {value!r}; choose one of {', '.join(choices)}")


def setting(default: Any, help: str, *, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None, finite: bool = False, length: Optional[int] = None,
            null: str = "", names=None, flag: typing.Union[bool, str] = False, metavar: Optional[str] = None,
            choices: Optional[tuple] = None, resumable: bool = False, what: str = "") -> Any:
    """A field declared once: its default, a line of help, and what checks and shows it.

    ge/gt/le/lt bound a number (each item of a list), `finite` refuses inf and nan, `length` is a
    list's length (1: at least one item; give it as `length=(2, 2)` for exactly two); `null` says
    what None means ("for no cap"); `names` is a registry whose names the value must be. `flag`
    makes it a command-line flag (True: --its-name, or the flag's own spelling), with `metavar` and
    `choices`; `resumable`: `--resume` may change it; `what`: how a message names it."""
    rule = {"ge": ge, "gt": gt, "le": le, "lt": lt, "finite": finite, "length": length}
    metadata = {"help": help, "rule": rule, "null": null, "names": names, "flag": flag, "metavar": metavar,
                "choices": choices, "resumable": resumable, "what": what}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def hints(cls: type) -> dict[str, object]:
    """The type hints of a dataclass's fields (not its class variables), resolved."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls)}


def declared(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a dataclass made with `setting` (or `option`), by name."""
    return {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}


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


def _bounds(rule: dict) -> str:
    """A rule's range as a message says it: '>= 1', '> 0', 'in [0, 1)'."""
    low = ("[", rule["ge"]) if rule["ge"] is not None else ("(", rule["gt"]) if rule["gt"] is not None else None
    high = ("]", rule["le"]) if rule["le"] is not None else (")", rule["lt"]) if rule["lt"] is not None else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}" if high else ""


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"  # a seed's 2147483647, not 2.14748e+09


def _within(number: object, rule: dict) -> bool:
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return True  # a name or a flag: its type was checked
    return ((rule["ge"] is None or number >= rule["ge"]) and (rule["gt"] is None or number > rule["gt"])
            and (rule["le"] is None or number <= rule["le"]) and (rule["lt"] is None or number < rule["lt"])
            and (not rule["finite"] or math.isfinite(number)))


def check_range(value: float, name: str, *, ge: Optional[float] = None, gt: Optional[float] = None,
                le: Optional[float] = None, lt: Optional[float] = None) -> None:
    """A number within bounds known only when it is used (a run's T, its classes), refused in the
    words a declared field's range uses: "steps must be in [1, 100] (got 0)"."""
    rule = {"ge": ge, "gt": gt, "le": le, "lt": lt, "finite": False, "length": None}
    if not _within(value, rule):
        raise InputError(f"{name} must be {_bounds(rule)} (got {value})")


def check_declared(field: dataclasses.Field, value: object, name: str) -> None:
    """`value` of a declared field within its range; for `names`, a name of its registry; for `choices`,
    one of them."""
    meta = field.metadata
    rule = meta.get("rule")
    if value is None or rule is None:
        return
    if meta.get("names") is not None:
        meta["names"].get(value, meta.get("what") or name)
    if meta.get("choices") is not None:
        check(value in meta["choices"], f"{name} must be one of {', '.join(map(str, meta['choices']))} (got {value})")
    items = value if isinstance(value, list) else [value]
    length = rule["length"]
    if isinstance(value, list) and length is not None:
        least, most = length if isinstance(length, tuple) else (length, None)
        wanted = f"{least}" if least == most else f"at least {least}"
        check(least <= len(value) and (most is None or len(value) <= most),
              f"{name} needs {wanted} item{'s' if least != 1 else ''} (got {value})")
    bounds = _bounds(rule)
    if not all(_within(item, rule) for item in items):
        what = (f"must be {bounds}" if bounds else "must be") + (" and finite" if rule["finite"] and bounds else
                                                                   " a finite number" if rule["finite"] else "")
        if isinstance(value, list):
            what = what.replace("must be", "must all be", 1)
        raise InputError(f"{name} {what}" + (f", or null {meta['null']}" if meta.get("null") else "") + f" (got {value})")


def flags_of(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of `cls` that are command-line flags, by name."""
    return {name: f for name, f in declared(cls).items() if f.metadata.get("flag")}


# ---- a whole config ---------------------------------------------------------------------------


class Section:
    """A config section: a dataclass of `setting`s. `validate` holds the rules between fields."""

    def check_fields(self, name: str) -> None:
        """Every declared field's type (converted where lossless), names and range; a message names a
        field `name.key`, or `key` alone where `name` is empty (a request's fields, serve/tasks.py)."""
        types_ = hints(type(self))
        for key, field in declared(type(self)).items():
            where = f"{name}.{key}" if name else key
            value = checked(getattr(self, key), types_[key], where, field.metadata.get("what", ""))
            setattr(self, key, value)
            check_declared(field, value, where)

    def validate(self) -> None:
        """The rules between this section's fields; each field's own are in its declaration."""

    def keys(self) -> dict[str, object]:
        """The keys a config file may set here, with their types (None: checked on assignment)."""
        return {k: v for k, v in hints(type(self)).items() if k != "options"}

    def assign(self, key: str, value: object, name: str) -> None:
        """Set `key` from a config file or an override, its type checked now and its range at validation."""
        keys = self.keys()
        if key not in keys:
            raise InputError(f"unknown config key {name}.{key}; {name} has {', '.join(keys)}")
        setattr(self, key, coerce(value, keys[key], f"{name}.{key}"))

    def values(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Sections:
    """What every config shares: typed sections, validation, YAML round trip and dotted overrides."""

    # settings that the defaults chose for a reason beyond the data's channels ({"model.channels":
    # why}): recipe.compose_config says why, config.yaml keeps it as comments above the settings
    chosen: typing.ClassVar[typing.Mapping[str, str]] = types.MappingProxyType({})

    def validate(self):
        for section_name in self.section_names():
            section = getattr(self, section_name)
            section.check_fields(section_name)
            section.validate()
        return self

    @classmethod
    def section_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        """The keys that `--resume` may change: the budget, logging, how the same computation runs."""
        default = cls()
        return tuple(f"{name}.{key}" for name in cls.section_names()
                     for key, field in declared(type(getattr(default, name))).items() if field.metadata.get("resumable"))

    def section(self, name: str) -> Section:
        sections = self.section_names()
        if name not in sections:
            raise InputError(f"unknown config section {name!r}; the sections are {', '.join(sections)}")
        return getattr(self, name)

    def resumed(self, overrides: dict[str, object], run: str):
        """This run's config with `overrides` applied for `--resume`: only the resumable keys may change."""
        fixed = sorted(key for key in overrides if key not in self.resumable())
        if fixed:
            raise InputError(f"--resume continues {run} with its own config; it cannot change {', '.join(fixed)} "
                             f"(only the budget, e.g. --max-steps or --max-minutes)")
        return self.override(overrides)

    def flat(self) -> dict[str, object]:
        """{"section.key": value} of every key."""
        return {f"{section}.{key}": value for section, keys in self.to_dict().items() for key, value in keys.items()}

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain nested dicts, as config.yaml holds them: an open section's options are its keys."""
        values = {}
        for section_name in self.section_names():
            section = dataclasses.asdict(getattr(self, section_name))
            options = section.pop("options", {})
            values[section_name] = {**section, **options}
        return values

    @classmethod
    def from_dict(cls, values: dict, base=None):
        """Build a config from nested dicts (as read from YAML), over `base` or the defaults."""
        config = copy.deepcopy(base) if base is not None else cls()
        if not isinstance(values, dict):
            raise InputError("a config file must hold a mapping of sections (model, data, train, ...)")
        for section_name, section_values in values.items():
            section = config.section(section_name)
            if not isinstance(section_values, dict):
                raise InputError(f"config section {section_name!r} must be a mapping of keys to values")
            for key, value in section_values.items():
                section.assign(key, value, section_name)
        return config

    def to_yaml(self, path: Path) -> None:
        from ..storage.atomic import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        text = "".join(f"# {key}: {why}\n" for key, why in self.chosen.items()) + text
        atomic_write(Path(path), lambda tmp: tmp.write_text(text))

    @classmethod
    def from_yaml(cls, path: Path, base=None):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            first_line = str(error).splitlines()[0]
            raise InputError(f"config file {path} is not valid YAML: {first_line}") from None
        return cls.from_dict(values, base)

    def override(self, dotted: dict[str, object]):
        """Apply {"train.lr": 1e-3, ...}; string values are parsed as YAML scalars or lists."""
        config = copy.deepcopy(self)
        for key, value in dotted.items():
            section_name, _, name = key.partition(".")
            if not name:
                raise InputError(f"override {key!r} must look like section.key=value, e.g. train.lr=1e-3")
            if isinstance(value, str):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise InputError(f"cannot parse the value of override {key}={value!r}") from None
            config.section(section_name).assign(name, value, section_name)
        return config
