"""Writing a file so that no reader, and no crash, ever sees half of it; and its checksum, so that a
reader can tell a file that changed after it was written.

Everything ddpm writes (checkpoints, config.yaml, sample archives, pictures, caches of reference
features, rendered data sets and latents, eval.csv) goes through `atomic_write`: the content is
written to a temporary file beside the target, optionally flushed to the disk, then renamed over
the target, which POSIX makes atomic. If the write fails (a full disk, a file-size limit, an
interrupt), the temporary file is removed and the target is as it was.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, beside it, and unique to this
    process on this host, so that two processes writing the same file (torchrun's ranks, on one node
    or on several sharing a file system, where PIDs repeat) never share one."""
    return path.with_name(f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{path.name}")


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = False) -> Path:
    """Call write(tmp) to fill a temporary file, then rename it to `path`. With `durable`, the file
    and then its folder are flushed to the disk (fsync) around the rename, so a power cut cannot
    leave the name pointing at unwritten blocks."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)
    return path


def fsync(path: Path) -> None:
    """Flush a file's or a folder's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(*files: Path) -> str:
    """The sha256 of the files' bytes, one after the other, in hex."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
