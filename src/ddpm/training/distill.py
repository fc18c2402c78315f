"""`ddpm distill`: a student run from a teacher run, trained by the same loop (loop.py) as any run.

A student method is a spec of ddpm.registry.STUDENTS, whose module holds all of it: progressive
distillation (progressive.py), easy consistency tuning (consistency.py). What every method shares
lives here: the student's config as its teacher's with a `distill` section naming the teacher and
its weights' hash (`Source`, `student_of`), the task that starts from the teacher's weights
(`StudentTask`), and `distill`, which checks everything before it writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..config import OWN, Config
from ..config.students import DistillConfig
from ..errors import InputError
from ..factory import load_run, own_autoencoder_dir
from ..registry import DEFAULT_STUDENT, FEW_STEP_STUDENT, STUDENTS, resolve
from ..storage.atomic import file_sha256
from ..storage.checkpoint import RunDir
from .loop import train
from .tasks import DiffusionTask


@dataclass(frozen=True)
class Source:
    """The teacher as a student records it: its directory, the checkpoint's step, the hash of its EMA
    weights, and how long it trained (what a method's default budget is a share of)."""

    path: str
    step: int
    sha256: str
    seconds: float


def distill(teacher: str, out: str, steps=None, from_steps=None, phase_steps=None, phase_minutes=None,
            guidance=None, checkpoint=None, overrides=None, progress: bool = True, method: str | None = None,
            init: str | None = None):
    """Distil the run `teacher` into a student run `out` by `method` (a name of registry.STUDENTS; None: the
    one that measured best at `steps`, `method_for`), sampling in `steps` steps (None: the
    method's own default).

    `from_steps`, `phase_steps` and `phase_minutes` are progressive distillation's (its halvings and
    each one's budget, by default an equal share of the teacher's training time); other methods take
    their budget from train.max_steps and/or train.max_minutes in `overrides`, with the keys of their
    own section (consistency.*). An adversarial student may start from the student run `init` instead
    of the teacher. Everything is checked before anything is written."""
    loaded = load_run(teacher, checkpoint, "ema")  # a diffusion run with an intact checkpoint, or one line
    config, overrides = loaded.config, dict(overrides or {})
    if guidance is not None and not config.model.num_classes:
        raise InputError(f"--guidance needs a class-conditional teacher; {teacher} was trained without classes")
    given = {"method": method, "steps": steps, "from_steps": from_steps, "phase_steps": phase_steps,
             "phase_minutes": phase_minutes, "guidance": guidance, "init": init}
    given["method"] = method_for(given)
    wanted = Config().override({f"distill.{key}": value for key, value in given.items() if value is not None}).distill
    wanted.check_fields("distill")
    spec = STUDENTS.get(wanted.method)
    foreign = sorted(key for key in overrides for other in STUDENTS if other.section and other is not spec
                     and key.startswith(other.section + "."))
    if foreign:
        name = foreign[0].split(".", 1)[1]
        takes = spec.section and hasattr(getattr(Config(), spec.section), name)  # the same setting, its own section
        own = f" (its own: --set {spec.section}.{name}=...)" if takes else ""
        raise InputError(f"{foreign[0]} is a setting of another student method; --method {wanted.method} does not take it{own}")
    source = Source(str(teacher), loaded.meta["step"], file_sha256(loaded.folder / "ema.safetensors"),
                    loaded.meta.get("train_seconds", 0.0))
    if init is not None:  # a student of the same network, hashed as the teacher is
        start = load_run(init, None, "ema")
        if start.config.student is None or replace(start.config.model, dropout=0.0) != replace(config.model, dropout=0.0):
            raise InputError(f"--init takes a student run of the teacher's network (ddpm distill); {init} is "
                             f"{'a run that is no student' if start.config.student is None else 'of another network'}")
        wanted.init_sha256 = file_sha256(start.folder / "ema.safetensors")
    student = resolve(spec.configure)(config, source, wanted, overrides)
    return train(student.validate(), out, progress=progress)


def method_for(settings: dict) -> str:
    """The student method of `distill`'s settings: their `method`, or else the one that measured best at
    their `steps` (docs/samplers.md). At 1 and 2 steps the adversarial student: at a quarter of the
    teacher's time its 2 steps were 1.94x the teacher's FID on the digits and 1.45x on emoji, consistency
    tuning's 3.3x and 1.80x, progressive distillation's 3.8x and 1.54x at three times the time. At 4 steps
    or more, without `steps`, or with one of progressive distillation's own options set (from_steps,
    phase_steps, phase_minutes): progressive distillation (1.36x on emoji at 4 steps)."""
    own = any(settings.get(key) is not None for key in ("from_steps", "phase_steps", "phase_minutes"))
    steps = settings.get("steps")
    few = steps is not None and steps <= 2 and not own
    return settings.get("method") or (FEW_STEP_STUDENT if few else DEFAULT_STUDENT)


def student_of(teacher: Config, source: Source, wanted: DistillConfig, settings: dict) -> Config:
    """The teacher's config as a student's: its network, process and data; a distill section naming
    the teacher and `wanted`'s choices; the autoencoder it decodes with; then the method's `settings`."""
    config = teacher.override({
        "distill.teacher": source.path, "distill.teacher_step": source.step, "distill.teacher_sha256": source.sha256,
        **{f"distill.{key}": value for key, value in wanted.values().items() if not key.startswith("teacher")},
        "distill.teacher_clip": teacher.sample.clip_denoised, "train.posthoc_ema": [],
        "diffusion.loss_weighting": "fixed", **settings})
    if teacher.latent.autoencoder == OWN:  # the student decodes with the one in the teacher's directory
        config.latent.autoencoder = str(own_autoencoder_dir(Path(source.path)))
    config.distill.check_fields("distill")  # the rules every method shares, before a method sizes its budget
    config.distill.validate()
    return config


def tuning_budget(teacher: Config, source: Source, overrides: dict, lr_share: float, share: float) -> dict:
    """A tuned student's learning rate and budget (ect, adversarial): --lr, or `lr_share` of the teacher's;
    --max-steps and/or --max-minutes, or `share` of the teacher's recorded training time."""
    budget = {key: overrides.get(key) for key in ("train.max_steps", "train.max_minutes")}
    if "train.lr" not in overrides:
        budget["train.lr"] = teacher.train.lr * lr_share
    if budget["train.max_steps"] is None and budget["train.max_minutes"] is None:
        if not source.seconds:
            raise InputError(f"{source.path} records no training time to take a share of; give --max-steps or "
                             f"--max-minutes")
        budget["train.max_minutes"] = round(source.seconds / 60 * share, 3)
    return budget


def start_from_teacher(network: nn.Module, d: DistillConfig, init: bool = False) -> None:
    """Load into `network` the EMA weights of the teacher that the student's `distill` section names (with
    `init`, of its --init student, if it has one), refusing any other than those it hashed when the
    student started."""
    if init and d.init is not None:
        loaded, wanted, name = load_run(d.init, None, "ema"), d.init_sha256, f"the --init student {d.init}"
    else:
        loaded = load_run(d.teacher, RunDir(d.teacher).checkpoints / f"step_{d.teacher_step:06d}", "ema")
        wanted, name = d.teacher_sha256, f"the teacher {d.teacher} at step {d.teacher_step}"
    if file_sha256(loaded.folder / "ema.safetensors") != wanted:
        raise InputError(f"{name}'s weights are not those this distillation started from; start it again with "
                         f"ddpm distill")
    network.load_state_dict(loaded.network.state_dict())


class StudentTask(DiffusionTask):
    """A diffusion task whose network starts as its teacher run's EMA weights, those it hashed."""

    def __init__(self, config: Config, data, device: torch.device, resume: bool, progress: bool,
                 run: "Path | None" = None):
        super().__init__(config, data, device, resume, progress, run)
        if not resume:  # from the teacher, or from the student --init names
            start_from_teacher(self.network, self.config.distill, init=True)
