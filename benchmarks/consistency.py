"""Students that tune for a share of their teacher's time (`ddpm distill --method ect|adversarial --share S`)
against their teacher: FID, KID, precision and recall, and on the digits the class histogram.

    python benchmarks/consistency.py --teacher runs/ect-digits/teacher --out runs/ect-digits
    python benchmarks/consistency.py --data emoji --minutes 30 --out runs/ect-emoji
    python benchmarks/consistency.py --method adversarial --teacher T --out DIR --shares 0.25 --classify

1. A teacher: --teacher RUN, or one trained for --minutes with the data set's defaults.
2. For each share of --shares (of the teacher's training time): `ddpm distill --method M --share S`,
   with --extra flags if given (e.g. "--stages 8").
3. `ddpm eval` of each student at each of --steps, and of the teacher with its own sampler and with
   each of --teacher-samplers ("dpm++2m:4"), all with --n samples against --ref-n data images.
   With --classify (digits), the same --n samples are also drawn by `ddpm sample` and labelled by a
   logistic regression trained on MNIST-5k: a student that drops digits shows it in the histogram.

Writes OUT/NAME.json and prints one row per score, with the matmul rate and the wall times.
Run it alone on the machine: the students' budgets are minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch
from distillation import timed  # beside this script
from throughput import matmul_rate

from ddpm.registry import STUDENTS
from ddpm.storage.checkpoint import RunDir, load_meta


CLASSIFIER = None  # set by --classify: a digit classifier, and the data's own class shares


def classifier():
    """A logistic regression on MNIST-5k's pixels (scikit-learn), and the data's class shares."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ddpm import load_data

    data = load_data("mnist5k")
    x, y = data.images.flatten(1).float().numpy() / 255, data.labels.numpy()
    model = LogisticRegression(max_iter=300).fit(x[::2], y[::2])
    print(f"digit classifier: {model.score(x[1::2], y[1::2]):.1%} right on the held-out half", flush=True)
    return model, np.bincount(y, minlength=10) / len(y)


def class_shares(run: Path, n: int, out: Path, flags) -> dict:
    """The classifier's histogram of n samples, and its total-variation distance from the data's."""
    import numpy as np

    timed(["sample", "--run", str(run), "--n", str(n), "--out", str(out), *flags])
    images = np.load(out)["arr_0"]
    model, data_shares = CLASSIFIER
    shares = np.bincount(model.predict(images.reshape(len(images), -1) / 255), minlength=10) / len(images)
    return {"class_shares": [round(float(v), 3) for v in shares],
            "class_tv": round(float(0.5 * np.abs(shares - data_shares).sum()), 3)}


def score(run: Path, n: int, ref_n: int, out: Path, *flags: str) -> dict:
    timed(["eval", "--run", str(run), "--n", str(n), "--ref-n", str(ref_n), "--json", str(out), *flags])
    result = json.loads(out.read_text())
    if CLASSIFIER is not None:
        result.update(class_shares(run, n, out.with_suffix(".npz"), flags))
    return result


def measures(result: dict) -> dict:
    """What a row keeps of an evaluation."""
    kept = {"fid": round(result["fid"], 2), "kid": round(result["kid"], 4)}
    for name in ("precision", "recall"):
        if result.get(name) is not None:
            kept[name] = round(result[name], 3)
    return {**kept, **{k: result[k] for k in ("class_shares", "class_tv") if k in result}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a trained teacher run (default: train one)")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--minutes", type=float, default=30.0, help="the teacher's budget, when training one")
    parser.add_argument("--shares", default="0.1,0.25,0.5", help="tuning budgets, as shares of the teacher's time")
    parser.add_argument("--steps", default="1,2,4", help="the students' sampling steps to score")
    parser.add_argument("--teacher-samplers", default="", help="more teacher scores, SAMPLER:STEPS,...")
    parser.add_argument("--extra", default="", help="more flags for ddpm distill, e.g. '--stages 8'")
    parser.add_argument("--method", default="ect", help="the student method (ect, adversarial)")
    parser.add_argument("--name", help="the students' folder prefix (default: the method)")
    parser.add_argument("--classify", action="store_true", help="digits: the class histogram of each scored set")
    parser.add_argument("--no-teacher", action="store_true", help="score the students only")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--ref-n", type=int, default=1000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.name = args.name or args.method
    if args.classify:
        global CLASSIFIER
        CLASSIFIER = classifier()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        timed(["train", "--out", str(teacher), "--data", args.data, "--max-minutes", f"{args.minutes:g}", "--no-progress"])
    teacher_meta = load_meta(RunDir(teacher).latest())
    rows, students = [], []
    for share in [float(s) for s in args.shares.split(",") if s.strip()]:  # all the tuning first, then the scoring
        student = out / f"{args.name}-{share:g}"
        section = STUDENTS.get(args.method).section  # the method's own share: consistency.share, adversarial.share
        seconds = timed(["distill", "--method", args.method, "--run", str(teacher), "--out", str(student), "--set",
                         f"{section}.share={share:g}", "--no-progress", *shlex.split(args.extra)])
        students.append((share, student, seconds))
    print("tuning done", flush=True)
    for share, student, seconds in students:
        meta = load_meta(RunDir(student).latest())
        for k in [int(s) for s in args.steps.split(",") if s.strip()]:
            result = score(student, args.n, args.ref_n, out / f"{student.name}-{k}.json", "--steps", str(k))
            rows.append({"who": student.name, "share": share, "steps": k, "nfe": result["nfe"], **measures(result),
                         "tuning_steps": meta["step"],
                         "tuning_minutes": round(meta["train_seconds"] / 60, 2), "command_minutes": round(seconds / 60, 2)})
            print(rows[-1], flush=True)
    if args.no_teacher:
        (out / f"{args.name}.json").write_text(json.dumps({"cpu_gflops": round(gflops), "rows": rows}, indent=2))
        return
    own = score(teacher, args.n, args.ref_n, out / "teacher-own.json")
    rows.append({"who": "teacher", "sampler": own["sampler"], "steps": own["steps"], "nfe": own["nfe"], **measures(own)})
    for item in [s for s in args.teacher_samplers.split(",") if s.strip()]:
        sampler, steps = item.split(":")
        result = score(teacher, args.n, args.ref_n, out / f"teacher-{sampler}-{steps}.json", "--sampler", sampler,
                       "--steps", steps)
        rows.append({"who": "teacher", "sampler": sampler, "steps": int(steps), "nfe": result["nfe"], **measures(result)})
    for row in rows[-1 - len(args.teacher_samplers.split(",")):]:
        print(row, flush=True)
    result = {"data": teacher_meta.get("data", args.data), "cpu_gflops": round(gflops), "n": args.n, "ref_n": args.ref_n,
              "teacher_steps": teacher_meta["step"], "teacher_train_minutes": round(teacher_meta["train_seconds"] / 60, 2),
              "method": args.method, "extra": args.extra, "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
