"""How close does a training step come to the hardware's limit?  (issue: scale and speed)

For a preset at a batch size, precision and device: the training step's images/s, its FLOPs per
image counted by torch.utils.flop_counter (forward and backward, not guessed), the FLOP/s that
gives, and that as a fraction of a matrix-multiply rate measured in this same process (fp32 on a
CPU, bf16 on CUDA). Also the sampling rate at a given number of network evaluations.

    python benchmarks/throughput.py                                   # the mnist5k default on this CPU
    python benchmarks/throughput.py --set model.channels=[16,32,64]      # a narrower UNet
    python benchmarks/throughput.py --preset cifar10-ddpm --batch-size 128 --precision bf16 \\
        --compile --channels-last --device cuda
    python benchmarks/throughput.py --set data.name=emoji --set data.image_size=64 --latent 4,8
                                        # the UNet of a latent run: 4x8x8 latents of 64x64 images, f = 8

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm import Pipeline, build_diffusion, build_network, load_data
from ddpm.config.recipe import compose_config
from ddpm.runtime.devices import resolve_device
from ddpm.runtime.speed import matmul_rate, synchronize  # matmul_rate: the other benchmarks import it from here
from ddpm.training.precision import autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="a preset (default: the mnist5k default config)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override, as for ddpm train, e.g. --set model.channels=[16,32,64]")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after 5 warm-up steps)")
    parser.add_argument("--sample-nfe", type=int, default=50, help="network evaluations per sample when timing sampling")
    parser.add_argument("--sample-n", type=int, default=64)
    parser.add_argument("--latent", metavar="C,F", help="time the UNet of a latent run instead: C-channel latents, "
                                                       "F times smaller than the images on each side")
    args = parser.parse_args()

    overrides = dict(item.split("=", 1) for item in args.set)
    if args.latent:  # the shape of an autoencoder's latents; no autoencoder is loaded
        channels, factor = args.latent.split(",")
        overrides.update({"latent.autoencoder": "(timed without one)", "latent.channels": channels,
                          "latent.factor": factor})
    config = compose_config(args.preset, overrides=overrides).validate()
    batch = args.batch_size or config.train.batch_size
    device = resolve_device(args.device)
    data = load_data(config.data.name, config.data.root, config.data.image_size)  # for the image shape only
    config.data.image_size, config.data.channels = data.image_size, data.channels
    channels, size = config.model_input()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    network = build_network(config).to(device, memory_format=memory_format)
    model = torch.compile(network) if args.compile else network
    diffusion = build_diffusion(config).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x0 = (torch.rand(batch, channels, size, size, device=device) * 2 - 1).contiguous(
        memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.precision, device):
            loss = diffusion.loss(model, x0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    with FlopCounterMode(display=False) as counter:  # on the eager network: the FLOPs of the maths, not of a kernel
        optimizer.zero_grad(set_to_none=True)
        diffusion.loss(network, x0).backward()
    flops_per_image = counter.get_total_flops() / batch

    for _ in range(5):  # warm-up, and compilation
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    train_images_per_s = args.steps * batch / (time.perf_counter() - started)

    limit_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    limit = matmul_rate(device, limit_dtype, 2048 if device.type == "cpu" else 8192)
    achieved = train_images_per_s * flops_per_image

    network.eval()
    started = time.perf_counter()
    Pipeline(network, diffusion, config)(args.sample_n, "ddim", args.sample_nfe, batch_size=args.sample_n, progress=False)
    synchronize(device)
    sample_images_per_s = args.sample_n / (time.perf_counter() - started)

    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset or "default (mnist5k)", "overrides": args.set, "input": [channels, size, size],
        "parameters_M": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
        "batch_size": batch, "precision": args.precision, "compile": args.compile, "channels_last": args.channels_last,
        "train_images_per_s": round(train_images_per_s, 1),
        "train_gflop_per_image": round(flops_per_image / 1e9, 3),
        "achieved_tflop_per_s": round(achieved / 1e12, 4),
        f"matmul_{'fp32' if limit_dtype == torch.float32 else 'bf16'}_tflop_per_s": round(limit / 1e12, 4),
        "fraction_of_matmul": round(achieved / limit, 3),
        "sample_nfe": args.sample_nfe,
        "sample_images_per_s": round(sample_images_per_s, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
