"""Several processes (torchrun, gloo on CPU), micro-batches and mixed precision all compute the
same step as one process with the whole batch."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from helpers import TINY, tiny_config, TORCHRUN
from ddpm import train
from ddpm.storage.checkpoint import RunDir, load_state
from ddpm.cli import main




def _assert_same_step(a, b, rtol=1e-4):
    """Two runs took the same optimiser step: the same first moment (the gradient) and weights."""
    moments = [load_state(run.latest())["optimizer"]["state"] for run in (a, b)]
    for key in moments[0]:
        m0, m1 = moments[0][key]["exp_avg"], moments[1][key]["exp_avg"]
        assert torch.allclose(m0, m1, rtol=rtol, atol=1e-7 * m0.abs().max()), key
    w0, w1 = (load_file(run.latest() / "model.safetensors") for run in (a, b))
    assert all(torch.allclose(w0[k], w1[k], atol=1e-5) for k in w0)


def test_torchrun_two_ranks_equal_one_process_and_resume_alone(tmp_path):
    # With a learned loss weighting, which trains beside the network, outside DDP: its gradient too is averaged.
    args = ["--max-steps", "1", *TINY, "--set", "train.log_every=1", "--set", "diffusion.loss_weighting=learned"]
    single = tmp_path / "single"
    assert main(["train", "--out", str(single), *args]) == 0
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run([*TORCHRUN, "train", "--out", "ddp", *args], cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = work / "ddp"
    _assert_same_step(RunDir(single), RunDir(ddp))
    # Only rank 0 wrote: the same files as the single process, and nothing else in the working directory.
    # (TensorBoard names its event file after the time and the process: compare how many there are)
    files = lambda root: sorted(re.sub(r"tfevents\..*", "tfevents", str(p.relative_to(root)))
                                for p in root.rglob("*") if p.is_file())
    assert files(ddp) == files(single)
    assert [p.name for p in work.iterdir()] == ["ddp"]
    assert result.stdout.count("run written to") == 1
    # The two-rank run resumes in one process.
    assert main(["train", "--resume", str(ddp), "--max-steps", "3", "--no-progress"]) == 0
    with open(ddp / "log.csv", newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_torchrun_trains_a_latent_run_as_one_process_does(tmp_path):
    """Every rank encodes the training set into the same cache file; the step is one process's."""
    env = {**os.environ, "DDPM_CACHE": str(tmp_path / "cache")}
    ae = tmp_path / "ae"
    assert main(["train-autoencoder", "--data", "digits", "--image-size", "16", "--widths", "[8,16]", "--z-channels", "2",
                 "--max-steps", "2", "--batch-size", "8", "--device", "cpu", "--out", str(ae), "--no-progress"]) == 0
    args = ["--data", "digits", "--image-size", "16", "--autoencoder", str(ae), "--max-steps", "1", *TINY]
    result = subprocess.run([*TORCHRUN, "train", "--out", str(tmp_path / "ddp"), *args], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = list((tmp_path / "cache" / "latents").iterdir())
    assert cached and not [p for p in cached if p.name.startswith(".tmp-")]  # written, whole, no leftovers
    single = tmp_path / "single"
    assert subprocess.run([sys.executable, "-m", "ddpm", "train", "--out", str(single), *args], env=env).returncode == 0
    _assert_same_step(RunDir(single), RunDir(tmp_path / "ddp"))


def test_torchrun_trains_a_run_with_its_own_autoencoder_as_one_process_does(tmp_path):
    """Both stages under two ranks: the autoencoder's step and then the diffusion model's are one
    process's, and rank 0 alone writes both run directories and the stage's record."""
    env = {**os.environ, "DDPM_CACHE": str(tmp_path / "cache")}
    args = ["--data", "digits", "--image-size", "16", "--autoencoder", "own", "--set", "latent.own_widths=[8,16]",
            "--set", "latent.own_steps=1", "--max-steps", "1", *TINY]
    result = subprocess.run([*TORCHRUN, "train", "--out", str(tmp_path / "ddp"), *args], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    single = tmp_path / "single"
    assert subprocess.run([sys.executable, "-m", "ddpm", "train", "--out", str(single), *args], env=env).returncode == 0
    ddp = tmp_path / "ddp"
    _assert_same_step(RunDir(single / "autoencoder"), RunDir(ddp / "autoencoder"))
    _assert_same_step(RunDir(single), RunDir(ddp))
    files = lambda root: sorted(re.sub(r"tfevents\..*", "tfevents", str(p.relative_to(root)))
                                for p in root.rglob("*") if p.is_file())
    assert files(ddp) == files(single) and "autoencoder.json" in files(ddp)
    assert result.stdout.count("the run's own autoencoder first") == 1


def test_torchrun_sampling_shares_batches_and_matches_one_process(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--max-steps", "1", *TINY]) == 0
    sample = ["sample", "--run", str(run), "--n", "7", "--batch-size", "2", "--steps", "3", "--device", "cpu"]
    assert main([*sample, "--out", str(tmp_path / "one.npz"), "--grid", str(tmp_path / "one.png")]) == 0
    result = subprocess.run([*TORCHRUN, *sample, "--out", str(tmp_path / "two.npz"), "--grid", str(tmp_path / "two.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (np.load(tmp_path / f"{name}.npz")["arr_0"] for name in ("one", "two"))
    assert one.shape == (7, 28, 28, 1) and np.array_equal(one, two)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    config = tiny_config(**{"train.max_steps": 1, "train.batch_size": 8})
    whole = train(config, tmp_path / "whole", progress=False)
    micro = train(config.override({"train.grad_accum": 4}), tmp_path / "micro", progress=False)
    _assert_same_step(whole, micro)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    # 8x8 digits: CPUs without bf16 units emulate it, ~50x slower than fp32 at 28x28.
    config = tiny_config(**{"data.name": "digits", "train.max_steps": 60, "train.batch_size": 32, "train.lr": 3e-3,
                            "train.warmup_steps": 5, "train.precision": "bf16"})
    run = train(config, tmp_path / "run", progress=False)
    with open(run.log_path, newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_fp16_trains_with_a_gradient_scaler_and_resumes_it(tmp_path):
    config = tiny_config(**{"train.max_steps": 2, "train.precision": "fp16"})
    run = train(config, tmp_path / "run", progress=False)
    scaler = load_state(run.latest())["grad_scaler"]
    assert scaler["scale"] > 0
    train(config.override({"train.max_steps": 3}), run.path, resume=True, progress=False)


def test_a_batch_that_does_not_split_is_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), *TINY, "--grad-accum", "3"]) == 2
    assert "must be divisible by train.grad_accum (3)" in capsys.readouterr().err


def _leave(rank: int, store: str, times: str, finished: bool) -> None:
    """A rank that joins, takes one collective, and leaves: rank 1 two seconds after rank 0. Rank 1's
    command always finished; rank 0's as `finished` says."""
    import time

    import torch.distributed as dist

    from ddpm.runtime import distributed

    distributed.EXIT_WAIT = distributed.timedelta(seconds=4)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    dist.barrier()
    if rank == 1:
        time.sleep(2)
    arrived = time.time()
    distributed.close_distributed(finished or rank == 1)
    with open(f"{times}.{rank}", "w") as handle:
        handle.write(f"{arrived} {time.time()}")


def test_a_finished_rank_leaves_the_process_group_only_with_the_others(tmp_path):
    """Gloo can abort a rank still in the last collective when a peer disconnects (pytorch/gloo#155),
    so a finished rank waits for all; one that failed, or that waits for a rank that never comes,
    leaves anyway."""
    for finished in (True, False):
        times = tmp_path / f"times-{finished}"
        torch.multiprocessing.spawn(_leave, args=(str(tmp_path / f"store-{finished}"), str(times), finished),
                                    nprocs=2)
        (_, left_0), (arrived_1, _) = (map(float, Path(f"{times}.{rank}").read_text().split()) for rank in (0, 1))
        assert (left_0 >= arrived_1) == finished, (left_0, arrived_1)
