"""Two choices of latent diffusion, each measured at equal steps on the color data set at 64x64.

discriminator  two autoencoders trained for the same steps, one without and one with Rombach et
               al.'s patch discriminator (from --disc-start on): their speed before and after the
               discriminator starts (seconds per step), and the PSNR and rFID of their reconstructions.
posterior      two latent UNets trained for the same steps on the first autoencoder's latents: one
               on each image's posterior mean (the default), one on a latent drawn from its
               posterior at every step (latent.posterior=sample). FID and KID of --n samples each,
               and how wide the posteriors are beside the spread of their means.

    python benchmarks/latent_choices.py                    # both, about an hour on 2 cores
    python benchmarks/latent_choices.py --ae-steps 100 --unet-steps 1000 --n 200   # a quick look

Writes OUT/latent_choices.json and prints it. Needs the 64x64 reference features once (~9 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from cpu_budget import _run, sample_and_score  # beside this script
from throughput import matmul_rate


def speeds(run: Path, disc_start: int) -> dict:
    """Seconds per step from the first logged step to `disc_start`, and from there to the end (log.csv's
    images_per_s is a running mean over the whole run; its elapsed minutes give each stretch's own)."""
    with open(run / "log.csv") as handle:
        rows = [(int(r["step"]), 60 * float(r["elapsed_min"])) for r in csv.DictReader(handle)]
    split = max((row for row in rows if row[0] <= disc_start), default=rows[0])

    def per_step(start: tuple, end: tuple) -> float | None:
        return round((end[1] - start[1]) / (end[0] - start[0]), 3) if end[0] > start[0] else None

    return {"seconds_per_step_before_disc_start": per_step(rows[0], split),
            "seconds_per_step_after_disc_start": per_step(split, rows[-1])}


def posterior_width(autoencoder: Path, data_name: str, image_size: int) -> dict:
    """The posteriors' standard deviation (root mean square over all latents) beside the standard
    deviation of their means, both scaled: how much a drawn latent differs from the mean."""
    from ddpm.data.datasets import load_data
    from ddpm.data.latents import encode_data
    from ddpm.factory import load_codec

    codec = load_codec(str(autoencoder))
    moments = encode_data(codec, load_data(data_name, image_size=image_size), flip=True, device=torch.device("cpu"),
                          moments=True).images
    mean, std = moments[:, :, 0].double(), moments[:, :, 1].double()
    return {"std_of_means": round(mean.std().item(), 4), "rms_posterior_std": round(std.square().mean().sqrt().item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-steps", type=int, default=300, help="steps of each autoencoder (default 300)")
    parser.add_argument("--disc-start", type=int, default=100, help="the discriminator's first step (default 100)")
    parser.add_argument("--disc-weight", type=float, default=0.5)
    parser.add_argument("--unet-steps", type=int, default=6000, help="steps of each latent UNet (default 6000)")
    parser.add_argument("--data", default="emoji", help="the data set (default emoji)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=1000, help="reconstructions and samples for FID (default 1000)")
    parser.add_argument("--out", default="runs/latent-choices", help="output folder (default runs/latent-choices)")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; choose another --out or remove it")
    if not 0 < args.disc_start < args.ae_steps:
        sys.exit("--disc-start must be between 0 and --ae-steps")
    data = ["--data", args.data, "--image-size", str(args.image_size)]
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    result = {"data": args.data, "image_size": args.image_size, "n": args.n, "cpu_gflops_at_start": round(gflops)}

    autoencoders = {}
    for name, extra in [("plain", []), ("discriminator", ["--disc-weight", f"{args.disc_weight:g}"])]:
        run = out / f"autoencoder-{name}"
        seconds = _run(["train-autoencoder", "--out", str(run), *data, "--max-steps", str(args.ae_steps),
                        "--disc-start", str(args.disc_start), *extra, "--no-progress"])
        _run(["eval", "--reconstruct", str(run), "--n", str(args.n), "--json", str(run / "reconstruct.json")])
        scores = json.loads((run / "reconstruct.json").read_text())
        autoencoders[name] = {"train_minutes": round(seconds / 60, 2), **speeds(run, args.disc_start),
                              "psnr": scores["psnr"], "rfid": round(scores["fid"], 2)}
    result["discriminator"] = {"steps": args.ae_steps, "disc_start": args.disc_start,
                               "disc_weight": args.disc_weight, **autoencoders}

    autoencoder = out / "autoencoder-plain"
    unets = {"posterior_width": posterior_width(autoencoder, args.data, args.image_size)}
    for posterior in ("mean", "sample"):
        run = out / f"latent-{posterior}"
        seconds = _run(["train", "--out", str(run), *data, "--autoencoder", str(autoencoder), "--posterior", posterior,
                        "--max-steps", str(args.unet_steps), "--no-progress"])
        _, scores = sample_and_score(run, args.n, [], args.data)
        unets[posterior] = {"train_minutes": round(seconds / 60, 2), "fid": round(scores["fid"], 2),
                            "kid": scores["kid"]}
    result["posterior"] = {"steps": args.unet_steps, **unets}
    result["cpu_gflops_at_end"] = round(matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9)
    (out / "latent_choices.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
