"""Scan trees: ROOT's inbox with its outbox, done and failed folders, or a USB stick's OCR-INBOX and friends; finding
the sticks under the media folders; small path tests shared by the watcher and the retry."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MEDIA_DIRS = ("/media", "/run/media", "/mnt")  # where USB sticks are mounted (depth 1 or 2)
STICK_INBOX, STICK_OUTBOX, STICK_DONE, STICK_FAILED = "OCR-INBOX", "OCR-OUTBOX", "OCR-DONE", "OCR-FAILED"


@dataclass(frozen=True)
class Tree:
    """An inbox with its outbox, done and failed folders: ROOT itself, or a USB stick (`stick=True`)."""

    key: str  # "" for ROOT, the stick's mount folder otherwise
    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    label: str = ""
    stick: bool = False

    @classmethod
    def local(cls, root: Path) -> Tree:
        return cls("", root / "inbox", root / "outbox", root / "done", root / "failed")

    @classmethod
    def usb(cls, mount: Path) -> Tree:
        return cls(
            str(mount),
            mount / STICK_INBOX,
            mount / STICK_OUTBOX,
            mount / STICK_DONE,
            mount / STICK_FAILED,
            label=mount.name,
            stick=True,
        )

    @classmethod
    def of_row(cls, root: Path, key: str) -> Tree:
        """The tree of a ledger row's `tree` column."""
        return cls.usb(Path(key)) if key else cls.local(root)

    def present(self) -> bool:
        return self.inbox.is_dir()

    def read_only(self) -> bool:
        """Mounted read-only (an NTFS stick marked dirty, a locked SD card): results could never be written to it."""
        try:
            return bool(os.statvfs(self.inbox).f_flag & os.ST_RDONLY)
        except OSError:
            return False


def find_sticks(media_dirs) -> list[Tree]:
    """Mounted media with an OCR-INBOX folder at their root (/media/STICK or /media/USER/STICK)."""
    sticks = []
    for base in map(Path, media_dirs):
        for pattern in (f"*/{STICK_INBOX}", f"*/*/{STICK_INBOX}"):
            for inbox in sorted(base.glob(pattern)):
                if inbox.is_dir() and not inbox.is_symlink() and not inbox.parent.is_symlink():
                    sticks.append(Tree.usb(inbox.parent))
    return sticks


def overlap(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it, links resolved."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def inside(path: Path, folder: str) -> bool:
    """`path` lies under `folder` as written (no resolving: a pulled stick's paths no longer exist)."""
    return bool(folder) and (str(path) + "/").startswith(folder.rstrip("/") + "/")


def exists(path: Path) -> bool:
    """There is an entry by this name, a dangling link included."""
    return path.exists() or path.is_symlink()
