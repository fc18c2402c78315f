"""One GPU check, ready to run: CUDA training, mixed precision, compile, throughput and memory.

A GPU is lent now and then, for minutes at a time, so everything that needs one is here, in one
command that takes under 8 minutes on one H100/H200-class GPU:

    python benchmarks/gpu_check.py                 # or: make gpu-check
    python benchmarks/gpu_check.py --dry-run       # every path on the CPU with tiny shapes (in the test suite)

It measures the device's bf16 and fp32 matmul rates; trains the `cifar10-ddpm` preset (35.7M
parameters, batch 128) on in-memory tensors of CIFAR shape in five option sets (fp32; bf16; bf16 +
channels_last; bf16 + channels_last + torch.compile; fp16 with the gradient scaler), reporting
images/s, TFLOP/s from the flop counter, the fraction of the bf16 matmul rate, peak memory and the
loss; checks that one fp32 step on the GPU equals the same step on the CPU, and that bf16 follows
fp32 over 20 steps; times sampling; runs torchrun with NCCL and a resume; and trains the CPU
default for 2 minutes, with FID of 1,000 samples. It writes one JSON file, prints a table, and
exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from throughput import matmul_rate  # noqa: E402  (beside this script)

from ddpm import Config, Pipeline, build_diffusion, build_network, build_optimizer  # noqa: E402
from ddpm.cli import main as main_cli  # noqa: E402
from ddpm.config.presets import load_preset  # noqa: E402
from ddpm.training.precision import autocast, make_scaler  # noqa: E402

MATCH_TOLERANCE = 1e-3  # GPU vs CPU, one fp32 step (TF32 off): max |grad difference| / max |grad|
BF16_TOLERANCE = 0.05  # bf16 vs fp32 over 20 steps: mean |loss difference| / mean fp32 loss


@dataclass
class Plan:
    """What to run: the real check on a GPU, or every path with tiny shapes on the CPU."""

    device: str
    config: Config
    batch: int
    steps: int  # timed training steps per option set
    option_sets: dict = field(default_factory=dict)
    sample_n: int = 256
    sample_steps: dict = field(default_factory=lambda: {"ddpm": 50, "ddim": 50, "dpm++2m": 20})
    torchrun_backend_device: str = "cuda"
    default_budget: list = field(default_factory=lambda: ["--max-minutes", "2"])
    fid_args: list = field(default_factory=lambda: ["--n", "1000"])

    def __post_init__(self):
        self.config.data.channels, self.config.data.image_size = 3, self.config.data.image_size or 32  # CIFAR's shape

    @classmethod
    def gpu(cls) -> "Plan":
        return cls("cuda", load_preset("cifar10-ddpm"), batch=128, steps=30, option_sets={
            "fp32": {"precision": "fp32"},
            "bf16": {"precision": "bf16"},
            "bf16+channels_last": {"precision": "bf16", "channels_last": True},
            "bf16+channels_last+compile": {"precision": "bf16", "channels_last": True, "compile": True},
            "fp16+scaler": {"precision": "fp16"},
        })

    @classmethod
    def dry(cls) -> "Plan":
        config = load_preset("cifar10-ddpm").override({
            "model.channels": [8, 16], "model.attention": [False, True], "model.num_res": 1, "model.time_emb_dim": 16,
            "data.image_size": 8, "diffusion.timesteps": 50})
        return cls("cpu", config, batch=4, steps=3, option_sets={"fp32": {"precision": "fp32"},
                                                                 "bf16": {"precision": "bf16"}},
                   sample_n=4, sample_steps={"ddpm": 3, "ddim": 3, "dpm++2m": 3}, torchrun_backend_device="cpu",
                   default_budget=["--max-steps", "3", "--set", "train.grid_size=4"],
                   fid_args=["--n", "8", "--ref-n", "8"])


# ---- the checks ------------------------------------------------------------------------------


def check_device(plan: Plan, device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, memory_gib=round(properties.total_memory / 2**30, 1))
    size, seconds = (8192, 3.0) if device.type == "cuda" else (256, 0.3)
    info["bf16_matmul_tflops"] = round(matmul_rate(device, torch.bfloat16, size, seconds) / 1e12, 3)
    info["fp32_matmul_tflops"] = round(matmul_rate(device, torch.float32, size, seconds) / 1e12, 3)
    return info


def check_training(plan: Plan, device: torch.device, bf16_rate: float) -> dict:
    """Each option set: the same network, data and draws, `plan.steps` timed steps after warm-up."""
    results = {}
    for name, options in plan.option_sets.items():
        config = plan.config.override({f"train.{key}": value for key, value in options.items()})
        step, held_loss = _trainer(config, device, plan.batch, seed=0)
        before = held_loss()
        started = time.perf_counter()
        losses = [step(i) for i in range(2)]  # warm-up, and compilation
        _sync(device)
        compile_s = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        losses += [step(i) for i in range(2, 2 + plan.steps)]
        _sync(device)
        images_per_s = plan.steps * plan.batch / (time.perf_counter() - started)
        flops = _flops_per_image(config, device, plan.batch)
        after = held_loss()
        results[name] = {
            "images_per_s": round(images_per_s, 1),
            "tflops": round(images_per_s * flops / 1e12, 3),
            "fraction_of_bf16_matmul": round(images_per_s * flops / bf16_rate, 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            "warmup_s": round(compile_s, 1),
            "loss_first": round(before, 5), "loss_last": round(after, 5),  # on a fixed batch, t and noise
        }
        assert all(math.isfinite(x) for x in losses), f"{name}: a non-finite loss"
        assert after < before, f"{name}: the loss did not fall ({before:.5f} -> {after:.5f})"
    return results


def check_cpu_match(plan: Plan, device: torch.device) -> dict:
    """One fp32 step on `device` and on the CPU from the same weights, batch, t and noise."""
    config = plan.config.override({"model.dropout": 0.0})  # dropout draws differ between devices
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    grads = []
    for where in (device, torch.device("cpu")):
        torch.manual_seed(0)
        network = build_network(config).to(where)
        diffusion = build_diffusion(config).to(where)
        x0, t, noise = _batch(config, plan.batch, seed=1)
        loss = diffusion.loss(network, x0.to(where), t=t.to(where), noise=noise.to(where))
        loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten().cpu() for p in network.parameters()])))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    difference = ((grad_a - grad_b).abs().max() / grad_b.abs().max()).item()
    assert abs(loss_a - loss_b) <= MATCH_TOLERANCE * abs(loss_b) and difference <= MATCH_TOLERANCE, (loss_a, loss_b, difference)
    return {"loss_device": loss_a, "loss_cpu": loss_b, "max_grad_difference": difference, "tolerance": MATCH_TOLERANCE}


def check_bf16_follows_fp32(plan: Plan, device: torch.device) -> dict:
    curves = {}
    for precision in ("fp32", "bf16"):
        config = plan.config.override({"train.precision": precision, "model.dropout": 0.0})
        step, _ = _trainer(config, device, plan.batch, seed=0)
        curves[precision] = [step(i) for i in range(20)]
    gap = sum(abs(a - b) for a, b in zip(curves["bf16"], curves["fp32"])) / sum(curves["fp32"])
    assert gap <= BF16_TOLERANCE, gap
    return {"relative_loss_gap": round(gap, 4), "tolerance": BF16_TOLERANCE,
            "fp32_last": round(curves["fp32"][-1], 4), "bf16_last": round(curves["bf16"][-1], 4)}


def check_sampling(plan: Plan, device: torch.device) -> dict:
    config = plan.config
    network = build_network(config).to(device).eval()
    pipe = Pipeline(network, build_diffusion(config).to(device), config)
    results = {}
    for sampler, steps in plan.sample_steps.items():
        pipe(min(plan.sample_n, 8), sampler, steps, progress=False)  # warm-up
        _sync(device)
        started = time.perf_counter()
        images = pipe(plan.sample_n, sampler, steps, progress=False, batch_size=plan.sample_n)
        _sync(device)
        assert images.shape[0] == plan.sample_n
        results[f"{sampler}_{steps}"] = round(plan.sample_n / (time.perf_counter() - started), 1)
    return results


def check_torchrun(plan: Plan, work: Path) -> dict:
    """torchrun with one process (NCCL on a GPU, gloo on the CPU): a few steps, then a resume, both
    in one launch (the process group is closed after the first command and joined again)."""
    tiny = ["--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]", "--batch-size", "8",
            "--timesteps", "100", "--set", "sample.steps=3", "--set", "train.grid_size=4", "--no-progress",
            "--device", plan.torchrun_backend_device]
    run = work / "torchrun"
    commands = [["train", "--out", str(run), "--max-steps", "5", *tiny], ["train", "--resume", str(run), "--max-steps", "8"]]
    script = work / "torchrun_commands.py"
    script.write_text("import sys\nfrom ddpm.cli import main\n"
                      f"sys.exit(max(main(argv) for argv in {commands!r}))\n")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [int(row.split(",")[0]) for row in (run / "log.csv").read_text().split()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 8, steps
    return {"steps_logged": steps}


def check_consistency(plan: Plan, work: Path) -> dict:
    """Consistency tuning on the device: the target's pass replays the device's random state, so with
    dropout and r a hair below t the loss stays the bounded derivative; then a tiny teacher is tuned
    (`ddpm distill --method ect`) and its student samples in 1 and 2 steps."""
    from ddpm.training.consistency import ConsistencyTask, PairDraws

    device = torch.device(plan.device)
    config = Config().override({"model.channels": [8, 16], "model.attention": [False, True], "model.dropout": 0.5,
                                "data.image_size": 8})
    task = ConsistencyTask.__new__(ConsistencyTask)
    task.config, task.diffusion = config, build_diffusion(config).to(device)
    network = build_network(config).to(device).train()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    x0 = torch.rand(4, 1, 8, 8, device=device) * 2 - 1
    t = torch.tensor([0.05, 0.5, 3.0, 20.0], dtype=torch.float64, device=device)
    loss = task.loss(network, x0, PairDraws(None, t, t * (1 - 1e-6), torch.randn(x0.shape, device=device))).item()
    assert loss < 1e3, f"the target's dropout mask differs from the student's: loss {loss}"
    tiny = ["--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]", "--batch-size", "8",
            "--timesteps", "100", "--set", "train.grid_size=4", "--no-progress", "--device", plan.device]
    teacher, student = work / "ect-teacher", work / "ect-student"
    assert main_cli(["train", "--out", str(teacher), "--max-steps", "3", "--set", "model.dropout=0.2", *tiny]) == 0
    assert main_cli(["distill", "--method", "ect", "--run", str(teacher), "--out", str(student), "--max-steps", "4",
                     "--no-progress", "--device", plan.device]) == 0
    pipe = Pipeline.from_run(student, device=plan.device)
    shapes = [list(pipe(2, steps=k, progress=False).shape) for k in (1, 2)]
    return {"loss_at_a_tiny_gap": round(loss, 3), "sample_shapes": shapes}


def check_default(plan: Plan, work: Path) -> dict:
    """The CPU default (mnist5k) trained on this device, and its FID: quality per minute."""
    run = work / "mnist5k"
    device = ["--device", plan.device]
    assert main_cli(["train", "--out", str(run), *plan.default_budget, "--no-progress", *device]) == 0
    os.environ["DDPM_CACHE"] = str(work / "cache")  # this run's reference features stay in its folder
    assert main_cli(["eval", "--run", str(run), *plan.fid_args, "--json", str(run / "fid.json"), *device]) == 0
    scores = json.loads((run / "fid.json").read_text())
    last = (run / "log.csv").read_text().strip().splitlines()[-1].split(",")
    return {"steps": int(last[0]), "images_per_s": float(last[4]), "fid": round(scores["fid"], 2),
            "samples": scores["samples"], "reference": scores["reference"]}


# ---- helpers ---------------------------------------------------------------------------------


def _batch(config: Config, batch: int, seed: int):
    """Smooth random images of CIFAR shape (low-frequency noise, so the loss can fall), with t and noise."""
    g = torch.Generator().manual_seed(seed)
    size = config.data.image_size
    coarse = torch.rand(batch, 3, max(size // 8, 1), max(size // 8, 1), generator=g) * 2 - 1
    x0 = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    t = torch.randint(0, config.diffusion.timesteps, (batch,), generator=g)
    return x0, t, torch.randn(x0.shape, generator=g)


def _trainer(config: Config, device: torch.device, batch: int, seed: int):
    """A training step of `config` on one in-memory batch, step(i) -> loss, and held_loss(): the loss on
    that batch with fixed t and noise, the network in eval mode, to see training work whatever the draws."""
    tc = config.train
    torch.manual_seed(seed)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    network = build_network(config).to(device, memory_format=memory_format)
    model = torch.compile(network) if tc.compile else network
    diffusion = build_diffusion(config).to(device)
    optimizer = build_optimizer(network, tc)
    scaler = make_scaler(tc.precision, device)
    x0, t, noise = _batch(config, batch, seed)
    x0, t, noise = x0.to(device).contiguous(memory_format=memory_format), t.to(device), noise.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def step(i: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(tc.precision, device):
            loss = diffusion.loss(model, x0, generator=generator)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    @torch.no_grad()
    def held_loss() -> float:
        network.eval()
        loss = diffusion.loss(network, x0, t=t, noise=noise).item()
        network.train()
        return loss

    return step, held_loss


def _flops_per_image(config: Config, device: torch.device, batch: int) -> float:
    """Forward and backward FLOPs of one image, counted on the eager fp32 network."""
    network = build_network(config).to(device)
    x0, _, _ = _batch(config, batch, 0)
    with FlopCounterMode(display=False) as counter:
        build_diffusion(config).to(device).loss(network, x0.to(device)).backward()
    return counter.get_total_flops() / batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_checks(plan: Plan, work: Path) -> dict:
    """Every check in turn; one that fails is recorded with its error and the rest still run."""
    device = torch.device(plan.device)
    report: dict = {"plan": "dry-run" if plan.device == "cpu" else "gpu", "checks": {}}
    checks = [("device", lambda: check_device(plan, device))]
    checks += [("training", lambda: check_training(plan, device, 1e12 * report["checks"]["device"]["result"]["bf16_matmul_tflops"])),
               ("cpu_match", lambda: check_cpu_match(plan, device)),
               ("bf16_follows_fp32", lambda: check_bf16_follows_fp32(plan, device)),
               ("sampling_images_per_s", lambda: check_sampling(plan, device)),
               ("torchrun", lambda: check_torchrun(plan, work)),
               ("consistency", lambda: check_consistency(plan, work)),
               ("default_budget", lambda: check_default(plan, work))]
    for name, check in checks:
        started = time.perf_counter()
        try:
            entry = {"ok": True, "result": check()}
        except Exception as error:  # noqa: BLE001  every failure is reported, and the rest still run
            entry = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["checks"][name] = entry
        status = "ok  " if entry["ok"] else "FAIL"
        print(f"{status} {name:<24} {entry['seconds']:>6.1f} s  {json.dumps(entry.get('result', entry.get('error')))}",
              flush=True)
    report["ok"] = all(entry["ok"] for entry in report["checks"].values())
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every path on the CPU with tiny shapes")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to run every path on the CPU", file=sys.stderr)
        return 2
    plan = Plan.dry() if args.dry_run else Plan.gpu()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        report = run_checks(plan, Path(work))
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'all checks passed' if report['ok'] else 'some checks FAILED'} in {report['seconds']} s; report in {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
