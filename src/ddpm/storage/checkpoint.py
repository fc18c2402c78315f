"""The run directory and its checkpoints.

    runs/NAME/
      config.yaml                      the resolved config: enough to resume, sample or evaluate
      log.csv, loss.png                training loss and learning rate every few steps
      tensorboard/                     the same scalars and the sample grids, for TensorBoard
      samples/step_000500.png          sample grids from the EMA model during training
      progression.png, trajectory.png/.gif, eval.csv, sweep.csv/.png   written by ddpm show, eval, sweep
      report.html                      all of the above on one page (ddpm report)
      checkpoints/step_000500/         one folder per checkpoint:
          model.safetensors, ema.safetensors   the weights (no pickles)
          state.pt                     optimiser, LR schedule, random generators (tensors only)
          meta.json                    step, EMA update count, and the sha256 of each file above
      checkpoints/latest               the name of the newest complete checkpoint
      checkpoints/.damaged-step_...    a checkpoint found damaged when resuming, kept aside
      .lock                            held by the one process that writes the run (storage/lock.py)

A checkpoint is written into a temporary folder, flushed to disk, and renamed into place; only
then does `latest` move to it (also by rename). A crash at any moment leaves `latest` naming a
complete checkpoint. A write that fails (a full disk, a file-size limit) removes what it wrote and
leaves `latest` as it was (errors.WriteFailed, exit status 4). A checkpoint whose bytes changed
later (a bad disk, a partial copy) fails its checksums when loaded: resuming falls back to the
newest intact one, a command asked for that one refuses it (errors.CheckpointDamaged).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import TMP_PREFIX, atomic_write, file_sha256, fsync
from ..config import AutoencoderRun, Config, read_config
from ..errors import CheckpointDamaged, InputError, WriteFailed

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRASH_PREFIX = ".trash-"  # a checkpoint being deleted
DAMAGED_PREFIX = ".damaged-"  # a checkpoint found damaged, kept aside by the process that resumed the run


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.path / "log.csv"

    @property
    def loss_plot_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def sample_grid_path(self, step: int) -> Path:
        return self.path / "samples" / f"step_{step:06d}.png"

    def sample_grids(self) -> list[Path]:
        """The training sample grids, oldest first."""
        return sorted((self.path / "samples").glob("step_*.png"))

    def remove_grids_after(self, step: int) -> None:
        """Delete the sample grids of steps after `step`: on resuming from `step`, those came from a
        trajectory that the run no longer follows (log.csv and TensorBoard drop theirs too)."""
        for grid in self.sample_grids():
            if int(grid.stem.split("_")[1]) > step:
                grid.unlink(missing_ok=True)

    def picture_path(self, name: str) -> Path:
        """Where `ddpm show NAME --run` writes by default, and where `ddpm report` looks."""
        return self.path / f"{name}.png"

    def load_config(self) -> "Config | AutoencoderRun":
        if not self.path.is_dir():
            raise InputError(f"run directory {self.path} does not exist; train one with 'ddpm train --out {self.path}'")
        if not self.config_path.is_file():
            raise InputError(f"{self.path} is not a run directory: it has no {CONFIG_FILE}")
        return read_config(self.config_path).validate()

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint folder, or None if there is none yet."""
        pointer = self.checkpoints / LATEST
        if not pointer.is_file():
            return None
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):  # a damaged pointer names nothing
            return None
        folder = self.checkpoints / name
        return folder if name.startswith("step_") and (folder / "meta.json").is_file() else None

    def newest_intact(self) -> tuple[Optional[Path], list[tuple[Path, str]]]:
        """The newest checkpoint whose files match their checksums, from `latest` back (or, when the
        pointer names nothing, from the newest folder back), and the damaged ones passed on the way
        with what was wrong with each."""
        latest, folders = self.latest(), self.all_checkpoints()[::-1]
        if latest is not None:
            folders = [latest] + [f for f in folders if f.name < latest.name]
        damaged = []
        for folder in folders:
            try:
                verify(folder)
                return folder, damaged
            except CheckpointDamaged as error:
                damaged.append((folder, str(error)))
        return None, damaged

    def set_aside(self, folder: Path) -> Path:
        """Move a damaged checkpoint out of the way (checkpoints/.damaged-step_...), for the one process
        that writes the run: it is never loaded again, nor overwritten by a save of its step."""
        aside = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
        return aside

    @property
    def snapshots(self) -> Path:
        """The post-hoc EMA's snapshots (training/ema.py), one folder per step."""
        return self.path / "ema" / "snapshots"

    def all_snapshots(self) -> list[Path]:
        return sorted(p for p in self.snapshots.glob("step_*") if (p / "meta.json").is_file())

    def reconstructed(self, sigma_rel: float) -> Path:
        """Where `ddpm ema` writes the EMA of length sigma_rel: a checkpoint folder of its own."""
        return self.path / "ema" / f"sigma_{sigma_rel:.4f}"

    @property
    def chosen_path(self) -> Path:
        """The length `ddpm ema --sweep` chose by FID, and at which step (training/ema.py's sweep)."""
        return self.path / "ema" / "chosen.json"

    def weights(self, checkpoint: Optional[str] = None, ema: "float | str | None" = None) -> Optional[Path]:
        """The folder a command loads: --checkpoint's; --ema's rebuilt EMA ("classic": the newest
        checkpoint's EMA); by default the length `ddpm ema --sweep` chose, while it is of the newest
        step; else None, the newest checkpoint."""
        if checkpoint is not None and ema is not None:
            raise InputError("--ema loads a rebuilt EMA, --checkpoint a checkpoint; give one of them")
        if checkpoint is not None or ema == "classic":
            return checkpoint and Path(checkpoint)
        if ema is None:
            chosen, latest = self.chosen(), self.latest()
            if chosen is None or chosen["sigma_rel"] is None or latest is None or chosen["step"] != load_meta(latest)["step"]:
                return None  # no choice, the classic EMA chosen, or a choice made before the run trained on
            ema = chosen["sigma_rel"]
        folder = self.reconstructed(ema)
        if not (folder / "meta.json").is_file():
            raise InputError(f"{self.path} has no EMA of length {ema:g}; rebuild it with 'ddpm ema --run {self.path} "
                             f"--sigma-rel {ema:g}'")
        return folder

    def chosen(self) -> Optional[dict]:
        """What `ddpm ema --sweep` wrote into ema/chosen.json, or None."""
        try:
            return json.loads(self.chosen_path.read_text())
        except (OSError, ValueError):
            return None

    def all_checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("step_*") if (p / "meta.json").is_file())


def save_checkpoint(run: RunDir, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                    meta: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, and keep only the newest `keep`.

    tensors: {"model": state_dict, "ema": state_dict}, each saved as safetensors.
    state: everything else that resuming needs (optimiser, schedules, generators), saved with
    torch.save and read back with weights_only=True, so it may hold only tensors and plain data.

    meta.json records the sha256 of every other file, which `verify` checks on every load. A
    complete, intact checkpoint is never modified: if step `step` is already saved (a run resumed
    and stopped at once), `latest` simply points at it again. A write that fails raises WriteFailed
    with nothing of it left behind.
    """
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(run.checkpoints)
    name = f"step_{step:06d}"
    final = run.checkpoints / name
    doing = ["preparing"]
    try:
        write_sealed(final, tensors, {"step": step, **meta}, state, doing)
        doing[0] = "moving latest to it"
        atomic_write(run.checkpoints / LATEST, lambda path: path.write_text(name), durable=True)
    except (OSError, SafetensorError) as error:  # safetensors reports a failed write as its own error
        raise _write_failed(f"checkpoint {final}", error, doing[0], run) from None
    for old in run.all_checkpoints()[:-keep]:
        if not _kept(old):  # a distillation phase's student stays
            _remove(old)
    return final


def write_sealed(final: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                 state: Optional[dict[str, Any]] = None, doing: Optional[list] = None, replace: bool = False) -> None:
    """Write the folder `final` whole or not at all: each of `tensors` as safetensors, `state` as
    state.pt, and meta.json sealed with every file's sha256 (`verify`), in a temporary folder that
    is flushed and renamed into place. An intact folder of that name is kept as it is (a checkpoint of
    a step is the same whoever writes it), unless `replace`. `doing[0]` says what was being written
    when an error leaves (nothing of it is left behind)."""
    doing = doing if doing is not None else [""]
    if replace and final.exists():
        _remove(final)
    if (final / "meta.json").is_file() and _intact(final):
        return
    shutil.rmtree(final, ignore_errors=True)  # an incomplete or damaged folder of that name (never `latest`)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    try:
        tmp.mkdir()
        for key, state_dict in tensors.items():
            doing[0] = f"writing {key}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, tmp / f"{key}.safetensors")
        if state is not None:
            doing[0] = "writing state.pt"
            torch.save(state, tmp / "state.pt")
        checksums = {file.name: file_sha256(file) for file in sorted(tmp.iterdir())}
        doing[0] = "writing meta.json"
        (tmp / "meta.json").write_text(json.dumps(_sealed({**meta, "sha256": checksums}), indent=2))
        doing[0] = "flushing it to the disk"
        for file in tmp.iterdir():
            fsync(file)
        os.replace(tmp, final)
        fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_failed(what: str, error: Exception, doing: str, run: RunDir) -> WriteFailed:
    intact = run.newest_intact()[0]
    reason = getattr(error, "strerror", None) or str(error).split("I/O error: ")[-1]
    return WriteFailed(f"could not write {what} ({reason}, {doing}); nothing of it is left, and the newest intact "
                       f"checkpoint is {intact or 'none yet'}; make room and run the same command again")


def save_snapshot(run: RunDir, step: int, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                  keep: int) -> Path:
    """Write post-hoc EMA snapshot `step` (training/ema.py) as a checkpoint is written, then keep at most
    `keep`: past that, every other one of the older snapshots goes (the newest always stays), so they
    thin out towards the start of training, where the profiles of the EMAs weigh least."""
    run.snapshots.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(run.snapshots)
    final = run.snapshots / f"step_{step:06d}"
    doing = ["preparing"]
    try:
        write_sealed(final, tensors, {"step": step, **meta}, None, doing)
    except (OSError, SafetensorError) as error:
        raise _write_failed(f"post-hoc EMA snapshot {final}", error, doing[0], run) from None
    snapshots = run.all_snapshots()
    while len(snapshots) > keep:
        for old in snapshots[:-1][1::2]:
            _remove(old)
        snapshots = run.all_snapshots()
    return final


def _kept(folder: Path) -> bool:
    try:
        return bool(load_meta(folder).get("keep"))
    except CheckpointDamaged:
        return False


def load_weights(folder: Path, key: str) -> dict[str, torch.Tensor]:
    """Weights `key` ("model" or "ema") of a checkpoint folder; safetensors, so no code can run."""
    path = Path(folder) / f"{key}.safetensors"
    if not path.is_file():
        raise InputError(f"checkpoint {folder} has no {key}.safetensors")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorError for a damaged file
        raise CheckpointDamaged(f"checkpoint file {path} is damaged ({error}); use an earlier checkpoint") from None


def load_state(folder: Path) -> dict[str, Any]:
    """The resumable state of a checkpoint, refusing anything that would unpickle arbitrary objects."""
    path = Path(folder) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if str(error) else "it holds objects other than tensors"
        raise InputError(f"refusing to load {path}: it would unpickle arbitrary objects ({reason})") from None
    except FileNotFoundError:
        raise InputError(f"checkpoint {folder} has no state.pt") from None
    except (EOFError, RuntimeError) as error:
        raise CheckpointDamaged(f"checkpoint file {path} is damaged ({error or 'truncated'}); use an earlier checkpoint") from None


def load_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointDamaged(f"checkpoint {folder} has no meta.json") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointDamaged(f"checkpoint file {path} is not JSON ({error}); use an earlier checkpoint") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointDamaged(f"checkpoint file {path} holds no step; use an earlier checkpoint")
    return meta


def verify(folder: Path) -> dict[str, Any]:
    """The checkpoint's meta.json, once every file it lists matches its sha256; a checkpoint written
    before checksums (neither the files' sha256 nor the seal) passes as it is. Raises CheckpointDamaged
    naming the file. The two came in together, so one without the other is damage: a flipped bit in
    the key "meta_sha256" would otherwise pass for an old checkpoint (chaos.py found one so)."""
    folder = Path(folder)
    meta = load_meta(folder)
    if ("sha256" in meta or "meta_sha256" in meta) and _sealed(meta)["meta_sha256"] != meta.get("meta_sha256"):
        raise CheckpointDamaged(f"checkpoint {folder}: meta.json is damaged (its fields changed after it was written); "
                                f"use an earlier checkpoint")
    for name, digest in (meta.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointDamaged(f"checkpoint {folder} has lost its {name}")
        if file_sha256(path) != digest:
            raise CheckpointDamaged(f"checkpoint {folder}: {name} is damaged (its bytes changed after it was written: "
                                    f"their sha256 is not the one meta.json recorded); use an earlier checkpoint")
    return meta


def _sealed(meta: dict[str, Any]) -> dict[str, Any]:
    """meta with "meta_sha256", the sha256 of its other fields (as sorted JSON): a meta.json whose step
    or EMA count changed, still valid JSON, is found out too."""
    fields = {key: value for key, value in meta.items() if key != "meta_sha256"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {**fields, "meta_sha256": digest}


def _intact(folder: Path) -> bool:
    try:
        verify(folder)
        return True
    except CheckpointDamaged:
        return False


def load_into(network: torch.nn.Module, weights: dict[str, torch.Tensor], folder: Path, config_path: Path) -> None:
    """Load `weights` into `network`, or say that the checkpoint belongs to a different model."""
    expected = network.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise InputError(f"checkpoint {folder} does not match the model in {config_path} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected and {len(reshaped)} reshaped tensors, e.g. {first}); "
                         f"was the config edited after training?")
    network.load_state_dict(weights)


def _remove_leftovers(parent: Path) -> None:
    """Half-written or half-deleted folders that a killed process left behind."""
    for path in [*parent.glob(f"{TMP_PREFIX}*"), *parent.glob(f"{TRASH_PREFIX}*")]:  # not .damaged-
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _remove(folder: Path) -> None:
    """Delete a folder so that no moment of the deletion looks like a complete checkpoint."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)

