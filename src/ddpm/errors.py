"""The errors the command line turns into one line on stderr and an exit status, without a traceback.

    0    done (also after Ctrl-C or SIGTERM, which checkpoint the step reached)
    2    bad input: a setting, a path, a hostile or damaged file; nothing was written
    3    training diverged (NaN or inf); the message names the intact checkpoint
    4    a write failed (a full disk, a file-size limit, a quota); the previous checkpoint is intact
    130  interrupted twice
"""


class InputError(ValueError):
    """Bad input from the user: a config value, a path, a data set name.

    The command line prints the message as a single line and exits with status 2. The message says
    what was wrong and what to do about it.
    """

    exit_code = 2


class CheckpointDamaged(InputError):
    """A checkpoint whose files changed after they were written (their sha256 does not match the one its
    meta.json recorded), or that cannot be read. Resuming falls back to an older intact checkpoint;
    a command asked for this one refuses it (exit status 2)."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the intact checkpoint.

    Not an InputError: the input was valid and training ran. `ddpm train` exits with status 3.
    """

    exit_code = 3


class WriteFailed(RuntimeError):
    """A write failed: the disk is full, a file-size limit or a quota was reached. What was being written
    is removed, the previous checkpoint and `latest` are as they were, and `ddpm train` exits with
    status 4; run the same command again once there is room."""

    exit_code = 4


FAILURES = (InputError, TrainingDiverged, WriteFailed)  # what the command line reports in one line


class DdpmWarning(UserWarning):
    """Something the library allows but doubts (a student asked for steps it was not distilled for).
    Library code warns through `warnings`; the command line prints each as one line, "ddpm: warning: ..."."""
