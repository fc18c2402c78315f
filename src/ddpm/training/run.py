"""A run's life around the loop: its directory, lock, ranks and device, and how it starts.

A run starts `new` (an empty or missing directory), `resume`s from its newest intact checkpoint, or
`restart`s (its config is there but no intact checkpoint: a requeued job that died early). One
process writes a run at a time: rank 0 takes its lock for every rank before the first write
(storage/lock.py). The loop (loop.py) asks this object to begin, to checkpoint, and, for a run
that trains its own autoencoder, to run that first stage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from tqdm.auto import tqdm

from ..storage.atomic import atomic_write
from ..config import Config
from ..data.latents import encode_data
from ..errors import InputError
from ..factory import load_codec, own_autoencoder_dir
from ..config.recipe import own_autoencoder
from ..runtime.distributed import Distributed
from ..storage.checkpoint import RunDir, load_into, load_meta, load_state, load_weights, save_checkpoint, save_snapshot
from ..storage.lock import RunLock
from .state import rng_state, set_rng_state

Start = Literal["new", "resume", "restart"]
OWN_STAGE = "autoencoder.json"  # written when a run's own autoencoder is trained and the data encoded


@dataclass
class Run:
    """One process's hold on a run directory: the directory, its lock, the ranks, the device, and how
    the run starts."""

    dir: RunDir
    lock: RunLock
    ranks: Distributed
    device: torch.device
    start: Start
    resumed: Optional[dict] = None  # the meta.json of the checkpoint it resumed from

    def begin(self, task, trainer) -> float:
        """Take the run for this process: restore its newest intact checkpoint, or create it (or, to
        restart a run that has its config but no checkpoint yet, take it over) and write its resolved
        config. Returns the seconds the run has trained before."""
        seconds, ranks = 0.0, self.ranks
        if self.start == "resume":
            self.take_lock()
            seconds = self.restore(trainer, task)
            if ranks.is_main:  # from here on this process writes the run
                self.lock.announce()
                self.dir.remove_grids_after(trainer.step)  # drawn after the checkpoint by the process that stopped
        else:
            self.create()
            if ranks.is_main:
                for bad, reason in self.dir.newest_intact()[1] if self.start == "restart" else []:
                    tqdm.write(f"ddpm: {reason}; set aside as {self.dir.set_aside(bad).name}, starting again")
                self.dir.remove_grids_after(0)  # a restart's earlier attempt drew some
                task.config.to_yaml(self.dir.config_path)
        ranks.barrier()
        return seconds

    def create(self) -> None:
        """Create the run directory and take its lock for this process; a new run refuses a
        directory that holds a run already, before and after taking the lock."""
        refuse = self._refuse_existing_run if self.start == "new" else lambda: None
        refuse()
        self.ranks.barrier()  # every rank has looked before rank 0 creates the run directory
        if self.ranks.is_main:
            self.dir.path.mkdir(parents=True, exist_ok=True)
        self.take_lock(then=refuse)  # it may have appeared meanwhile
        if self.ranks.is_main:
            self.lock.announce()

    def take_lock(self, then: Optional[Callable[[], None]] = None) -> None:
        """Rank 0 takes the run's lock for every rank (and runs `then` holding it); if it cannot, every
        rank stops, rank 0 with the message that names the holder."""
        error = None
        if self.ranks.is_main:
            try:
                self.lock.acquire()
                if then is not None:
                    then()
            except InputError as refused:
                error = refused
        if self.ranks.max([float(error is not None)], self.device)[0]:
            raise error or InputError(f"rank 0 could not take the lock of run {self.lock.path.parent}; see its message")

    def _refuse_existing_run(self) -> None:
        """A new run never overwrites an existing one."""
        if self.dir.latest() is not None or self.dir.config_path.exists():
            raise InputError(f"{self.dir.path} already holds a run; continue it with --resume {self.dir.path} "
                             f"or choose another --out")

    def checkpoint(self, task, trainer) -> None:
        own = task.state()  # a task's own optimiser (the adversarial student's heads)
        state = {
            "optimizer": trainer.optimizer.state_dict(),
            "lr_schedule": trainer.lr_schedule.state_dict(),
            "grad_scaler": trainer.scaler.state_dict(),
            "rng": rng_state(trainer.generator),
            **({"task": own} if own else {}),
        }
        tensors = {"model": trainer.network.state_dict(), "ema": trainer.ema.model.state_dict(), **task.tensors(),
                   **(trainer.posthoc.tensors() if trainer.posthoc else {}),
                   **{name: module.state_dict() for name, module in trainer.others.items()}}
        meta = {"ema_updates": trainer.ema.updates, "train_seconds": round(trainer.clock.seconds, 3),
                "world_size": self.ranks.world_size, "grad_accum": trainer.grad_accum,
                **task.meta(trainer.ema.model, trainer.moment())}
        save_checkpoint(self.dir, trainer.step, tensors, state, meta, keep=task.config.train.keep_checkpoints)

    def snapshot(self, trainer, keep: int) -> None:
        """A post-hoc EMA snapshot of the power EMAs now (training/ema.py), as `ddpm ema` reads them."""
        posthoc = trainer.posthoc
        save_snapshot(self.dir, trainer.step, posthoc.tensors(), {"sigma_rels": posthoc.sigma_rels,
                                                                  "gammas": posthoc.gammas}, keep)

    def restore(self, trainer, task) -> float:
        """Load the newest intact checkpoint into the training state; returns its training seconds. A
        damaged one (its files changed after they were written) is set aside, and said so: resuming
        then costs the steps since the intact one, never correctness."""
        run = self.dir
        folder, damaged = run.newest_intact()
        if folder is None:  # refused as it is: nothing is moved
            raise InputError(f"cannot resume {run.path}: it has no intact checkpoint"
                             + (f" ({damaged[0][1]})" if damaged else ""))
        self.ranks.barrier()  # every rank has checked before rank 0 moves anything
        for bad, reason in damaged:
            if self.ranks.is_main:
                tqdm.write(f"ddpm: {reason}; set aside as {run.set_aside(bad).name}, resuming from {folder.name}")
        state = load_state(folder)
        load_into(trainer.network, load_weights(folder, "model"), folder, run.config_path)
        load_into(trainer.ema.model, load_weights(folder, "ema"), folder, run.config_path)
        meta = load_meta(folder)
        trainer.ema.updates = meta["ema_updates"]
        for key, module in {**(trainer.posthoc.named() if trainer.posthoc else {}), **trainer.others}.items():
            load_into(module, load_weights(folder, key), folder, run.config_path)
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
        if "task" in state:
            task.restore_state(state["task"])
        self.resumed = meta
        return meta.get("train_seconds", 0.0)  # runs from before the clock have none

    def own_autoencoder(self, config: Config, data, progress: bool, train: Callable) -> Optional[float]:
        """The first stage of a run with latent.autoencoder: own. Take the run (a new one gets its
        config.yaml now, so that a crash in this stage resumes with --resume RUN), train the
        autoencoder into RUN/autoencoder (recipe.own_autoencoder) through the loop's `train`, or
        resume it there, and encode the training set into the latent cache. RUN/autoencoder.json
        records the seconds both took, which the second stage's clock takes off the run's budget.
        Returns those seconds, with `start` now the second stage's, or None when a signal stopped
        the autoencoder."""
        run, ranks = self.dir, self.ranks
        stage = run.path / OWN_STAGE
        autoencoder = own_autoencoder(config.override({"data.image_size": data.image_size})).validate()
        self.create()
        if ranks.is_main and self.start == "new":
            config.to_yaml(run.config_path)
        if not stage.is_file():
            folder = own_autoencoder_dir(run.path)
            budget = autoencoder.train
            if ranks.is_main:
                tqdm.write(f"ddpm: the run's own autoencoder first (f = {autoencoder.autoencoder.factor}, "
                           + (f"{budget.max_minutes:.3g} min" if budget.max_minutes else f"{budget.max_steps} steps")
                           + f"), in {folder}")
            train(autoencoder, folder, resume_if_exists=True, progress=progress)
            meta = load_meta(RunDir(folder).newest_intact()[0])
            trained, limit = meta.get("train_seconds", 0.0), 60 * (budget.max_minutes or math.inf)
            if meta["step"] < budget.step_limit and trained < limit:
                if ranks.is_main:
                    tqdm.write(f"the run's own autoencoder stopped before its budget; continue the run with: "
                               f"ddpm train --resume {run.path}")
                return None
            started = time.monotonic()
            codec = load_codec(str(folder), device=self.device)
            encode_data(codec, data, config.data.flip, self.device, progress and ranks.is_main,
                        moments=config.latent.posterior == "sample")
            if ranks.is_main:
                record = {"seconds": round(trained + time.monotonic() - started, 3), "autoencoder_seconds": trained}
                atomic_write(stage, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
            ranks.barrier()
        self.start = "resume" if run.newest_intact()[0] is not None else "restart"  # the diffusion model's own
        return json.loads(stage.read_text())["seconds"]
