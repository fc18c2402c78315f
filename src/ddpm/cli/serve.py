"""`ddpm serve`: the interactive page of one or more runs (serve/server.py)."""

from __future__ import annotations

import argparse
import signal
import sys

from ..errors import InputError
from .ema import add_ema_flag, checkpoint_of


def add_commands(commands) -> None:
    parser = commands.add_parser("serve", help="a page to watch, steer and edit models live, in the browser",
                                 description="Serve a page on this machine that draws from the runs live: each step of "
                                             "the reverse process as it is computed, the forward process, inpainting "
                                             "by drawing a mask, img2img and interpolation. The runs are only read.")
    parser.add_argument("--run", action="append", required=True, metavar="RUN",
                        help="a run directory (repeat for several; the page has a chooser)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free one)")
    parser.add_argument("--device", default="auto")
    add_ema_flag(parser)
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.server import serve

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535 (got {args.port})")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ddpm serve: warning: listening on {args.host}, not only this machine: anyone who can reach it can "
              f"draw from these runs and upload images; there is no password", file=sys.stderr)

    def ready(server) -> None:
        print(f"ddpm serve: {server.url} (Ctrl-C stops)", flush=True)

    checkpoints = [checkpoint_of(path, None, args.ema) for path in args.run]
    previous = _stop_on(signal.SIGINT, signal.SIGTERM)
    try:
        serve(args.run, args.host, args.port, args.device, ready, checkpoints)
    except KeyboardInterrupt:
        print("ddpm serve: stopped", flush=True)
    except OSError as error:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error}); choose another "
                         f"--port, or 0 for any free one") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stop_on(*signals) -> dict:
    """Ctrl-C and kill stop the server cleanly, also where it was started with SIGINT ignored (a shell's
    background job, a test runner's worker), which Python would otherwise leave ignored."""
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, signal.default_int_handler)
    except ValueError:  # not the main thread: the caller's signals stay its own
        pass
    return previous
