"""Durable file primitives shared by the job store, the scan folder, the exporter and the image builder.

Anything a person or a crash may look at half-way (results, outputs, copies off a USB stick) is written under a
hidden temporary name, fsynced, then renamed into place: it is there whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name beside `path`, fsync, rename into place: readers see all of it or nothing."""
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_file(path)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy the same way: `target` exists only when complete."""
    tmp = _temporary(target)
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    fsync_file(target)


def fsync_file(path: Path) -> None:
    """Flush a file's own metadata again after a rename. On FAT (USB sticks) a file's size and first cluster live in
    its directory entry, and a rename writes a new entry that gets them only when the file itself is written back:
    with fsync of the directory alone, a stick pulled a minute later held an empty file under the final name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
