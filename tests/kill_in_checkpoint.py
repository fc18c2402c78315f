"""Run the `ddpm` command line, and SIGKILL it at a chosen moment of its first checkpoint write.

    python kill_in_checkpoint.py MOMENT ddpm-arguments...

The moments are the file-system operations of `save_checkpoint` in the order it makes them:
each file write (and, for each, the moment it is half written, as after a crash that tore it),
each fsync, rename and deletion. The process kills itself just before operation MOMENT, so a
test can crash a write at every moment it has, not at a few that a timer happened to hit.
MOMENT -1 kills nothing: the process prints how many moments the write had, and exits 0. A
process whose write has no moment MOMENT exits 3.
"""

import importlib
import os
import pathlib
import shutil
import signal
import sys

import torch

import ddpm.storage.checkpoint
from ddpm.cli import main

training = importlib.import_module("ddpm.training.run")  # the module that writes the checkpoints

kill_at = int(sys.argv[1])
moment = 0
writing = False


def _reached() -> None:
    """One more moment of the write has come: die here if it is the chosen one."""
    global moment
    if writing:
        if moment == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        moment += 1


def _operation(function):
    def operation(*args, **kwargs):
        _reached()
        return function(*args, **kwargs)
    return operation


def _file_write(function, path_of):
    """A write that can also be torn: the file is cut to half its bytes, then the process dies."""
    def write(*args, **kwargs):
        _reached()
        result = function(*args, **kwargs)
        if writing and moment == kill_at:
            path = pathlib.Path(path_of(*args))
            os.truncate(path, path.stat().st_size // 2)
        _reached()
        return result
    return write


def _first_checkpoint(function):
    def save_checkpoint(*args, **kwargs):
        global writing
        writing = True
        function(*args, **kwargs)
        writing = False
        if kill_at < 0:
            print(moment, flush=True)
        os._exit(0 if kill_at < 0 else 3)
    return save_checkpoint


ddpm.storage.checkpoint.save_file = _file_write(ddpm.storage.checkpoint.save_file, lambda tensors, path: path)
torch.save = _file_write(torch.save, lambda obj, path: path)
pathlib.Path.write_text = _file_write(pathlib.Path.write_text, lambda self, text: self)
os.fsync = _operation(os.fsync)
os.replace = _operation(os.replace)
shutil.rmtree = _operation(shutil.rmtree)
training.save_checkpoint = _first_checkpoint(training.save_checkpoint)

sys.exit(main(sys.argv[2:]))
