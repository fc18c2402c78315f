"""`ddpm show`, `ddpm report` and `ddpm presets`: pictures of a run, its one-page report, the presets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import add_sampler_args, parse_ints, picture_out, positive, sampling_kwargs
from .ema import add_ema_flag, checkpoint_of


def add_commands(commands) -> None:
    show = commands.add_parser(
        "show", help="pictures of each stage: forward, trajectory, progression, edits",
        description="forward: a data image noised at chosen t under each schedule, and alpha_bar_t and log SNR; "
                    "trajectory: x_t and the predicted x0 along the reverse process (PNG and animated GIF); "
                    "progression: samples from the same noise at each checkpoint of a run; "
                    "edits: images of the run's data set inpainted, edited, inverted and interpolated.")
    show.add_argument("picture", choices=("forward", "trajectory", "progression", "edits"))
    show.add_argument("--out", help="the PNG to write (default forward.png, or RUN/trajectory.png and .gif, "
                                    "RUN/progression.png, RUN/edits.png)")
    show.add_argument("--data", default="mnist5k", help="forward: the data set (default mnist5k)")
    show.add_argument("--data-root", default="data")
    show.add_argument("--index", type=int, default=0, help="forward: which image of the data set (default 0)")
    show.add_argument("--t", default="0,100,250,500,750,999", help="forward: timesteps (default 0,100,250,500,750,999)")
    show.add_argument("--timesteps", type=int, default=1000, help="forward: T (default 1000)")
    show.add_argument("--run", help="trajectory, progression: the run directory")
    show.add_argument("--n", type=int, help="samples (default 4 for trajectory, 8 for progression)")
    show.add_argument("--frames", type=int, default=10, help="trajectory: steps shown and GIF frames (default 10)")
    add_sampler_args(show)
    add_ema_flag(show)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--device", default="auto")
    show.set_defaults(command=run_show)

    report = commands.add_parser("report", help="one self-contained HTML page for a run",
                                 description="Gather a run's config, loss curve, sample grids, progression, trajectory, "
                                             "FID history and sampler sweep (those that exist) into one HTML file with "
                                             "the images embedded.")
    report.add_argument("--run", required=True)
    report.add_argument("--out", help="the HTML file (default RUN/report.html)")
    report.set_defaults(command=run_report)

    presets = commands.add_parser("presets", help="list the named configurations")
    presets.set_defaults(command=run_presets)


def run_show(args: argparse.Namespace) -> int:
    from ..pictures import stages
    from ..storage.files import save_gif, save_picture

    if args.picture == "forward":
        from ..data.datasets import load_data

        timesteps = parse_ints(args.t, "--t", "0,100,250,500,750,999")
        picture = stages.forward_picture(load_data(args.data, args.data_root), args.index, timesteps, args.timesteps,
                                         args.seed)
        out = save_picture(picture, picture_out(args.out, Path("forward.png")))
        print(f"forward process written to {out}")
        return 0

    from ..pipeline import Pipeline
    from ..storage.checkpoint import RunDir

    if not args.run:
        raise InputError(f"ddpm show {args.picture} needs --run RUN")
    n = positive(args.n if args.n is not None else (4 if args.picture == "trajectory" else 8), "--n")
    out = picture_out(args.out, RunDir(args.run).picture_path(args.picture))
    pipe = Pipeline.from_run(args.run, checkpoint_of(args.run, None, args.ema), device=args.device)
    if args.picture == "edits":
        from ..data.datasets import load_data

        data = load_data(pipe.config.data)
        print(f"edits written to {save_picture(stages.edits_picture(pipe, data, args.seed, args.steps), out)}")
        return 0
    options = sampling_kwargs(args)
    if args.picture == "trajectory":
        picture, frames = stages.trajectory(pipe, n, args.frames, args.seed, **options)
        save_picture(picture, out)
        gif = save_gif(frames, out.with_suffix(".gif"))
        print(f"trajectory written to {out} and {gif} ({len(frames)} frames)")
    else:
        save_picture(stages.progression(pipe, Path(args.run), n, args.seed, **options), out)
        print(f"progression written to {out}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..pictures.report import write_report

    out, sections = write_report(Path(args.run), Path(args.out) if args.out else None)
    print(f"report written to {out} (sections: {', '.join(sections)})")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from ..config.presets import list_presets

    presets = list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0
