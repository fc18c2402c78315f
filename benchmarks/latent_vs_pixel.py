"""Latent against pixel diffusion at 64x64, for equal total CPU time (Rombach et al. 2022's claim).

Two arms, each given the same minutes of wall-clock time on this machine:

    pixel   ddpm train --data emoji --image-size 64 --max-minutes T
    latent  ddpm train-autoencoder --data emoji --image-size 64 --max-minutes A   (A = --ae-share x T)
            encode the training set once (both flips), timed here
            ddpm train --autoencoder AE --data emoji --image-size 64 --max-minutes (T - the two above)

Both UNets are the same (the color defaults); only what they denoise differs: 3x64x64 images, or
the autoencoder's 4x16x16 latents at f = 4. The latent arm's clock runs from the start of the
autoencoder's training, including its process start-up and the checkpoint's latent-scale pass, so
any overhead counts against it. Then each arm samples --n images with its run's default sampler
(<= 50 network evaluations) and `ddpm eval` scores them against all of the data set; the
autoencoder's own PSNR and rFID come from `ddpm eval --reconstruct`.

    python benchmarks/latent_vs_pixel.py                 # 30 minutes an arm
    python benchmarks/latent_vs_pixel.py --minutes 10    # a quicker look
    python benchmarks/latent_vs_pixel.py --widths [64,128,128,128] --no-pixel   # f = 8, its latent arm only
    python benchmarks/latent_vs_pixel.py --minutes 10 -- --objective edm          # options for both UNets

Writes OUT/latent_vs_pixel.json and prints it; the grids are OUT/pixel/grid.png and
OUT/latent/grid.png. Needs the 64x64 reference features once (~9 minutes at 7 images/s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from cpu_budget import _run, data_floor, last_logged, sample_and_score  # beside this script
from throughput import matmul_rate


def encode_training_set(autoencoder: Path, data_name: str, image_size: int) -> float:
    """Encode the data set as `ddpm train --autoencoder` will (both flips, into the cache it reads),
    and return the seconds it took."""
    from ddpm.data.datasets import load_data
    from ddpm.data.latents import encode_data
    from ddpm.factory import load_codec

    started = time.perf_counter()
    codec = load_codec(str(autoencoder))
    encode_data(codec, load_data(data_name, image_size=image_size), flip=True, device=torch.device("cpu"))
    return time.perf_counter() - started


def arm_result(run: Path, train_minutes: float, sample_seconds: float, scores: dict, n: int) -> dict:
    last = last_logged(run)
    return {"train_minutes": round(train_minutes, 2), "steps": int(last["step"]),
            "unet_images_per_s": float(last["images_per_s"]), "sample_images_per_s": round(n / sample_seconds, 2),
            "fid": round(scores["fid"], 2), "kid": scores["kid"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock minutes for each arm (default 30)")
    parser.add_argument("--ae-share", type=float, default=1 / 3,
                        help="the latent arm's share of its minutes spent training the autoencoder (default 1/3)")
    parser.add_argument("--data", default="emoji", help="the data set (default emoji)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (default 1000)")
    parser.add_argument("--widths", default=None, metavar="[C,...]",
                        help="the autoencoder's level widths, f = 2^(levels - 1) (default its own: [64,128,128], f = 4)")
    parser.add_argument("--no-pixel", action="store_true", help="train the latent arm only")
    parser.add_argument("--out", default=None, help="output folder (default runs/latent-vs-pixel-<minutes>min)")
    parser.add_argument("train_options", nargs="*", help="after --: extra options for both arms' ddpm train")
    args = parser.parse_args()
    out = Path(args.out or f"runs/latent-vs-pixel-{args.minutes:g}min")
    if out.exists():
        sys.exit(f"{out} exists; choose another --out or remove it")
    if not 0 < args.ae_share < 1:
        sys.exit("--ae-share must be between 0 and 1")
    data = ["--data", args.data, "--image-size", str(args.image_size)]
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)

    # The latent arm: its clock starts with the autoencoder.
    ae, latent = out / "autoencoder", out / "latent"
    widths = ["--widths", args.widths] if args.widths else []
    ae_seconds = _run(["train-autoencoder", "--out", str(ae), *data, *widths,
                       "--max-minutes", f"{args.ae_share * args.minutes:g}", "--no-progress"])
    encode_seconds = encode_training_set(ae, args.data, args.image_size)
    left = args.minutes - (ae_seconds + encode_seconds) / 60
    if left <= 0.5:
        sys.exit(f"the autoencoder and encoding took {(ae_seconds + encode_seconds) / 60:.1f} of {args.minutes:g} "
                 "minutes; give a smaller --ae-share")
    latent_seconds = _run(["train", "--out", str(latent), *data, "--autoencoder", str(ae),
                           "--max-minutes", f"{left:.3f}", "--no-progress",
                           *args.train_options])
    pixel = out / "pixel"
    if not args.no_pixel:
        pixel_seconds = _run(["train", "--out", str(pixel), *data, "--max-minutes", f"{args.minutes:g}",
                              "--no-progress", *args.train_options])

    # Scores, untimed.
    _run(["eval", "--reconstruct", str(ae), "--n", str(args.n), "--json", str(ae / "reconstruct.json")])
    reconstruction = json.loads((ae / "reconstruct.json").read_text())
    latent_scores = sample_and_score(latent, args.n, [], args.data)
    latent_arm = arm_result(latent, left, *latent_scores, args.n)
    latent_arm.update({
        "total_minutes": round((ae_seconds + encode_seconds + latent_seconds) / 60, 2),
        "autoencoder": {"train_minutes": round(ae_seconds / 60, 2), "steps": int(last_logged(ae)["step"]),
                        "images_per_s": float(last_logged(ae)["images_per_s"]), "psnr": reconstruction["psnr"],
                        "rfid": round(reconstruction["fid"], 2)},
        "encode_seconds": round(encode_seconds, 1),
    })
    result = {
        "minutes_per_arm": args.minutes, "data": args.data, "image_size": args.image_size, "n": args.n,
        "cpu_gflops": round(gflops), "train_options": args.train_options, "latent": latent_arm,
        "data_floor_fid": round(data_floor(args.data, args.image_size, args.n), 2),
    }
    if not args.no_pixel:
        pixel_arm = arm_result(pixel, args.minutes, *sample_and_score(pixel, args.n, [], args.data), args.n)
        pixel_arm["total_minutes"] = round(pixel_seconds / 60, 2)
        result.update({"pixel": pixel_arm,
                       "unet_speedup": round(latent_arm["unet_images_per_s"] / pixel_arm["unet_images_per_s"], 2)})
    (out / "latent_vs_pixel.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
