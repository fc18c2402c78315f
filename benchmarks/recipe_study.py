"""The recipe study for color data: every lever measured by the same script, one run per point.

Each point is `benchmarks/cpu_budget.py` (train, sample with the run's own sampler, FID and KID
against the whole folder, the matmul rate, the sampling time) with one change from the color
default, on the emoji groups it is chosen on (`benchmarks/emoji_groups.py`: A) or confirmed on (B).
Screening points compare at equal steps, or at equal images seen where the change alters the
batch (on a CPU a step's cost is nearly proportional to its images); the machine's wandering speed
cannot move them. Points that compare model sizes or a whole recipe run at equal minutes and need
the machine to themselves.

    python benchmarks/emoji_groups.py                       # once: runs/emoji-groups/A and B
    python benchmarks/recipe_study.py --list                # the points
    python benchmarks/recipe_study.py screen-                # every point whose name starts so
    python benchmarks/recipe_study.py final10- --n 1000      # the finalists: equal time, 1,000 samples
    python benchmarks/recipe_study.py --table                # docs/cpu-default.md's rows, from runs/study/*/budget.json

A point already measured (its budget.json exists) is skipped, so the study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

A, B = "folder:runs/emoji-groups/A", "folder:runs/emoji-groups/B"
WIDE = ["--set", "model.channels=[32,64,128]"]  # the color default's width, which a short CPU budget narrows
STEPS = 1500  # about what the color default trains in 10 minutes here (1,546 at 173 GFLOP/s)
OUT = Path("runs/study")

# The color default gained min-SNR-5 after the first screens ran (screen-minsnr5 is that default at
# 1,500 steps). A screen measured later changes one thing from today's default and compares with
# screen-minsnr5, except batch 128, which keeps the unweighted loss of the batch series it completes.
UNWEIGHTED = ["--set", "diffusion.min_snr_gamma=null"]

# name: (data, budget flags, train options, what it asks)
POINTS: dict[str, tuple[str, list[str], list[str], str]] = {
    "screen-base": (A, ["--max-steps", str(STEPS)], [], "the color default: v, 32/64/128, lr 1.5e-3, batch 32"),
    "screen-edm": (A, ["--max-steps", str(STEPS)], ["--objective", "edm"], "EDM's formulation"),
    "screen-eps": (A, ["--max-steps", str(STEPS)], ["--objective", "eps"], "Ho et al.'s eps"),
    "screen-lr0.75e-3": (A, ["--max-steps", str(STEPS)], ["--lr", "7.5e-4"], "half the learning rate"),
    "screen-lr3e-3": (A, ["--max-steps", str(STEPS)], ["--lr", "3e-3"], "twice the learning rate"),
    "screen-lr6e-3": (A, ["--max-steps", str(STEPS)], ["--lr", "6e-3"], "four times the learning rate"),
    "screen-batch16": (A, ["--max-steps", str(2 * STEPS)], ["--batch-size", "16"], "batch 16, equal images"),
    "screen-batch64": (A, ["--max-steps", str(STEPS // 2)], ["--batch-size", "64"], "batch 64, equal images"),
    "screen-batch128": (A, ["--max-steps", str(STEPS // 4)], ["--batch-size", "128", *UNWEIGHTED],
                        "batch 128, equal images"),
    "screen-flip": (A, ["--max-steps", str(STEPS)], ["--flip"], "random horizontal flips"),
    "screen-ema0.99": (A, ["--max-steps", str(STEPS)], ["--set", "train.ema_decay=0.99"], "a shorter EMA"),
    "screen-ema0.9995": (A, ["--max-steps", str(STEPS)], ["--set", "train.ema_decay=0.9995", "--set",
                                                           "train.ema_warmup=false"], "a longer EMA, no warm-up"),
    "screen-attn16": (A, ["--max-steps", str(STEPS)], ["--set", "model.attention=[false,true,true]"],
                      "attention at 16x16 as well as 8x8"),
    "screen-noattn": (A, ["--max-steps", str(STEPS)], ["--set", "model.attention=[false,false,false]"], "no attention"),
    "screen-dropout0.1": (A, ["--max-steps", str(STEPS)], ["--set", "model.dropout=0.1"], "dropout 0.1"),
    "screen-minsnr5": (A, ["--max-steps", str(STEPS)], ["--set", "diffusion.min_snr_gamma=5"], "min-SNR-5 weighting"),
    # the screen's winners, confirmed on the emoji groups they were not chosen on
    "confirm-base": (B, ["--max-steps", str(STEPS)], [], "the color default, on group B"),
    "confirm-edm": (B, ["--max-steps", str(STEPS)], ["--objective", "edm"], "EDM's formulation, on group B"),
    "confirm-eps": (B, ["--max-steps", str(STEPS)], ["--objective", "eps"], "eps, on group B"),
    "confirm-minsnr5": (B, ["--max-steps", str(STEPS)], ["--set", "diffusion.min_snr_gamma=5"],
                        "min-SNR-5 weighting, on group B"),
    "confirm-attn16": (B, ["--max-steps", str(STEPS)], ["--set", "model.attention=[false,true,true]"],
                       "attention at 16x16 as well as 8x8, on group B"),
    "confirm-batch16": (B, ["--max-steps", str(2 * STEPS)], ["--batch-size", "16"], "batch 16, equal images, on group B"),
    # finalists at equal time (10 minutes, 1,000 samples): each needs the machine to itself. They ran
    # with 32/64/128 before a short budget on the CPU chose 16/32/64 (recipe.COLOR_CPU_BUDGET_SIZES), and say so.
    "final10-base-A": (A, ["--minutes", "10"], WIDE, "the color default of then, 10 minutes, group A"),
    "final10-batch16-A": (A, ["--minutes", "10"], [*WIDE, "--batch-size", "16"], "batch 16, 10 minutes, group A"),
    "final10-base-B": (B, ["--minutes", "10"], WIDE, "the color default of then, 10 minutes, group B"),
    "final10-batch16-B": (B, ["--minutes", "10"], [*WIDE, "--batch-size", "16"], "batch 16, 10 minutes, group B"),
    "final10-minsnr5-A": (A, ["--minutes", "10"], [*WIDE, "--set", "diffusion.min_snr_gamma=5"],
                          "min-SNR-5 weighting, 10 minutes, group A"),
    "final10-minsnr5-B": (B, ["--minutes", "10"], [*WIDE, "--set", "diffusion.min_snr_gamma=5"],
                          "min-SNR-5 weighting, 10 minutes, group B"),
    # the digits, for the levers that matter there (the gray default trains about 4,500 steps in 10 minutes)
    "digits-base": ("mnist5k", ["--max-steps", "3000"], [], "the gray default: v, 16/32/64"),
    "digits-edm": ("mnist5k", ["--max-steps", "3000"], ["--objective", "edm"], "EDM's formulation on the digits"),
    "digits-eps": ("mnist5k", ["--max-steps", "3000"], ["--objective", "eps"], "eps on the digits"),
}

# Sizes at equal time: which width and depth wins at 5, 10 and 30 minutes. They need the machine to
# themselves, and they train with the color recipe the screens chose (v, min-SNR-5; TIME_OPTIONS).
# time10-c32 is the configuration of final10-minsnr5-A. Each names its width, since on the CPU a
# short budget would otherwise choose 16/32/64 by the machine's speed (recipe.COLOR_CPU_BUDGET_SIZES).
TIME_OPTIONS: list[str] = []
SIZES = {"c16": ["16,32,64"], "c24": ["24,48,96"], "c32": ["32,64,128"], "c32-res2": ["32,64,128", "2"],
         "c48": ["48,96,192"]}
SIZES_AT = {5: ("c16", "c32", "c48"), 10: ("c16", "c24", "c32", "c32-res2", "c48"), 30: ("c16", "c32", "c48")}
for minutes, sizes in SIZES_AT.items():
    for size in sizes:
        widths, *depth = SIZES[size]
        options = [*TIME_OPTIONS, "--set", f"model.channels=[{widths}]"]
        options += ["--set", f"model.num_res={depth[0]}"] if depth else []
        POINTS[f"time{minutes}-{size}"] = (A, ["--minutes", str(minutes)], options,
                                           f"channels {widths.replace(',', '/')}"
                                           + (f", {depth[0]} blocks per level" if depth else "")
                                           + f", {minutes} minutes")

# The 10-minute sizes again on a machine twice as fast (381 GFLOP/s, where the first rows had 165-171):
# whether the bound of 10 minutes is a count of minutes or of the steps they buy.
for size in ("c16", "c32"):
    data, budget, options, what = POINTS[f"time10-{size}"]
    POINTS[f"again10-{size}"] = (data, budget, options, what + ", again on a faster machine")

POINTS["time10-c16-B"] = (B, ["--minutes", "10"], [*TIME_OPTIONS, "--set", "model.channels=[16,32,64]"],
                          "channels 16/32/64, 10 minutes, group B (against final10-minsnr5-B)")
# Two blocks a level won group A's 10 minutes on a fast machine (119.3 against again10-c32's 127.2 in
# 1,790 steps against 2,459): its confirmation on B, with 32/64/128 of one block beside it on the same
# machine, since B's 10-minute rows of that width ran on slower ones.
POINTS["time10-c32-res2-B"] = (B, *POINTS["time10-c32-res2"][1:3], "channels 32/64/128, 2 blocks per level, 10 minutes, "
                                                                  "group B")
POINTS["time10-c32-B"] = (B, *POINTS["time10-c32"][1:3], "channels 32/64/128, 10 minutes, group B, beside time10-c32-res2-B")


# The autoencoder's share of a latent run's clock: a fifth beat a third on all emoji at 10 minutes
# (docs/cpu-default.md), so both, and a tenth, are confirmed on group B on one machine, back to back.
POINTS["latent10-share-third-B"] = (B, ["--minutes", "10"], ["--autoencoder", "own"],
                                   "its own autoencoder with a third of the clock (the default), 10 minutes, group B")
for share in ("0.2", "0.1"):
    POINTS[f"latent10-share{share}-B"] = (B, ["--minutes", "10"], ["--autoencoder", "own", "--set", f"latent.own_share={share}"],
                                          f"its own autoencoder with {share} of the clock, 10 minutes, group B")


def run_point(name: str, n: int) -> None:
    data, budget, train_options, _ = POINTS[name]
    out = OUT / name
    if (out / "budget.json").is_file():
        print(f"{name}: measured already", flush=True)
        return
    shutil.rmtree(out, ignore_errors=True)  # a point that was stopped half-way starts again
    argv = [sys.executable, "benchmarks/cpu_budget.py", "--data", data, *budget, "--n", str(n), "--out", str(out)]
    print("$ " + " ".join(argv + ["--", *train_options]), flush=True)
    subprocess.run(argv + ["--", *train_options], check=True)


def table() -> None:
    """One markdown row per measured point."""
    print("| point | data | budget | steps | images/s (GFLOP/s) | sample s | FID | KID | floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in sorted(OUT.glob("*/budget.json")):
        r = json.loads(path.read_text())
        name = path.parent.name
        what = POINTS.get(name, ("", [], [], ""))[3]
        print(f"| {name}: {what} (`{' '.join(r['train_options'])}`) | {Path(r['data']).name} | {' '.join(r['budget'])} | "
              f"{r['steps']:,} | {r['images_per_s']} ({r['cpu_gflops']}) | {r['sample_seconds']} | {r['fid']} | "
              f"{r['kid']:.4f} | {r['data_floor_fid']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="*", help="names or prefixes of points to run")
    parser.add_argument("--n", type=int, default=500, help="samples for FID (default 500)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, (data, budget, options, what) in POINTS.items():
            print(f"{name:<22} {Path(data).name} {' '.join(budget):<18} {' '.join(options):<50} {what}")
        return
    if args.table:
        table()
        return
    # a point's full name chooses it alone (screen-ema0.99 is also a prefix of screen-ema0.9995)
    chosen = [name for name in POINTS if any(name == p or (p not in POINTS and name.startswith(p)) for p in args.points)]
    for name in chosen:
        run_point(name, args.n)


if __name__ == "__main__":
    main()
