"""Which EMA suits a budget: one training run, several EMAs of its weights, an FID for each.

The EMA decides which weights are sampled, but not how training goes, so one run can carry any
number of them. This script trains the default once (through `ddpm.training.loop.train`, with its EMA
class swapped for one that also keeps the variants below), writes one run directory per variant
with that variant's average as the checkpoint's `ema` weights, then samples and scores each with
the same commands and the same noise as benchmarks/cpu_budget.py.

    python benchmarks/ema_decays.py --minutes 10 --out runs/ema-10min
    python benchmarks/ema_decays.py --max-steps 1985 --out runs/ema-1985

A variant is the decay after n updates. The package's EMA is min(cap, (1 + n) / (10 + n)). A
warm-up (1 + n) / (K + n) ~ 1 - (K - 1) / n is close to EDM2's power-function EMA (Karras et al.
2024, eq. 3) with gamma = K - 2, an average over a fixed fraction of the training so far (relative
width sigma_rel = 0.16, 0.09, 0.05, 0.02 for K = 5, 10, 20, 40). Until the decay reaches its cap it
is that EMA: with K = 10 and the cap 0.999, for the first 9,000 steps.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from cpu_budget import last_logged, sample_and_score  # beside this script, as throughput.py
from throughput import matmul_rate

from ddpm.storage.checkpoint import RunDir
from ddpm.config import Config
from ddpm.training.ema import EMA

training = importlib.import_module("ddpm.training.loop")  # the training module


def warmup(k: float, cap: float = 1.0):
    return lambda n: min(cap, (1 + n) / (k + n))


VARIANTS = {  # name: decay after n updates
    "k10-cap0.999": warmup(10, 0.999),  # the package default
    "k10-cap0.99": warmup(10, 0.99),
    "k5": warmup(5),
    "k20": warmup(20),
    "k40": warmup(40),
}


class ManyEMA(EMA):
    """The package's EMA, plus one average per variant, updated with it."""

    names: list[str] = list(VARIANTS)  # the variants kept (--variants)
    last: "ManyEMA"  # the instance that training made, for main() to read afterwards

    def __init__(self, model, decay, warmup):
        super().__init__(model, decay, warmup)
        self.variants = {name: [p.detach().clone() for p in self.model.parameters()] for name in ManyEMA.names}
        ManyEMA.last = self

    @torch.no_grad()
    def update(self, model):
        super().update(model)
        current = [p.detach() for p in model.parameters()]
        for name, averaged in self.variants.items():
            torch._foreach_lerp_(averaged, current, 1.0 - VARIANTS[name](self.updates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float)
    budget.add_argument("--max-steps", type=int)
    parser.add_argument("--out", required=True, help="the training run; variants go beside it as OUT-NAME")
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (default 1000)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which EMAs to score (default all; each costs a sampling and an FID)")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; choose another --out or remove it")

    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    config = Config()
    config.train.max_minutes, config.train.max_steps = args.minutes, args.max_steps or config.train.max_steps
    ManyEMA.names = args.variants
    training.EMA = ManyEMA  # the one change to the training run: it keeps the variants too
    run = training.train(config, out, progress=False)
    ema = ManyEMA.last
    parameter_names = [name for name, _ in ema.model.named_parameters()]

    results = {}
    for variant, averaged in ema.variants.items():
        copy = out.with_name(f"{out.name}-{variant}")
        shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("tensorboard", "samples"))
        checkpoint = RunDir(copy).latest()
        weights = dict(ema.model.state_dict())  # buffers as they are, parameters from the variant
        weights.update(dict(zip(parameter_names, averaged)))
        save_file({k: v.contiguous() for k, v in weights.items()}, checkpoint / "ema.safetensors")
        _, scores = sample_and_score(copy, args.n, [])
        results[variant] = {"decay_at_end": round(VARIANTS[variant](ema.updates), 5), "fid": round(scores["fid"], 2),
                            "kid": scores["kid"]}
        print(variant, json.dumps(results[variant]), flush=True)
    summary = {"steps": ema.updates, "cpu_gflops": round(gflops), "images_per_s": float(last_logged(run.path)["images_per_s"]), "variants": results}
    (out / "ema_decays.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
