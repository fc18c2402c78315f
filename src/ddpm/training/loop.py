"""The training loop (Ho et al. 2020, Algorithm 1), with the care a long run needs.

`train(config, out)` reads top to bottom: load the data, build the network, EMA and optimiser,
restore a checkpoint when resuming, then repeat {draw a batch, take a gradient step on the
denoising loss, update the EMA} until the step or wall-clock budget runs out, logging, sampling
and checkpointing along the way.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import AutoencoderRun, Config
from ..data.datasets import load_data
from ..data.imagedata import iterate_batches
from ..errors import InputError, TrainingDiverged
from ..factory import build_optimizer
from ..runtime.devices import resolve_device
from ..runtime.distributed import init_distributed
from ..storage.checkpoint import (
    RunDir,
    load_into,
    load_meta,
    load_state,
    load_weights,
    save_checkpoint,
)
from ..storage.files import plot_loss
from ..storage.lock import RunLock
from .ema import EMA
from .optim import make_lr_scheduler
from .precision import autocast, make_scaler
from .state import Clock, Log, rng_state, seed_everything, set_rng_state, stop_on_signal
from .tasks import make_task

MAX_SKIPPED = 10  # with train.nonfinite=skip: non-finite steps in a row before giving up


def train(config: "Config | AutoencoderRun", out: Path, *, resume: bool = False, progress: bool = True) -> RunDir:
    """Train the model that `config` describes; the run directory `out` receives everything.

    With `resume`, `out` must hold a run: training continues from its newest checkpoint, with the
    same data order and random numbers as if it had never stopped. Under torchrun every process
    calls this; they share the work of each step and rank 0 writes the files (distributed.py).
    One process writes a run at a time: a second one is refused before it writes anything
    (storage/lock.py).
    """
    lock = RunLock(out)  # taken just before the first write, held to the end
    try:
        return _train(config, RunDir(out), lock, resume, progress)
    finally:
        lock.release()  # the operating system also drops it when the process dies


def _train(config: "Config | AutoencoderRun", run: RunDir, lock: RunLock, resume: bool, progress: bool) -> RunDir:
    """The loop itself, top to bottom."""
    config.validate()
    tc = config.train
    ranks, device_name = init_distributed(tc.device)
    device = resolve_device(device_name)
    _check_batch_split(tc, ranks.world_size)
    seed_everything(tc.seed)

    # The data, and the config resolved against it (image size, channels; a latent run's autoencoder).
    d = config.data
    data = load_data(d.name, d.root, d.image_size, d.crop, d.channels)
    config.data.image_size, config.data.channels = data.image_size, data.channels
    task = make_task(config, data, device, resume, progress and ranks.is_main)

    # The network, its EMA and the optimiser.
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    network = task.network.to(device, memory_format=memory_format)
    ema = EMA(network, tc.ema_decay, tc.ema_warmup)
    optimizer = build_optimizer(network, tc)
    clock = Clock(tc.max_minutes)  # training time over the run's life; cosine decays to zero with it
    lr_schedule = make_lr_scheduler(optimizer, tc, clock.fraction)
    scaler = make_scaler(tc.precision, device)
    generator = torch.Generator(device=device).manual_seed(tc.seed)  # labels, timesteps and noise of the loss
    step, seconds_trained = 0, 0.0

    if resume:
        _take_lock(lock, ranks, device)
        step, seconds_trained = _restore(run, network, ema, optimizer, lr_schedule, scaler, generator)
        if ranks.is_main:  # from here on this process writes the run
            lock.announce()
            run.remove_grids_after(step)  # drawn after the checkpoint by the process that stopped
    else:
        _refuse_existing_run(run)
        ranks.barrier()  # every rank has looked before rank 0 creates the run directory
        if ranks.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
        _take_lock(lock, ranks, device, then=lambda: _refuse_existing_run(run))  # it may have appeared meanwhile
        if ranks.is_main:
            lock.announce()
            config.to_yaml(run.config_path)
    ranks.barrier()
    model = ranks.wrap(network, device)  # what the loss calls: DDP averages the gradients across ranks
    if tc.compile:
        model = torch.compile(model)

    log = Log(run.log_path, step, run.tensorboard if tc.tensorboard else None) if ranks.is_main else None
    # uint8 batches in the order of (seed, step); small data sets live on the device, large ones stream.
    batches = iterate_batches(task.data, tc.batch_size, tc.seed, step, device, config.data.workers)
    clock.start(seconds_trained)
    started, images_seen, skipped = time.monotonic(), 0, 0
    budget = f"training (stops at step {tc.max_steps}" + (f" or after {tc.max_minutes:g} min)" if tc.max_minutes else ")")
    bar = tqdm(total=tc.max_steps, initial=step, desc=budget, unit="step", disable=not (progress and ranks.is_main),
               dynamic_ncols=True)
    with stop_on_signal() as stop:
        while step < tc.max_steps and not clock.tick(ranks, device, stop.requested is not None):
            # The global batch with its flips, labels, timesteps and noise: the same draws on every rank.
            images, classes = next(batches)
            x0 = task.batch(images, generator)
            draws = task.draws(x0, classes, generator, step)

            # This rank's share, in grad_accum micro-batches; the gradient is that of the mean loss.
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=device)
            for i, (x0_i, *draws_i) in enumerate(_micro_batches(ranks, tc.grad_accum, x0, *draws)):
                with _accumulating(model, i < tc.grad_accum - 1), autocast(tc.precision, device):
                    x0_i = x0_i.contiguous(memory_format=memory_format)
                    micro_loss = task.loss(model, x0_i, *draws_i) / tc.grad_accum
                scaler.scale(micro_loss).backward()
                loss += micro_loss.detach()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), tc.grad_clip or math.inf)
            loss = ranks.mean(loss)

            # The update, unless the loss or gradient is not finite (fp16's scaler skips overflows itself).
            if torch.isfinite(loss) and (torch.isfinite(grad_norm) or scaler.is_enabled()):
                scaler.step(optimizer)
                scaler.update()
                ema.update(network)
                if log:
                    log.add(loss, grad_norm)
                skipped = 0
            elif tc.nonfinite == "skip" and skipped < MAX_SKIPPED:
                skipped += 1  # no update: the weights, optimiser and EMA stay as they were
                if ranks.is_main:
                    tqdm.write(f"step {step + 1}: the loss became {loss.item()}; step skipped ({skipped} in a row)")
            else:
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at step {step + 1}"
                    + (f" after {skipped} skipped steps in a row" if skipped else "")
                    + f"; the last checkpoint ({run.latest() or 'none'}) is intact; try a lower --lr or "
                    f"train.grad_clip, or --set train.nonfinite=skip"
                )
            lr_schedule.step()
            step += 1
            images_seen += len(x0)
            bar.update(1)

            if not ranks.is_main:
                continue
            if step % tc.log_every == 0 and log.count:
                elapsed = time.monotonic() - started
                row = log.write(step, lr_schedule.get_last_lr()[0], images_seen / elapsed, elapsed / 60)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2g}")
            if step % tc.sample_every == 0:
                log.images(step, task.picture(run, ema.model, step))
            if step % tc.checkpoint_every == 0:
                _checkpoint(run, step, task, network, ema, optimizer, lr_schedule, scaler, generator, clock,
                            tc.keep_checkpoints)
    bar.close()

    if ranks.is_main:
        log.flush(step, lr_schedule.get_last_lr()[0], images_seen / max(time.monotonic() - started, 1e-9),
                  (time.monotonic() - started) / 60)
        _checkpoint(run, step, task, network, ema, optimizer, lr_schedule, scaler, generator, clock, tc.keep_checkpoints)
        if step % tc.sample_every:
            log.images(step, task.picture(run, ema.model, step))
        log.close()
        plot_loss(run.log_path, run.loss_plot_path)
        if stop.requested:
            tqdm.write(f"stopped by {stop.requested} at step {step}; checkpoint written. "
                       f"Continue with: ddpm train --resume {run.path}")
    ranks.barrier()  # the final checkpoint exists before any rank returns
    return run


def _check_batch_split(tc, world_size: int) -> None:
    parts = world_size * tc.grad_accum
    if tc.batch_size % parts:
        raise InputError(f"train.batch_size ({tc.batch_size}) is the global batch and must split evenly into "
                         f"{world_size} processes x {tc.grad_accum} micro-batches; use a multiple of {parts}")


def _micro_batches(ranks, count: int, *tensors):
    """This rank's shard of each global-batch tensor (None stays None), cut into `count` micro-batches."""
    shards = [None if x is None else ranks.shard(x).chunk(count) for x in tensors]
    for i in range(count):
        yield [None if shard is None else shard[i] for shard in shards]


def _accumulating(model: torch.nn.Module, still: bool):
    """While micro-batches remain, DDP need not average gradients across ranks yet."""
    return model.no_sync() if still and hasattr(model, "no_sync") else nullcontext()


# ---- starting, checkpointing and resuming ----------------------------------------------------


def _take_lock(lock: RunLock, ranks, device: torch.device, then=None) -> None:
    """Rank 0 takes the run's lock for every rank (and runs `then` holding it); if it cannot, every
    rank stops, rank 0 with the message that names the holder."""
    error = None
    if ranks.is_main:
        try:
            lock.acquire()
            if then is not None:
                then()
        except InputError as refused:
            error = refused
    if ranks.max([float(error is not None)], device)[0]:
        raise error or InputError(f"rank 0 could not take the lock of run {lock.path.parent}; see its message")


def _refuse_existing_run(run: RunDir) -> None:
    """A new run never overwrites an existing one."""
    if run.latest() is not None or run.config_path.exists():
        raise InputError(f"{run.path} already holds a run; continue it with --resume {run.path} "
                         f"or choose another --out")


def _checkpoint(run, step, task, network, ema, optimizer, lr_schedule, scaler, generator, clock, keep) -> None:
    state = {
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "grad_scaler": scaler.state_dict(),
        "rng": rng_state(generator),
    }
    tensors = {"model": network.state_dict(), "ema": ema.model.state_dict()}
    meta = {"ema_updates": ema.updates, "train_seconds": round(clock.seconds, 3), **task.meta(ema.model)}
    save_checkpoint(run, step, tensors, state, meta, keep=keep)


def _restore(run, network, ema, optimizer, lr_schedule, scaler, generator) -> tuple[int, float]:
    """Load the newest checkpoint into the training state; returns its step and training seconds."""
    folder = run.latest()
    if folder is None:
        raise InputError(f"cannot resume {run.path}: it has no complete checkpoint")
    state = load_state(folder)
    load_into(network, load_weights(folder, "model"), folder, run.config_path)
    load_into(ema.model, load_weights(folder, "ema"), folder, run.config_path)
    meta = load_meta(folder)
    ema.updates = meta["ema_updates"]
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    if state.get("grad_scaler") and scaler.is_enabled():  # empty unless the run trained in fp16
        scaler.load_state_dict(state["grad_scaler"])
    set_rng_state(state["rng"], generator)
    return meta["step"], meta.get("train_seconds", 0.0)  # runs from before the clock have none
