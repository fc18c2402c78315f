"""`make docs-figures`: the book's pictures of a trained model, from small pinned runs.

The main run: class-conditional MNIST-5k (the `mnist5k-cond` preset), seed 0, a fixed number of steps
(not minutes, so every machine trains the same model), a checkpoint every 300 steps. A second run of
1,200 steps with `--objective eps` serves the chapter of common problems. About ten minutes on two
CPU cores. Every picture is drawn with the public API, from fixed seeds, into docs/book/figures/, with
figures.json saying how it was made. The chapters show these files; the build fails if one is missing.

    python docs/tools/figures.py [--steps 3000] [--run build/docs-run]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from book import images  # noqa: E402

from ddpm import Editor, Pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "book" / "figures"


def train(run: Path, steps: int, *flags: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddpm", "train", "--preset", "mnist5k-cond", "--out", str(run),
                    "--max-steps", str(steps), "--seed", "0", "--device", "cpu",
                    "--set", "train.checkpoint_every=300", "--set", f"train.keep_checkpoints={steps // 300 + 1}",
                    *flags], check=True)
    return time.perf_counter() - started


def save(figure, name: str) -> None:
    figure.savefig(OUT / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def as_model(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1


def loss_curve(run: Path) -> None:
    rows = list(csv.DictReader((run / "log.csv").open()))
    step = torch.tensor([float(r["step"]) for r in rows])
    loss = torch.tensor([float(r["loss"]) for r in rows])
    lr = torch.tensor([float(r["lr"]) for r in rows])
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(step, loss, alpha=0.3, label="loss (every 10 steps)")
    axis.plot(step, smooth, label="running mean")
    axis.set(xlabel="step", ylabel="v-prediction MSE", ylim=(0, float(loss[len(loss) // 20:].max()) * 1.1))
    twin = axis.twinx()
    twin.plot(step, lr, color="gray", linestyle="--", label="learning rate")
    twin.set_ylabel("learning rate")
    axis.legend(loc="upper right")
    save(figure, "loss.png")


def trajectory(pipe: Pipeline) -> None:
    kept, shown = {}, [999, 800, 600, 400, 200, 0]
    rows_x, rows_x0 = [], []

    def record(i, t, x, prediction):
        if int(t) in shown or i == 0:
            kept[int(t)] = (x[:1].clone(), prediction.x0[:1].clone())

    pipe(4, sampler="ddpm", steps=1000, seed=3, classes=[2], progress=False, callback=record)
    for t in sorted(kept, reverse=True):
        rows_x.append(kept[t][0][0])
        rows_x0.append(kept[t][1][0])
    titles = [f"t = {t}" for t in sorted(kept, reverse=True)]
    save(images([rows_x, rows_x0], titles=titles, row_titles=["x_t", "x̂_0"]), "trajectory.png")


def solvers(pipe: Pipeline) -> None:
    steps = [3, 5, 10, 25, 50]
    rows = []
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        rows.append([as_model(pipe(1, sampler=sampler, steps=k, seed=11, classes=[5], progress=False))[0]
                     for k in steps])
    save(images(rows, titles=[f"{k} steps" for k in steps], row_titles=["DDPM", "DDIM", "DPM++2M"]), "solvers.png")


def guidance(pipe: Pipeline) -> dict:
    scales = [0.0, 1.0, 3.0, 8.0, 20.0]
    rows, spread = [], {}
    for w in scales:
        drawn = as_model(pipe(10, sampler="ddim", steps=50, seed=5, classes="all", guidance=w, progress=False))
        rows.append(list(drawn))
        many = as_model(pipe(100, sampler="ddim", steps=50, seed=6, classes="all", guidance=w, progress=False))
        spread[w] = {"ink": round(float((many > 0).float().mean()), 4),  # the share of pixels drawn on
                     "white": round(float((many > 0.98).float().mean()), 4)}  # and of those at full white
    titles = [str(k) for k in range(10)]
    save(images(rows, titles=titles, row_titles=[f"w = {w:g}" for w in scales]), "guidance.png")
    return spread


def progression(run: Path) -> list[int]:
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    wanted = [c for c in checkpoints if int(c.name.split("_")[1]) in (300, 600, 1200, 3000)] or checkpoints
    rows, steps = [], []
    for checkpoint in wanted:
        pipe = Pipeline.from_run(run, checkpoint=checkpoint, device="cpu")
        rows.append(list(as_model(pipe(8, sampler="ddim", steps=50, seed=7, classes="all", progress=False))[:8]))
        steps.append(pipe.step)
    save(images(rows, row_titles=[f"step {s}" for s in steps]), "progression.png")
    return steps


def edits(pipe: Pipeline) -> None:
    from ddpm import load_data

    data = load_data("mnist5k")  # sorted by class: take the first three and the first eight
    first = [int((data.labels == c).nonzero()[0]) for c in (3, 8)]
    digits, label = data.images[first], [3]
    editor = Editor(pipe)
    mask = torch.zeros(28, 28)
    mask[:, 14:] = 1  # the right half is filled
    filled = as_model(editor.inpaint(digits[:1], mask, n=4, seed=1, classes=label))
    edited = [as_model(editor.img2img(digits[:1], strength, seed=2, classes=label))[0] for strength in (0.3, 0.6, 0.9)]
    between = as_model(editor.interpolate(digits[:1], digits[1:2], frames=6))
    original = as_model(digits[:1])[0]
    rows = [[original, original * (1 - mask) - mask, *filled],
            [original, *edited],
            list(between)]
    save(images(rows, row_titles=["inpaint", "SDEdit 0.3 / 0.6 / 0.9", "interpolate"]), "edits.png")


def objectives(run: Path, eps_run: Path, steps: int) -> None:
    """The v run at `steps` beside a run of `steps` steps with --objective eps: same noise, same labels."""
    if not (eps_run / "checkpoints" / "latest").exists():
        train(eps_run, steps, "--objective", "eps")
    rows = []
    for path, checkpoint in ((run, run / "checkpoints" / f"step_{steps:06d}"), (eps_run, None)):
        pipe = Pipeline.from_run(path, checkpoint=checkpoint, device="cpu")
        rows.append(list(as_model(pipe(10, sampler="ddim", steps=50, seed=7, classes="all", progress=False))))
    save(images(rows, row_titles=[f"v, step {steps}", f"eps, {steps} steps"]), "objectives.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--run", type=Path, default=ROOT / "build" / "docs-run")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    seconds = None
    if not (args.run / "checkpoints" / "latest").exists():
        seconds = train(args.run, args.steps)
    torch.manual_seed(0)
    pipe = Pipeline.from_run(args.run, device="cpu")
    loss_curve(args.run)
    trajectory(pipe)
    solvers(pipe)
    saturated = guidance(pipe)
    steps = progression(args.run)
    edits(pipe)
    objectives(args.run, args.run.with_name(args.run.name + "-eps"), 1200)
    (OUT / "figures.json").write_text(json.dumps({
        "command": f"python docs/tools/figures.py --steps {args.steps}", "preset": "mnist5k-cond", "seed": 0,
        "steps": pipe.step, "train_seconds": seconds, "torch": torch.__version__, "progression_steps": steps,
        "pixels_by_guidance": saturated}, indent=2) + "\n")
    print(f"figures in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
