"""Quality within a budget: FID of the default after 10 minutes of training on this machine.

Exactly the measure a first-time user takes, through the command line:

    ddpm train --out RUN --max-minutes 10           (the mnist5k default, no other option)
    ddpm sample --run RUN --n 1000 --out RUN/samples.npz   (the default sampler, <= 50 NFE)
    ddpm eval --samples RUN/samples.npz --data mnist5k     (against all 5,000 digits)

    python benchmarks/cpu_budget.py                     # the measure, 10 minutes
    python benchmarks/cpu_budget.py --minutes 30        # does the default keep improving?
    python benchmarks/cpu_budget.py --max-steps 1800 -- --set diffusion.min_snr_gamma=5
                                                        # a lever, at a fixed number of steps
    python benchmarks/cpu_budget.py --data emoji        # the color data set, against all 3,655 emoji
    python benchmarks/cpu_budget.py --data emoji --versus-dd-pytorch
        # and, in the same run, denoising-diffusion-pytorch's Unet / GaussianDiffusion trained for the
        # same minutes on the same images (pip install denoising-diffusion-pytorch)

Arguments after `--` go to `ddpm train`, so levers are measured by the same script. With
--max-steps instead of --minutes the result does not depend on how busy the machine is.
Prints one line of results and writes RUN/budget.json, with the data set's own floor: FID of
`--n` real images against the rest, the best score this measure allows. The FID reference
features of the 5,000 digits take ~14 minutes once, then come from the cache (the floor reuses
them).

A time budget buys as many steps as the machine allows, and machines sold as alike differ: 2 AVX2
cores multiplied fp32 matrices at 180 GFLOP/s one day and at 69 another. So the result holds this
machine's matrix-multiply rate, measured before training. Compare 10-minute FIDs only between runs
of a similar rate, or compare them by their steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from throughput import matmul_rate  # benchmarks/throughput.py, beside this script

from ddpm import Pipeline
from ddpm.config import read_config

DDPM = [sys.executable, "-m", "ddpm"]


def _run(arguments: list[str]) -> float:
    print("$ ddpm " + shlex.join(arguments), flush=True)
    started = time.perf_counter()
    subprocess.run(DDPM + arguments, check=True)
    return time.perf_counter() - started


def sample_and_score(run: Path, n: int, sample_options: list[str], data: str = "mnist5k") -> tuple[float, dict]:
    """`ddpm sample` n images from the run, then `ddpm eval` them against all of `data`.

    Returns the seconds sampling took and the scores (fid.json). Writes samples.npz, grid.png and
    fid.json into the run.
    """
    sample_seconds = _run(["sample", "--run", str(run), "--n", str(n), "--out", str(run / "samples.npz"),
                           "--grid", str(run / "grid.png"), *sample_options])
    _run(["eval", "--samples", str(run / "samples.npz"), "--data", data, "--json", str(run / "fid.json")])
    return sample_seconds, json.loads((run / "fid.json").read_text())


def data_floor(data: str, image_size: int, n: int) -> float:
    """FID of n real images against the rest of the data set: what a perfect model would score.
    The reference features are those of a fixed random order of the whole set, so these are its
    first n against the others, from the cache that `ddpm eval` filled. A set with fewer than 2n
    images splits in half instead, so that neither side is empty or smaller than the other."""
    from ddpm.evaluation.fid import InceptionFeatures, reference_features
    from ddpm.evaluation.metrics import fid_from_features

    features = reference_features(data, "data", image_size, None, InceptionFeatures("cpu"))
    n = min(n, len(features) // 2)
    return fid_from_features(features[:n], features[n:])


def last_logged(run: Path) -> dict:
    """The last row of the run's log.csv: its step count and training speed."""
    with open(run / "log.csv") as handle:
        return list(csv.DictReader(handle))[-1]


def versus_dd_pytorch(data_name: str, minutes: float, n: int, out: Path) -> dict:
    """denoising-diffusion-pytorch (lucidrains) on the same images for the same minutes, as its README
    trains it (its Trainer's settings: Adam lr 8e-5, betas (0.9, 0.99), batch 32, random flips, gradient
    norm clipped at 1, EMA 0.995 every 10 steps; sigmoid schedule, v prediction, DDIM with 50 steps),
    with the Unet sized for a CPU like ours: dim 32, dim_mults (1, 2, 4). Its samples are scored by
    the same `ddpm eval`. The loop is written here because its Trainer has no time budget."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    from ddpm.data.datasets import load_data
    from ddpm.storage.files import save_grid, save_npz

    torch.manual_seed(0)
    data = load_data(data_name)
    model = GaussianDiffusion(Unet(dim=32, dim_mults=(1, 2, 4), channels=data.channels), image_size=data.image_size,
                              timesteps=1000, sampling_timesteps=50)
    ema = EMA(model, beta=0.995, update_every=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=8e-5, betas=(0.9, 0.99))
    images = data.images.float() / 255  # GaussianDiffusion takes [0, 1] and normalises itself
    steps, started = 0, time.perf_counter()
    print(f"denoising-diffusion-pytorch: training for {minutes:g} min", flush=True)
    while time.perf_counter() - started < minutes * 60:
        batch = images[torch.randint(len(images), (32,))]
        batch = torch.where(torch.rand(32, 1, 1, 1) < 0.5, batch.flip(-1), batch)
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update()
        steps += 1
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        samples = torch.cat([ema.ema_model.sample(batch_size=min(250, n - i)) for i in range(0, n, 250)])
    sample_seconds = time.perf_counter() - started
    samples = (samples.clamp(0, 1) * 255).round().to(torch.uint8)
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / "samples.npz", samples)
    save_grid(samples[:64], out / "grid.png")
    _run(["eval", "--samples", str(out / "samples.npz"), "--data", data_name, "--json", str(out / "fid.json")])
    scores = json.loads((out / "fid.json").read_text())
    return {"steps": steps, "train_minutes": round(train_seconds / 60, 2), "images_per_s": round(32 * steps / train_seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "sample_seconds": round(sample_seconds, 1),
            "nfe": 50, "fid": round(scores["fid"], 2), "kid": scores["kid"]}


def _option(options: list[str], name: str, default):
    return options[options.index(name) + 1] if name in options else default


def _int_or_none(text):
    return None if text is None else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training budget in minutes (default 10)")
    budget.add_argument("--max-steps", type=int, default=None, help="a step budget instead of a time budget")
    parser.add_argument("--out", default=None, help="run directory (default runs/budget-<budget>)")
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (default 1000)")
    parser.add_argument("--data", default="mnist5k", help="the data set to train on and score against (default mnist5k)")
    parser.add_argument("--sample", default="", help="extra options for ddpm sample, e.g. '--sampler ddim'")
    parser.add_argument("--versus-dd-pytorch", action="store_true",
                        help="also train denoising-diffusion-pytorch for the same minutes and score it")
    parser.add_argument("train_options", nargs="*", help="after --: extra options for ddpm train")
    args = parser.parse_args()
    minutes = 10.0 if args.minutes is None and args.max_steps is None else args.minutes
    budget = ["--max-minutes", f"{minutes:g}"] if minutes is not None else ["--max-steps", str(args.max_steps)]
    out = Path(args.out or f"runs/budget-{args.data}-{f'{minutes:g}min' if minutes is not None else f'{args.max_steps}steps'}")
    if out.exists():
        sys.exit(f"{out} exists; choose another --out or remove it")

    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    train_seconds = _run(["train", "--out", str(out), "--data", args.data, *budget, "--no-progress", *args.train_options])
    sample_seconds, scores = sample_and_score(out, args.n, shlex.split(args.sample), args.data)

    last = last_logged(out)
    sample_options = shlex.split(args.sample)
    options = Pipeline.from_run(out, device="cpu").plan(None,   # the run's own, as `ddpm sample` resolved them
        _option(sample_options, "--sampler", None), _int_or_none(_option(sample_options, "--steps", None)))
    result = {
        "budget": budget, "train_options": args.train_options, "steps": int(last["step"]),
        "channels": read_config(out / "config.yaml").model.channels,  # what the budget chose, on the CPU
        "autoencoder": read_config(out / "config.yaml").latent.autoencoder,
        "train_minutes": round(train_seconds / 60, 2), "cpu_gflops": round(gflops), "images_per_s": float(last["images_per_s"]),
        "sampler": options.sampler, "sampler_steps": options.steps, "nfe": options.nfe, "sample_seconds": round(sample_seconds, 1),
        "fid": round(scores["fid"], 2), "kid": scores["kid"], "samples": scores["samples"], "reference": scores["reference"],
        "data": args.data, "data_floor_fid": round(data_floor(args.data, scores["image_size"], args.n), 2),
    }
    stage = out / "autoencoder.json"  # a run that trained its own autoencoder first (latent.autoencoder: own)
    if stage.is_file():
        ae = last_logged(out / "autoencoder")
        result["own_autoencoder"] = {**json.loads(stage.read_text()), "steps": int(ae["step"]),
                                     "channels": read_config(out / "autoencoder" / "config.yaml").autoencoder.channels,
                                     "images_per_s": float(ae["images_per_s"])}
    if args.versus_dd_pytorch:
        result["denoising_diffusion_pytorch"] = versus_dd_pytorch(args.data, minutes or 10.0, args.n, out / "dd-pytorch")
    (out / "budget.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
