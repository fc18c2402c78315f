"""The `ddpm` command line: parse, then call the same Python API a user would.

One module per group of commands (train; sample, eval and sweep; show, report and presets), each
adding its subcommands to the parser. Nothing here knows a sampling default or a validation rule:
the config, the pipeline and the run directory do. Importing this package does not import torch,
so `ddpm --help` and `ddpm presets` answer at once.

Exit status (errors.py): 0 done; 2 bad input (one line on stderr, nothing written); 3 training
diverged (the message names the intact checkpoint); 4 a write failed (a full disk; the previous
checkpoint is intact); 130 interrupted.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Optional, Sequence

from ..runtime import signals
from ..errors import FAILURES, DdpmWarning

if TYPE_CHECKING:
    from .common import Parser

# The commands that train: they take SIGINT and SIGTERM over before anything else is imported, so a
# signal at any moment of their start is a stop request (runtime/signals.py).
TRAINING = ("train", "train-autoencoder", "distill")


def parser() -> Parser:
    from .. import __version__
    from . import edit, ema, interop, sample, serve, show, train
    from .common import Parser

    root = Parser(prog="ddpm", description="Train and sample denoising diffusion models.")
    root.add_argument("--version", action="version", version=f"ddpm {__version__}")
    commands = root.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for module in (train, sample, ema, edit, show, interop, serve):
        module.add_commands(commands)
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    caught = signals.catch() if words[:1] and words[0] in TRAINING else {}
    with warnings.catch_warnings():  # the library's doubts, as one line each on stderr
        warnings.simplefilter("always", DdpmWarning)
        shown = warnings.showwarning

        def show(message, category, *where, **more) -> None:
            if issubclass(category, DdpmWarning):
                print(f"ddpm: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, *where, **more)

        warnings.showwarning = show
        return _run(argv, caught)


def _run(argv: Optional[Sequence[str]], caught: dict) -> int:
    """Parse and run one command: each failure errors.py names becomes one line and its exit status."""
    finished = False
    try:
        try:
            args = parser().parse_args(argv)  # the flags read the registries, which load the plugins
        except SystemExit as exit:  # --help, or a usage error already printed on one line
            return exit.code
        code = args.command(args)
        finished = code == 0
        return code
    except FAILURES as error:
        print(f"ddpm: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130
    finally:
        signals.release(caught)
        if "torch" in sys.modules:  # under torchrun
            from ..runtime.distributed import close_distributed

            close_distributed(finished)
