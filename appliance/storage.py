"""Where the data directory lives (a persistent partition, or RAM that is lost at power-off), its free space, and
whether the boot medium was verified. For the status page and `appliance doctor`.

RAM: the mount holding DATA_DIR is tmpfs/ramfs (or a zram device), or an overlay whose writable upper layer is on
such a mount (Debian live-boot without persistence: `/` is an overlay with its upper dir on a tmpfs under
/run/live/overlay). With a persistence partition the upper dir (or DATA_DIR's own mount) is on a disk instead.

Boot medium check, for the image builder: after the boot menu's "check medium integrity" (or any other check of the
medium's checksums) the image writes MEDIUM_MARKER, one line:
    ok[: how it was checked, e.g. "sha256 of 812 files"]     the medium matched its checksums
    failed: <what did not match>                              it did not
No file (or an empty one): the medium was not checked on this boot. /run is a tmpfs, so the marker is per boot.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

MEDIUM_MARKER = Path("/run/appliance/medium-verified")
LIVE_MEDIUM = "/run/live/medium"  # where live-boot mounts the medium the image booted from
RAM_FILESYSTEMS = {"tmpfs", "ramfs"}


@dataclass(frozen=True)
class Mount:
    device: str
    point: str
    fstype: str
    options: tuple[str, ...]

    def option(self, name: str) -> str | None:
        prefix = name + "="
        return next((o[len(prefix) :] for o in self.options if o.startswith(prefix)), None)


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def read_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            device, point, fstype, options = (_unescape(p) for p in parts[:4])
            mounts.append(Mount(device, point, fstype, tuple(options.split(","))))
    return mounts


def mount_of(path: str | os.PathLike, mounts: list[Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount point containing it (the last one mounted, if stacked)."""
    target = os.path.realpath(path)
    best = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = point == "/" or target == point or target.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def in_ram(mount: Mount | None, mounts: list[Mount], depth: int = 0) -> bool | None:
    """True: contents are lost at power-off; False: on a disk; None: cannot tell."""
    if mount is None:
        return None
    if mount.fstype in RAM_FILESYSTEMS or mount.device.startswith("/dev/zram"):
        return True
    if mount.fstype in ("overlay", "aufs"):
        upper = mount.option("upperdir")
        if not upper or depth > 3:
            return None
        return in_ram(mount_of(upper, mounts), mounts, depth + 1)
    return False


@dataclass
class Storage:
    path: str
    mount: str | None
    fstype: str | None
    device: str | None
    in_ram: bool | None  # None: could not tell
    free: int
    total: int
    medium: str  # verified | failed | unchecked | none (not booted from the appliance's medium)
    medium_detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def medium_state(marker: Path = MEDIUM_MARKER) -> tuple[str, str]:
    try:
        line = next(iter(marker.read_text(errors="replace").splitlines()), "").strip()
    except OSError:
        return "unchecked", ""
    if not line:
        return "unchecked", "the marker file is empty"
    word, colon, detail = line.partition(":")
    if word.strip().lower() == "ok":
        return "verified", detail.strip()
    return "failed", detail.strip() if colon and word.strip().lower() == "failed" else line


def storage(path: str | os.PathLike, mounts_file: str = "/proc/mounts", marker: Path = MEDIUM_MARKER) -> Storage:
    try:
        mounts = read_mounts(Path(mounts_file).read_text())
    except OSError:
        mounts = []
    mount = mount_of(path, mounts)
    disk = shutil.disk_usage(path)
    medium, detail = medium_state(marker)
    if medium == "unchecked" and not any(m.point == LIVE_MEDIUM for m in mounts):
        medium = "none"  # not running from the appliance's medium (a PC with `appliance serve`): nothing to check
    return Storage(
        path=str(path),
        mount=mount.point if mount else None,
        fstype=mount.fstype if mount else None,
        device=mount.device if mount else None,
        in_ram=in_ram(mount, mounts),
        free=disk.free,
        total=disk.total,
        medium=medium,
        medium_detail=detail,
    )
