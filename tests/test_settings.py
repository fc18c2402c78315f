"""Settings declared once: one `setting(...)` gives a field its check, its flag, its help and its resume rule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import pytest

from ddpm import Config, InputError
from ddpm.cli.common import Parser, add_config_flags, config_overrides
from ddpm.config.settings import Section, Sections, flags_of, setting


@dataclass
class Extra(Section):
    min_lr: float = setting(0.0, "the learning rate's floor", ge=0, flag=True, resumable=True)
    widths: list[int] = setting([8, 16], "some widths", ge=1, length=1)
    cap: Optional[int] = setting(None, "a cap", ge=1, null="for none", flag="--the-cap", metavar="N")


@dataclass
class Run(Sections):
    train: Extra = field(default_factory=Extra)


def test_one_declaration_gives_the_check_the_flag_its_help_and_the_resume_rule(capsys):
    parser = Parser(prog="ddpm test")
    add_config_flags(parser, Run, ("train",))
    config = Run().override(config_overrides(parser.parse_args(["--min-lr", "1e-5", "--the-cap", "3"]))).validate()
    assert (config.train.min_lr, config.train.cap) == (1e-5, 3)
    assert Run().override(config_overrides(parser.parse_args([]))) == Run()  # a flag not given overrides nothing
    helps = parser.format_help().replace("\n", " ")
    assert "the learning rate's floor (config train.min_lr, default 0.0)" in " ".join(helps.split())
    assert "a cap (config train.cap; null for none)" in " ".join(helps.split())
    assert Run.resumable() == ("train.min_lr",)
    assert list(flags_of(Extra)) == ["min_lr", "cap"]


@pytest.mark.parametrize("overrides, message", [
    ({"train.min_lr": -1}, r"train.min_lr must be >= 0 \(got -1.0\)"),
    ({"train.widths": "[8, 0]"}, r"train.widths must all be >= 1 \(got \[8, 0\]\)"),
    ({"train.widths": "[]"}, r"train.widths needs at least 1 item \(got \[\]\)"),
    ({"train.cap": 0}, r"train.cap must be >= 1, or null for none \(got 0\)"),
    ({"train.min_lr": "fast"}, r"train.min_lr must be of type float"),
])
def test_a_declared_range_is_checked_with_one_line(overrides, message):
    with pytest.raises(InputError, match=message):
        Run().override(overrides).validate()


@pytest.mark.parametrize("key, value, message", [
    ("model.channels", "[16, 0, 64]", r"model.channels must all be >= 1"),
    ("model.dropout", 1.0, r"model.dropout must be in \[0, 1\)"),
    ("train.betas", "[0.9]", r"train.betas needs 2 items"),
    ("train.max_steps", 0, r"train.max_steps must be >= 1, or null for no step cap"),
    ("diffusion.log_snr_shift", ".inf", r"diffusion.log_snr_shift must be a finite number"),
    ("diffusion.sigma_data", -1, r"diffusion.sigma_data must be > 0"),
    ("sample.eta", 1.5, r"sample.eta must be in \[0, 1\]"),
    ("data.name", "nope", r"unknown data set 'nope'"),
])
def test_the_schemas_declarations_are_checked(key, value, message):
    with pytest.raises(InputError, match=message):
        Config().override({key: value}).validate()


def test_every_field_of_every_section_is_declared_with_help():
    for config in (Config(),):
        for name in config.section_names():
            section = getattr(config, name)
            missing = [f.name for f in dataclasses.fields(section) if f.name != "options" and "help" not in f.metadata]
            assert not missing, f"{name}: {missing}"


def test_a_config_yaml_written_by_0_2_0_still_loads_as_the_same_run(monkeypatch):
    """tests/data/config-0.2.0.yaml was written by the code before settings were declared once (the
    10-minute emoji default at 171 GFLOP/s, with a DDIM eta): it loads, and it is the run today's
    code composes from the same command, but for the 10^9 that stood for "no step cap"; a requeued
    job's command resumes it."""
    from pathlib import Path

    from ddpm.config.recipe import compose_config, requeued

    old = Config.from_yaml(Path(__file__).parent / "data" / "config-0.2.0.yaml").validate()
    monkeypatch.setenv("DDPM_CPU_GFLOPS", "171")
    today = compose_config(overrides={"data.name": "emoji", "train.device": "cpu", "train.max_minutes": 10,
                                      "sample.eta": 0.3, "latent.autoencoder": None}).validate()
    # two representations changed: 10^9 steps is now null (no cap), and distill.steps 4 is null (each method's own)
    assert old.train.max_steps == 10**9 and old.distill.steps == 4 == today.distill.student_steps
    assert old.override({"train.max_steps": None, "distill.steps": None}) == today
    assert old.sample.options_for("ddim").eta == 0.3 and old.model.channels == [16, 32, 64]
    assert requeued(old, today, "run") == today.override({"distill.steps": 4})  # it keeps its own


@pytest.mark.parametrize("command", ["train", "train-autoencoder", "distill", "sample", "eval", "sweep", "edit inpaint"])
def test_every_commands_help_answers(command, capsys):
    from ddpm.cli import main

    assert main([*command.split(), "--help"]) == 0 and "--" in capsys.readouterr().out
