"""The training loop (Ho et al. 2020, Algorithm 1), with the care a long run needs.

Two ways in: `train(config, out)`, and `distill(teacher, out)`, which trains a student through the
same loop (distill.py). `train` reads top to bottom: load the data, build the network, EMA and optimiser,
restore a checkpoint when resuming, then repeat {draw a batch, take a gradient step on the
denoising loss, update the EMA} until the step or wall-clock budget runs out, logging, sampling
and checkpointing along the way.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write, file_sha256
from ..config import OWN, UNCAPPED_STEPS, AutoencoderRun, Config, own_autoencoder
from ..data.datasets import load_data
from ..data.imagedata import iterate_batches
from ..data.latents import encode_data
from ..errors import InputError, TrainingDiverged, WriteFailed
from ..factory import build_optimizer, load_codec, load_run, own_autoencoder_dir
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
from .distill import DistillTask, student_config
from .ema import EMA
from .optim import make_lr_scheduler
from .precision import autocast, make_scaler
from ..signals import stop_on_signal
from .state import Clock, Log, rng_state, seed_everything, set_rng_state
from .tasks import AutoencoderTask, DiffusionTask

MAX_SKIPPED = 10  # with train.nonfinite=skip: non-finite steps in a row before giving up


def train(config: "Config | AutoencoderRun", out: Path, *, resume: bool = False, progress: bool = True,
          resume_if_exists: bool = False) -> RunDir:
    """Train the model that `config` describes; the run directory `out` receives everything.

    With `resume`, `out` must hold a run: training continues from its newest intact checkpoint, with
    the same data order and random numbers as if it had never stopped. With `resume_if_exists`, the
    same call starts the run or resumes it (a requeued job needs no other command): `config` must
    then agree with the run's own, but for its budget (config.RESUMABLE). Under torchrun every process
    calls this; they share the work of each step and rank 0 writes the files (distributed.py).
    One process writes a run at a time: a second one is refused before it writes anything
    (storage/lock.py).
    """
    run = RunDir(out)
    restart = False
    if resume_if_exists and not resume and run.config_path.is_file():
        config = run.load_config().requeued(config, str(run.path))
        resume = run.newest_intact()[0] is not None
        restart = not resume  # its config is here, but no intact checkpoint: it starts again
    lock = RunLock(out)  # taken just before the first write, held to the end
    try:
        return _train(config, run, lock, resume, progress, restart)
    except OSError as error:  # any other write: the log, a grid, TensorBoard's events
        raise WriteFailed(f"training stopped: {error.strerror or error} writing {error.filename or 'a file'}; the newest "
                          f"intact checkpoint is {run.newest_intact()[0] or 'none yet'}; make room and run the same "
                          f"command again") from None
    finally:
        lock.release()  # the operating system also drops it when the process dies


def distill(teacher: str, out: str, steps: int = 4, from_steps: int = 64, phase_steps=None, phase_minutes=None,
            guidance=None, checkpoint=None, overrides=None, progress: bool = True):
    """Distil the run `teacher` into a student run `out` that samples in `steps` DDIM steps, halving from
    `from_steps`. Each phase's budget is `phase_steps` or `phase_minutes`; with neither, each phase gets
    an equal share of the teacher's own training time, so that distilling costs no more than training
    did. Everything is checked before anything is written."""
    loaded = load_run(teacher, checkpoint, "ema")  # a diffusion run with an intact checkpoint, or one line
    config = loaded.config
    if guidance is not None and not config.model.num_classes:
        raise InputError(f"--guidance needs a class-conditional teacher; {teacher} was trained without classes")
    if phase_steps is None and phase_minutes is None:
        seconds = loaded.meta.get("train_seconds", 0.0)
        halvings = max(1, from_steps.bit_length() - steps.bit_length())
        if not seconds:
            raise InputError(f"{teacher} records no training time to share out; give --phase-steps or --phase-minutes")
        phase_minutes = round(seconds / 60 / halvings, 3)
    student = student_config(config, str(teacher), loaded.meta["step"], file_sha256(loaded.folder / "ema.safetensors"),
                             steps, from_steps, phase_steps, phase_minutes, guidance).override(overrides or {})
    student.validate()
    return train(student, out, progress=progress)


@dataclass
class Trainer:
    """Everything a step changes and a checkpoint keeps: the network, its EMA, the optimiser and its
    LR schedule, the gradient scaler, the generator of the loss's random numbers, the clock, the step."""

    network: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    clock: Clock
    step: int = 0
    skipped: int = 0  # non-finite steps in a row

    @classmethod
    def build(cls, task, tc, device: torch.device, spent: float = 0.0) -> "Trainer":
        """The state `task` trains, fresh; its clock holds the budget less the `spent` seconds of an
        earlier stage (a run's own autoencoder)."""
        memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        network = task.network.to(device, memory_format=memory_format)
        optimizer = build_optimizer(network, tc)
        minutes = tc.max_minutes and tc.max_minutes - spent / 60
        if minutes is not None and minutes <= 0:
            raise InputError(f"the autoencoder took {spent / 60:.2f} of the run's {tc.max_minutes:g} minutes, leaving "
                             f"none for the diffusion model; resume with a longer --max-minutes")
        clock = Clock(minutes)  # training time over the run's life; cosine decays to zero with it
        lr_schedule = make_lr_scheduler(optimizer, tc, clock.fraction) if task.lr_factor is None else \
            torch.optim.lr_scheduler.LambdaLR(optimizer, task.lr_factor)
        return cls(network, EMA(network, tc.ema_decay, tc.ema_warmup), optimizer, lr_schedule,
                   make_scaler(tc.precision, device), torch.Generator(device=device).manual_seed(tc.seed), clock)


def _train(config: "Config | AutoencoderRun", run: RunDir, lock: RunLock, resume: bool, progress: bool,
           restart: bool = False) -> RunDir:
    """The loop itself, top to bottom."""
    config.validate()
    tc = config.train
    ranks, device_name = init_distributed(tc.device)
    device = resolve_device(device_name)
    _check_batch_split(tc, ranks.world_size)
    seed_everything(tc.seed)

    # The data, the task (diffusion or autoencoder) with the config resolved against the data, and
    # the trainable state, fresh or restored from the newest checkpoint. A run that trains its own
    # autoencoder does that first, under the same clock.
    data = load_data(config.data)
    spent = 0.0
    if isinstance(config, Config) and config.latent.autoencoder == OWN:
        stage = _own_autoencoder(config, data, run, lock, ranks, device, resume, restart, progress)
        if stage is None:  # stopped by a signal: its checkpoint is written
            return run
        resume, restart, spent = stage
        seed_everything(tc.seed)  # the same state whether the first stage ran in this process or not
    task = make_task(config, data, device, resume, progress and ranks.is_main, run.path)
    trainer = Trainer.build(task, tc, device, spent)
    task.attach(trainer)
    seconds_trained = _start(run, lock, ranks, device, task, trainer, resume, restart)
    model = ranks.wrap(trainer.network, device)  # what the loss calls: DDP averages the gradients across ranks
    if tc.compile:
        model = torch.compile(model)

    log = Log(run.log_path, trainer.step, run.tensorboard if tc.tensorboard else None) if ranks.is_main else None
    # uint8 batches in the order of (seed, step); small data sets live on the device, large ones stream.
    batches = iterate_batches(task.data, tc.batch_size, tc.seed, trainer.step, device, task.config.data.workers)
    trainer.clock.start(seconds_trained)
    started, images_seen = time.monotonic(), 0
    minutes = trainer.clock.limit / 60
    capped = tc.max_steps < UNCAPPED_STEPS
    bounds = ([f"at step {tc.max_steps}"] if capped else []) + ([f"after {minutes:.3g} min"] if tc.max_minutes else [])
    bar = tqdm(total=tc.max_steps if capped else None, initial=trainer.step,
               desc=f"training (stops {' or '.join(bounds)})", unit="step",
               disable=not (progress and ranks.is_main), dynamic_ncols=True)
    with stop_on_signal() as stop:
        while trainer.step < tc.max_steps and not trainer.clock.tick(ranks, device, stop.requested is not None):
            if task.phase_done(trainer):  # distillation: a halving ends; its student is kept
                if ranks.is_main:
                    _checkpoint(run, task, trainer, tc.keep_checkpoints)
                task.next_phase(trainer)
            images, classes = next(batches)
            loss, grad_norm = _step(task, model, trainer, images, classes, ranks, tc, device)
            _update(trainer, loss, grad_norm, tc, run, ranks, log)
            images_seen += len(images)
            bar.update(1)
            if ranks.is_main:
                _every(trainer, task, run, log, bar, tc, images_seen / (time.monotonic() - started),
                       (time.monotonic() - started) / 60)
        stopped_by = stop.requested
    bar.close()

    if ranks.is_main:
        elapsed = time.monotonic() - started
        log.flush(trainer.step, trainer.lr_schedule.get_last_lr()[0], images_seen / max(elapsed, 1e-9), elapsed / 60)
        _checkpoint(run, task, trainer, tc.keep_checkpoints)
        if trainer.step % tc.sample_every:
            log.images(trainer.step, task.picture(run, trainer.ema.model, trainer.step))
        log.close()
        plot_loss(run.log_path, run.loss_plot_path)
        if stopped_by or trainer.clock.signalled:
            command = "train" if isinstance(config, Config) else "train-autoencoder"
            tqdm.write(f"stopped by {stopped_by or 'a signal to another rank'} at step {trainer.step}; checkpoint written. "
                       f"Continue with: ddpm {command} --resume {run.path}")
    ranks.barrier()  # the final checkpoint exists before any rank returns
    return run


def _step(task, model, trainer: Trainer, images, classes, ranks, tc, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step's forward and backward passes: the global batch with its flips, labels,
    timesteps and noise (the same draws on every rank), this rank's share of it in grad_accum
    micro-batches. Returns the mean loss over the ranks and the clipped gradient's norm."""
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    x0 = task.batch(images, trainer.generator)
    draws = task.draws(x0, classes, trainer.generator, trainer.step)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=device)
    for i, (x0_i, *draws_i) in enumerate(_micro_batches(ranks, tc.grad_accum, x0, *draws)):
        with _accumulating(model, i < tc.grad_accum - 1), autocast(tc.precision, device):
            micro_loss = task.loss(model, x0_i.contiguous(memory_format=memory_format), *draws_i) / tc.grad_accum
        trainer.scaler.scale(micro_loss).backward()
        loss += micro_loss.detach()
    trainer.scaler.unscale_(trainer.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), tc.grad_clip or math.inf)
    return ranks.mean(loss), grad_norm


def _update(trainer: Trainer, loss, grad_norm, tc, run: RunDir, ranks, log) -> None:
    """The update, unless the loss or gradient is not finite (fp16's scaler skips overflows itself)."""
    if torch.isfinite(loss) and (torch.isfinite(grad_norm) or trainer.scaler.is_enabled()):
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.ema.update(trainer.network)
        if log:
            log.add(loss, grad_norm)
        trainer.skipped = 0
    elif tc.nonfinite == "skip" and trainer.skipped < MAX_SKIPPED:
        trainer.skipped += 1  # no update: the weights, optimiser and EMA stay as they were
        if ranks.is_main:
            tqdm.write(f"step {trainer.step + 1}: the loss became {loss.item()}; step skipped "
                       f"({trainer.skipped} in a row)")
    else:
        raise TrainingDiverged(
            f"the loss became {loss.item()} at step {trainer.step + 1}"
            + (f" after {trainer.skipped} skipped steps in a row" if trainer.skipped else "")
            + f"; the last checkpoint ({run.latest() or 'none'}) is intact; try a lower --lr or "
            f"train.grad_clip, or --set train.nonfinite=skip"
        )
    trainer.lr_schedule.step()
    trainer.step += 1


def _every(trainer: Trainer, task, run: RunDir, log, bar, tc, images_per_s: float, minutes: float) -> None:
    """Rank 0's periodic work: the log row, the sample grid, the checkpoint."""
    step = trainer.step
    if step % tc.log_every == 0 and log.count:
        row = log.write(step, trainer.lr_schedule.get_last_lr()[0], images_per_s, minutes)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2g}")
    if step % tc.sample_every == 0:
        log.images(step, task.picture(run, trainer.ema.model, step))
    if step % tc.checkpoint_every == 0:
        _checkpoint(run, task, trainer, tc.keep_checkpoints)


def make_task(config, data, device: torch.device, resume: bool, progress: bool, run: Path):
    """The task `config` describes for the run directory `run`: an autoencoder's, a distillation's,
    or the diffusion model's. Its `config` is resolved against `data` (a copy: the image size and
    channels the data has, a latent run's autoencoder)."""
    config = config.override({"data.image_size": data.image_size, "data.channels": data.channels})
    if isinstance(config, AutoencoderRun):
        return AutoencoderTask(config, data)
    if config.distill.teacher is not None:
        return DistillTask(config, data, device, resume, progress, run)
    return DiffusionTask(config, data, device, resume, progress, run)


# ---- a run's own autoencoder -------------------------------------------------------------------

OWN_STAGE = "autoencoder.json"  # written when a run's own autoencoder is trained and the data encoded


def _own_autoencoder(config: Config, data, run: RunDir, lock: RunLock, ranks, device: torch.device, resume: bool,
                     restart: bool, progress: bool) -> "tuple[bool, bool, float] | None":
    """The first stage of a run with latent.autoencoder: own. Take the run (a new one gets its
    config.yaml now, so that a crash in this stage resumes with --resume RUN), train the
    autoencoder into RUN/autoencoder (config.own_autoencoder), or resume it there, and encode the
    training set into the latent cache. RUN/autoencoder.json records the seconds both took, which
    the second stage's clock takes off the run's budget. Returns how the second stage starts,
    (resume, restart, seconds spent), or None when a signal stopped the autoencoder."""
    stage = run.path / OWN_STAGE
    autoencoder = own_autoencoder(config.override({"data.image_size": data.image_size})).validate()
    _create(run, lock, ranks, device, new=not (resume or restart))
    if ranks.is_main and not (resume or restart):
        config.to_yaml(run.config_path)
    if not stage.is_file():
        folder = own_autoencoder_dir(run.path)
        if ranks.is_main:
            tqdm.write(f"ddpm: the run's own autoencoder first (f = {autoencoder.autoencoder.factor}, "
                       + (f"{autoencoder.train.max_minutes:.3g} min" if autoencoder.train.max_minutes else
                          f"{autoencoder.train.max_steps} steps") + f"), in {folder}")
        train(autoencoder, folder, resume_if_exists=True, progress=progress)
        meta = load_meta(RunDir(folder).newest_intact()[0])
        trained, limit = meta.get("train_seconds", 0.0), 60 * (autoencoder.train.max_minutes or math.inf)
        if meta["step"] < autoencoder.train.max_steps and trained < limit:
            if ranks.is_main:
                tqdm.write(f"the run's own autoencoder stopped before its budget; continue the run with: "
                           f"ddpm train --resume {run.path}")
            return None
        started = time.monotonic()
        codec = load_codec(str(folder), device=device)
        encode_data(codec, data, config.data.flip, device, progress and ranks.is_main,
                    moments=config.latent.posterior == "sample")
        if ranks.is_main:
            record = {"seconds": round(trained + time.monotonic() - started, 3), "autoencoder_seconds": trained}
            atomic_write(stage, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
        ranks.barrier()
    spent = json.loads(stage.read_text())["seconds"]
    resume = run.newest_intact()[0] is not None  # the diffusion model's own checkpoints
    return resume, not resume, spent


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


def _start(run: RunDir, lock: RunLock, ranks, device: torch.device, task, trainer: Trainer, resume: bool,
           restart: bool = False) -> float:
    """Take the run for this process: restore its newest intact checkpoint, or create it (or, to
    `restart` a run that has its config but no checkpoint yet, take it over) and write its resolved
    config. Returns the seconds the run has trained before."""
    seconds = 0.0
    if resume:
        _take_lock(lock, ranks, device)
        seconds = _restore(run, trainer, ranks, task)
        if ranks.is_main:  # from here on this process writes the run
            lock.announce()
            run.remove_grids_after(trainer.step)  # drawn after the checkpoint by the process that stopped
    else:
        _create(run, lock, ranks, device, new=not restart)
        if ranks.is_main:
            for bad, reason in run.newest_intact()[1] if restart else []:
                tqdm.write(f"ddpm: {reason}; set aside as {run.set_aside(bad).name}, starting again")
            run.remove_grids_after(0)  # a restart's earlier attempt drew some
            task.config.to_yaml(run.config_path)
    ranks.barrier()
    return seconds


def _create(run: RunDir, lock: RunLock, ranks, device: torch.device, new: bool) -> None:
    """Create the run directory and take its lock for this process; a `new` run refuses a
    directory that holds a run already, before and after taking the lock."""
    refuse = (lambda: _refuse_existing_run(run)) if new else lambda: None
    refuse()
    ranks.barrier()  # every rank has looked before rank 0 creates the run directory
    if ranks.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
    _take_lock(lock, ranks, device, then=refuse)  # it may have appeared meanwhile
    if ranks.is_main:
        lock.announce()


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


def _checkpoint(run: RunDir, task, trainer: Trainer, keep: int) -> None:
    state = {
        "optimizer": trainer.optimizer.state_dict(),
        "lr_schedule": trainer.lr_schedule.state_dict(),
        "grad_scaler": trainer.scaler.state_dict(),
        "rng": rng_state(trainer.generator),
    }
    tensors = {"model": trainer.network.state_dict(), "ema": trainer.ema.model.state_dict(), **task.tensors()}
    meta = {"ema_updates": trainer.ema.updates, "train_seconds": round(trainer.clock.seconds, 3),
            **task.meta(trainer.ema.model)}
    save_checkpoint(run, trainer.step, tensors, state, meta, keep=keep)


def _restore(run: RunDir, trainer: Trainer, ranks, task) -> float:
    """Load the newest intact checkpoint into the training state; returns its training seconds. A
    damaged one (its files changed after they were written) is set aside, and said so: resuming
    then costs the steps since the intact one, never correctness."""
    folder, damaged = run.newest_intact()
    if folder is None:  # refused as it is: nothing is moved
        raise InputError(f"cannot resume {run.path}: it has no intact checkpoint"
                         + (f" ({damaged[0][1]})" if damaged else ""))
    ranks.barrier()  # every rank has checked before rank 0 moves anything
    for bad, reason in damaged:
        if ranks.is_main:
            tqdm.write(f"ddpm: {reason}; set aside as {run.set_aside(bad).name}, resuming from {folder.name}")
    state = load_state(folder)
    load_into(trainer.network, load_weights(folder, "model"), folder, run.config_path)
    load_into(trainer.ema.model, load_weights(folder, "ema"), folder, run.config_path)
    meta = load_meta(folder)
    trainer.ema.updates = meta["ema_updates"]
    if "optimizer" not in state:  # an imported model (ddpm import): fine-tuning starts its optimiser afresh
        tqdm.write(f"{folder} holds weights only (imported from {meta.get('imported_from', 'elsewhere')}); "
                   f"training starts a fresh optimiser from them")
    else:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("grad_scaler") and trainer.scaler.is_enabled():  # empty unless the run trained in fp16
            trainer.scaler.load_state_dict(state["grad_scaler"])
        set_rng_state(state["rng"], trainer.generator)
    trainer.step = meta["step"]
    task.restore(folder, meta)
    return meta.get("train_seconds", 0.0)  # runs from before the clock have none
