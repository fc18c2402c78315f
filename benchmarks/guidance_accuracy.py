"""Does classifier-free guidance draw the class it is asked for?  (issue: class-conditional generation)

Trains the `mnist5k-cond` preset on the CPU (or reuses --run), draws --per-class samples of every
class at each guidance weight, and asks a classifier fitted to MNIST-5k (scikit-learn logistic
regression on pixels) which digit each sample shows. The goal: >= 95 % of the samples at
guidance 3 are classified as their requested class; guidance 1 (the conditional model without
guidance, Ho & Salimans' w = 0) well above the 10 % of chance; guidance 0 (the unconditional
model) at chance, since it ignores the label by construction.

    python benchmarks/guidance_accuracy.py --minutes 10          # train, then measure
    python benchmarks/guidance_accuracy.py --max-steps 1800      # the same, as a step budget
    python benchmarks/guidance_accuracy.py --run runs/bench-cfg  # measure an existing run

Prints a table and writes RUN/guidance_accuracy.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ddpm import Pipeline, load_data, train
from ddpm.config.presets import load_preset


def fit_classifier(seed: int = 0) -> tuple[LogisticRegression, float]:
    """Logistic regression on MNIST-5k pixels, and its accuracy on 1,000 held-out real digits."""
    data = load_data("mnist5k")
    x = data.images.flatten(1).numpy() / 255.0
    y = data.labels.numpy()
    order = np.random.default_rng(seed).permutation(len(x))
    held_out, fit = order[:1000], order[1000:]
    classifier = LogisticRegression(max_iter=2000, C=0.1).fit(x[fit], y[fit])
    real_accuracy = float((classifier.predict(x[held_out]) == y[held_out]).mean())
    return classifier.fit(x, y), real_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing class-conditional run (default: train one into --out)")
    parser.add_argument("--out", default="runs/bench-cfg")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget when training (default 10)")
    parser.add_argument("--max-steps", type=int, help="a step budget instead, unaffected by other load on the machine")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class and guidance weight (default 50)")
    parser.add_argument("--guidance", default="0,1,3", help="comma-separated weights (default 0,1,3)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    run = Path(args.run) if args.run else Path(args.out)
    if not args.run:
        budget = {"train.max_steps": args.max_steps} if args.max_steps else {"train.max_minutes": args.minutes}
        config = load_preset("mnist5k-cond").override({**budget, "train.device": args.device})
        train(config, run, progress=False)
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pipe = Pipeline.from_run(run, device=args.device)
    c = pipe.config
    classifier, real_accuracy = fit_classifier()

    labels = pipe.plan(10 * args.per_class).labels  # every class in turn
    results = {"run": str(run), "step": pipe.step, "images_per_s": float(rows[-1]["images_per_s"]) if rows else None,
               "sampler": c.sample.sampler, "steps": c.sample.steps, "samples_per_weight": len(labels),
               "classifier_accuracy_on_real_digits": real_accuracy, "accuracy": {}}
    print(f"{run}: step {pipe.step}, {c.sample.sampler} {c.sample.steps} steps; the classifier gets "
          f"{real_accuracy:.1%} of 1,000 held-out real digits right")
    for weight in [float(w) for w in args.guidance.split(",")]:
        started = time.perf_counter()
        images = pipe(len(labels), seed=0, guidance=weight)
        predicted = torch.from_numpy(classifier.predict(images.flatten(1).numpy() / 255.0))
        accuracy = float((predicted == labels).float().mean())
        results["accuracy"][str(weight)] = accuracy
        print(f"guidance {weight:4.1f}: {accuracy:6.1%} classified as the requested class "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    (run / "guidance_accuracy.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
