"""A ready USB stick image: the hybrid ISO plus a third partition labelled `persistence` (ext4); and the same
filesystem as a file of its own for Ventoy's persistence plugin.

live-boot finds the partition by its label and reads persistence.conf from it: `/srv/ocr union` keeps jobs,
results and scan folders across reboots and nothing else. Made without loop mounts: mke2fs -d fills the
filesystem from a directory, and the filesystem is written at an offset inside the image file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from appliance.persistence import LABEL, PERSISTENCE_CONF, align_up, sfdisk_line
from imagebuilder.context import Context, run


def fs_uuid(image_name: str, epoch: int | None) -> str:
    """The filesystem's UUID and directory hash seed: mke2fs draws both at random, so the same inputs would give
    a different .img each time; derived from the image's name and epoch instead (unique enough per image)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ocr-appliance:persistence:{image_name}:{epoch}"))


def persistence_fs(target: Path, size: int, work: Path, epoch: int | None, offset: int = 0) -> None:
    """An ext4 filesystem labelled `persistence` holding persistence.conf, of `size` bytes at `offset` in `target`
    (a stick image, or a file of its own). Made without mounts: mke2fs -d fills it from a directory."""
    content = work / "persistence-root"
    content.mkdir(parents=True, exist_ok=True)
    (content / "persistence.conf").write_text(PERSISTENCE_CONF)
    env = None
    if epoch:  # mke2fs's own SOURCE_DATE_EPOCH is for the filesystem; -d copies the files' times as they are
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)}
        for p in (content / "persistence.conf", content):
            os.utime(p, (epoch, epoch))
    fs_id = fs_uuid(target.name, epoch)
    run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            LABEL,
            "-U",
            fs_id,
            "-d",
            content,
            "-E",
            f"offset={offset},hash_seed={fs_id}",
            target,
            f"{size // 1024}k",
        ],
        env=env,
    )
    if epoch:  # the one time -d cannot take from the file: its ctime (the moment it was written just above)
        run(
            ["debugfs", "-w", "-R", f"set_inode_field /persistence.conf ctime @{epoch}", f"{target}?offset={offset}"],
            env=env,
        )
    shutil.rmtree(content)


def add_persistence(image: Path, size_mb: int, work: Path, epoch: int | None = None) -> None:
    """Append a `persistence` ext4 partition of size_mb to a copy of the hybrid ISO (in place on `image`): where
    `appliance persistence create` puts it on a stick written raw (appliance/persistence.py, the same layout)."""
    start = align_up(image.stat().st_size)  # next MiB boundary after the ISO, its ESP and its 300 KiB tail
    size = size_mb * 2**20
    with open(image, "r+b") as f:
        f.truncate(start + size)
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--append", image],
        input=sfdisk_line(start, size),
    )
    persistence_fs(image, size, work, epoch, offset=start)


def make_usb_image(ctx: Context) -> str:
    img = ctx.work / f"{ctx.stem}.img"
    shutil.copyfile(ctx.files["iso"], img)
    add_persistence(img, ctx.config.persistence_size_mb, ctx.work, ctx.epoch)
    ctx.files["usb_img"] = img
    return f"{img.name} {img.stat().st_size / 2**20:.0f} MiB (persistence {ctx.config.persistence_size_mb} MiB)"


def make_ventoy_dat(ctx: Context) -> str:
    """<name>-persistence.dat for Ventoy's persistence plugin (ventoy.json: {"persistence": [{"image": ...,
    "backend": ...}]}): Ventoy maps the file as a block device, live-boot finds it by its label. Its persistence.conf
    keeps /srv/ocr only (results, history, settings), not all of / as Ventoy's own images do, so the same .dat serves
    the next version of the ISO."""
    dat = ctx.work / f"{ctx.stem}-persistence.dat"
    size = ctx.config.persistence_size_mb * 2**20
    with open(dat, "wb") as f:
        f.truncate(size)
    persistence_fs(dat, size, ctx.work, ctx.epoch)
    ctx.files["ventoy_dat"] = dat
    return f"{dat.name} {ctx.config.persistence_size_mb} MiB"
