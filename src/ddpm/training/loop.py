"""The training loop (Ho et al. 2020, Algorithm 1), with the care a long run needs.

`train(config, out)` trains any run: a diffusion model, an autoencoder, or a student that `distill`
(distill.py) configured, each a task (tasks.py; a student method's in its own module). `train` reads top to
bottom: load the data, build the network, EMA and optimiser, restore a checkpoint when resuming,
then repeat {draw a batch, take a gradient step on the task's loss, update the EMA} until the step
or wall-clock budget runs out, logging, sampling and checkpointing along the way.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import OWN, AutoencoderRun, Config
from ..data.datasets import load_data
from ..data.imagedata import iterate_batches
from ..errors import InputError, TrainingDiverged, WriteFailed
from ..factory import build_optimizer
from ..config.recipe import requeued
from ..runtime.devices import resolve_device
from ..runtime.distributed import init_distributed
from ..runtime.signals import stop_on_signal
from ..storage.checkpoint import RunDir
from ..storage.files import plot_loss
from ..storage.lock import RunLock
from ..registry import STUDENTS, resolve
from .ema import EMA, PowerEMA
from .precision import autocast, make_scaler
from .run import Run, Start
from .state import Clock, Log, seed_everything
from .tasks import AutoencoderTask, DiffusionTask, Draws, Moment, Task

MAX_SKIPPED = 10  # with train.nonfinite=skip: non-finite steps in a row before giving up


def train(config: "Config | AutoencoderRun", out: Path, *, resume: bool = False, progress: bool = True,
          resume_if_exists: bool = False) -> RunDir:
    """Train the model that `config` describes; the run directory `out` receives everything.

    With `resume`, `out` must hold a run: training continues from its newest intact checkpoint, with
    the same data order and random numbers as if it had never stopped. With `resume_if_exists`, the
    same call starts the run or resumes it (a requeued job needs no other command): `config` must
    then agree with the run's own, but for its budget (recipe.requeued). Under torchrun every process
    calls this; they share the work of each step and rank 0 writes the files (distributed.py).
    One process writes a run at a time: a second one is refused before it writes anything
    (storage/lock.py).
    """
    run = RunDir(out)
    start = "resume" if resume else "new"
    if resume_if_exists and not resume and run.config_path.is_file():
        config = requeued(run.load_config(), config, str(run.path))
        # its config is here, but no intact checkpoint: it starts again
        start = "resume" if run.newest_intact()[0] is not None else "restart"
    lock = RunLock(out)  # taken just before the first write, held to the end
    try:
        return _train(config, run, lock, start, progress)
    except OSError as error:  # any other write: the log, a grid, TensorBoard's events
        raise WriteFailed(f"training stopped: {error.strerror or error} writing {error.filename or 'a file'}; the newest "
                          f"intact checkpoint is {run.newest_intact()[0] or 'none yet'}; make room and run the same "
                          f"command again") from None
    finally:
        lock.release()  # the operating system also drops it when the process dies


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
    posthoc: "PowerEMA | None" = None  # the power EMAs of post-hoc EMA, if the run keeps them (train.posthoc_ema)
    others: dict[str, nn.Module] = field(default_factory=dict)  # what the task trains beside the network (Task.trained)
    grad_accum: int = 1  # micro-batches per process and step (train.grad_accum, or as a changed world size needs)

    def moment(self) -> Moment:
        """Where the run stands, for its task: its step and the clock's time."""
        return Moment(self.step, self.clock.seconds, self.clock.fraction())

    @classmethod
    def build(cls, task: Task, tc, device: torch.device, spent: float = 0.0) -> "Trainer":
        """The state `task` trains, fresh; its clock holds the budget less the `spent` seconds of an
        earlier stage (a run's own autoencoder)."""
        memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        network, others = task.network.to(device, memory_format=memory_format), task.trained()
        optimizer = build_optimizer(network, tc, *others.values())
        for module in (network, *others.values()):  # those that keep their weights' norm (EDM2's forced normalisation)
            if hasattr(module, "normalize_weights"):
                optimizer.register_step_post_hook(lambda *_, module=module: module.normalize_weights())
        minutes = tc.max_minutes and tc.max_minutes - spent / 60
        if minutes is not None and minutes <= 0:
            raise InputError(f"the autoencoder took {spent / 60:.2f} of the run's {tc.max_minutes:g} minutes, leaving "
                             f"none for the diffusion model; resume with a longer --max-minutes")
        clock = Clock(minutes)  # training time over the run's life; cosine decays to zero with it
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: task.lr_factor(Moment(step, clock.seconds, clock.fraction())))
        return cls(network, EMA(network, tc.ema_decay, tc.ema_warmup), optimizer, lr_schedule,
                   make_scaler(tc.precision, device), torch.Generator(device=device).manual_seed(tc.seed), clock,
                   posthoc=PowerEMA(network, tc.posthoc_ema) if tc.posthoc_ema else None, others=others,
                   grad_accum=tc.grad_accum)


def _train(config: "Config | AutoencoderRun", folder: RunDir, lock: RunLock, start: Start, progress: bool) -> RunDir:
    """The loop itself, top to bottom."""
    config.validate()
    tc = config.train
    ranks, device_name = init_distributed(tc.device)
    device = resolve_device(device_name)
    run = Run(folder, lock, ranks, device, start)
    if start != "resume":  # a resumed run keeps its global batch on any world size that can (`_keep_global_batch`)
        _check_batch_split(tc, ranks.world_size)
    seed_everything(tc.seed)

    # The data, the task (diffusion or autoencoder) with the config resolved against the data, and
    # the trainable state, fresh or restored from the newest checkpoint. A run that trains its own
    # autoencoder does that first, under the same clock.
    data = load_data(config.data)
    spent = 0.0
    if config.kind == "latent" and config.latent.autoencoder == OWN:
        spent = run.own_autoencoder(config, data, progress, train)
        if spent is None:  # stopped by a signal: its checkpoint is written
            return folder
        seed_everything(tc.seed)  # the same state whether the first stage ran in this process or not
    task = make_task(config, data, device, run.start == "resume", progress and ranks.is_main, folder.path)
    trainer = Trainer.build(task, tc, device, spent)
    seconds_trained = run.begin(task, trainer)
    trainer.grad_accum = _keep_global_batch(tc.batch_size, ranks, run.resumed, tc.grad_accum)
    model = ranks.wrap(trainer.network, device)  # what the loss calls: DDP averages the gradients across ranks
    if tc.compile:
        model = torch.compile(model)

    log = Log(folder.log_path, trainer.step, folder.tensorboard if tc.tensorboard else None) if ranks.is_main else None
    # uint8 batches in the order of (seed, step); small data sets live on the device, large ones stream.
    batches = iterate_batches(task.data, tc.batch_size, tc.seed, trainer.step, device, task.config.data.workers)
    trainer.clock.start(seconds_trained)
    started, images_seen = time.monotonic(), 0
    minutes = trainer.clock.limit / 60
    capped = tc.max_steps is not None
    bounds = ([f"at step {tc.max_steps}"] if capped else []) + ([f"after {minutes:.3g} min"] if tc.max_minutes else [])
    bar = tqdm(total=tc.max_steps if capped else None, initial=trainer.step,
               desc=f"training (stops {' or '.join(bounds)})", unit="step",
               disable=not (progress and ranks.is_main), dynamic_ncols=True)
    with stop_on_signal() as stop:
        while trainer.step < tc.step_limit and not trainer.clock.tick(ranks, device, stop.requested is not None):
            if task.phase_done(trainer.moment()):  # distillation: a halving ends; its student is kept
                if ranks.is_main:
                    run.checkpoint(task, trainer)
                task.next_phase(trainer)
            images, classes = next(batches)
            loss, grad_norm = _step(task, model, trainer, images, classes, ranks, tc, device)
            _update(trainer, loss, grad_norm, tc, folder, ranks, log)
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
        run.checkpoint(task, trainer)
        if trainer.posthoc:  # the last snapshot is the final step's, which `ddpm ema` reconstructs at
            run.snapshot(trainer, tc.keep_snapshots)
        if trainer.step % tc.sample_every:
            log.images(trainer.step, task.picture(folder, trainer.ema.model, trainer.step))
        log.close()
        plot_loss(folder.log_path, folder.loss_plot_path)
        if stopped_by or trainer.clock.signalled:
            command = "train-autoencoder" if config.kind == "autoencoder" else "train"
            tqdm.write(f"stopped by {stopped_by or 'a signal to another rank'} at step {trainer.step}; checkpoint written. "
                       f"Continue with: ddpm {command} --resume {folder.path}")
    ranks.barrier()  # the final checkpoint exists before any rank returns
    return folder


def _step(task, model, trainer: Trainer, images, classes, ranks, tc, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step's forward and backward passes: the global batch with its flips, labels,
    timesteps and noise (the same draws on every rank), this rank's share of it in grad_accum
    micro-batches. Returns the mean loss over the ranks and the clipped gradient's norm."""
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    x0 = task.batch(images, trainer.generator)
    draws = task.draws(x0, classes, trainer.generator, trainer.moment())
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=device)
    accum = trainer.grad_accum
    for i, (x0_i, draws_i) in enumerate(_micro_batches(ranks, accum, x0, draws)):
        with _accumulating(model, i < accum - 1), autocast(tc.precision, device):
            micro_loss = task.loss(model, x0_i.contiguous(memory_format=memory_format), draws_i) / accum
        trainer.scaler.scale(micro_loss).backward()
        loss += micro_loss.detach()
    for module in trainer.others.values():  # outside DDP: their gradients are averaged here
        ranks.average_gradients(module)
    trainer.scaler.unscale_(trainer.optimizer)
    weights = [p for module in (trainer.network, *trainer.others.values()) for p in module.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(weights, tc.grad_clip or math.inf)
    return ranks.mean(loss), grad_norm


def _update(trainer: Trainer, loss, grad_norm, tc, run: RunDir, ranks, log) -> None:
    """The update, unless the loss or gradient is not finite (fp16's scaler skips overflows itself)."""
    if torch.isfinite(loss) and (torch.isfinite(grad_norm) or trainer.scaler.is_enabled()):
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.ema.update(trainer.network)
        if trainer.posthoc:
            trainer.posthoc.update(trainer.network, trainer.step + 1)
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


def _every(trainer: Trainer, task, run: Run, log, bar, tc, images_per_s: float, minutes: float) -> None:
    """Rank 0's periodic work: the log row, the sample grid, the checkpoint."""
    step = trainer.step
    if step % tc.log_every == 0 and log.count:
        row = log.write(step, trainer.lr_schedule.get_last_lr()[0], images_per_s, minutes)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2g}")
    if step % tc.sample_every == 0:
        log.images(step, task.picture(run.dir, trainer.ema.model, step))
    if step % tc.checkpoint_every == 0:
        run.checkpoint(task, trainer)
    if trainer.posthoc and step % tc.snapshot_every == 0:
        run.snapshot(trainer, tc.keep_snapshots)


def make_task(config, data, device: torch.device, resume: bool, progress: bool, run: Path):
    """The task `config` describes for the run directory `run`: an autoencoder's, a distillation's,
    or the diffusion model's. Its `config` is resolved against `data` (a copy: the image size and
    channels the data has, a latent run's autoencoder)."""
    config = config.override({"data.image_size": data.image_size, "data.channels": data.channels})
    if config.kind == "autoencoder":
        return AutoencoderTask(config, data)
    kind = DiffusionTask if config.student is None else resolve(STUDENTS.get(config.student).task)
    return kind(config, data, device, resume, progress, run)


def _check_batch_split(tc, world_size: int) -> None:
    parts = world_size * tc.grad_accum
    if tc.batch_size % parts:
        raise InputError(f"train.batch_size ({tc.batch_size}) is the global batch and must split evenly into "
                         f"{world_size} processes x {tc.grad_accum} micro-batches; use a multiple of {parts}")


def _keep_global_batch(batch: int, ranks, resumed: "dict | None", configured: int) -> int:
    """The micro-batches per process that keep the run's global batch on this world size. A new run
    takes train.grad_accum. A resumed one that trained on another number of processes (an elastic
    restart with a node more or less) takes the fewest that keep each process's micro-batch within
    the one it had, so that it still fits in memory, and says so; the data order, the draws, the
    learning-rate schedule and the step count are the global batch's, and stay. A world size that
    cannot split the batch so is refused."""
    world = ranks.world_size
    if resumed is None or "world_size" not in resumed:  # new, or a checkpoint from before it was recorded
        return configured
    before, accum_before = resumed["world_size"], resumed["grad_accum"]
    most = batch // (before * accum_before)  # the images one process took at a time
    accum = next((a for a in range(1, batch + 1) if batch % (world * a) == 0 and batch // (world * a) <= most), None)
    if accum is None:
        raise InputError(f"train.batch_size ({batch}) cannot be kept on {world} processes in micro-batches of at most "
                         f"{most} images, as the run trained; resume on a number of processes that divides {batch}")
    if world != before and ranks.is_main:
        tqdm.write(f"ddpm: the run trained on {before} processes x {accum_before} micro-batches of {most} images; it "
                   f"goes on with {world} x {accum} of {batch // (world * accum)}: the same global batch of {batch}, "
                   f"learning-rate schedule and step count")
    return accum


def _micro_batches(ranks, count: int, x0: torch.Tensor, draws: Draws):
    """This rank's shard of the global batch and of its draws, cut into `count` micro-batches."""
    cut = lambda tensor: ranks.shard(tensor).chunk(count)  # noqa: E731
    return zip(cut(x0), draws.split(cut, count))


def _accumulating(model: torch.nn.Module, still: bool):
    """While micro-batches remain, DDP need not average gradients across ranks yet."""
    return model.no_sync() if still and hasattr(model, "no_sync") else nullcontext()


