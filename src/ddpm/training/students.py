"""`ddpm distill`: a student run from a teacher run, trained by the same loop (loop.py) as any run.

The student's config is the teacher's with a `distill` section naming the teacher and its weights'
hash; what it learns is the method's task: progressive distillation (distill.py) or easy consistency
tuning (consistency.py).
"""

from __future__ import annotations

from ..storage.atomic import file_sha256
from ..config import Config
from ..errors import InputError
from ..factory import load_run
from .consistency import consistency_config
from .distill import student_config
from .loop import train


def distill(teacher: str, out: str, steps=None, from_steps=None, phase_steps=None, phase_minutes=None,
            guidance=None, checkpoint=None, overrides=None, progress: bool = True, method: str = "progressive"):
    """Distil the run `teacher` into a student run `out` that samples in `steps` steps (None: the
    `distill` section's default for the method).

    - method "progressive" (distill.py): DDIM steps halving from `from_steps`; each phase's budget is
      `phase_steps` or `phase_minutes`, by default an equal share of the teacher's own training time,
      so that distilling costs no more than training did;
    - method "ect" (consistency.py): consistency tuning, sampled in 1 to 8 steps; its budget is
      train.max_steps and/or train.max_minutes in `overrides`, by default consistency.share of the
      teacher's training time.

    `overrides` are train.* and consistency.* keys. Everything is checked before anything is written."""
    loaded = load_run(teacher, checkpoint, "ema")  # a diffusion run with an intact checkpoint, or one line
    config, overrides = loaded.config, dict(overrides or {})
    if guidance is not None and not config.model.num_classes:
        raise InputError(f"--guidance needs a class-conditional teacher; {teacher} was trained without classes")
    given = {"method": method, "steps": steps, "from_steps": from_steps, "phase_steps": phase_steps,
             "phase_minutes": phase_minutes, "guidance": guidance}
    wanted = Config().override({f"distill.{key}": value for key, value in given.items() if value is not None}).distill
    wanted.check_fields("distill")
    sha256, seconds = file_sha256(loaded.folder / "ema.safetensors"), loaded.meta.get("train_seconds", 0.0)
    if wanted.method == "ect":
        wanted.teacher = str(teacher)
        wanted.validate()
        student = consistency_config(config, str(teacher), loaded.meta["step"], sha256, wanted, seconds, overrides)
        return train(student.validate(), out, progress=progress)
    spent = sorted(key for key in overrides if key in ("train.max_steps", "train.max_minutes") or
                   key.startswith("consistency."))
    if spent:
        raise InputError(f"{spent[0]} is for --method ect; progressive distillation's budget is --phase-steps or "
                         f"--phase-minutes")
    if phase_steps is None and phase_minutes is None:
        if not seconds:
            raise InputError(f"{teacher} records no training time to share out; give --phase-steps or --phase-minutes")
        wanted.phase_minutes = round(seconds / 60 / max(1, wanted.phases), 3)
    student = student_config(config, str(teacher), loaded.meta["step"], sha256, wanted.student_steps,
                             wanted.from_steps, wanted.phase_steps, wanted.phase_minutes,
                             wanted.guidance).override(overrides)
    student.validate()
    return train(student, out, progress=progress)
