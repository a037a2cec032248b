"""The ISO: tree of layers + kernel + GRUB, then one xorriso call for the hybrid layout.

Layout (plain MBR, as Debian's own images): partition 1 = the ISO9660 filesystem, partition 2 = the FAT ESP
appended after it. BIOS from CD: El Torito -> GRUB's eltorito core. BIOS from a stick: boot_hybrid.img in the
MBR jumps to the same core. UEFI from CD: El Torito EFI entry pointing at the appended ESP. UEFI from a stick:
the firmware finds partition 2 (type 0xEF). EFI/BOOT/BOOTX64.EFI is also in the ISO tree for file-copy writers.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from appliance.files import sha256_file
from imagebuilder.context import BuildError, Context, run
from imagebuilder.layers import ISO_FILE_LIMIT

GRUB_MBR = Path("/usr/lib/grub/i386-pc/boot_hybrid.img")
BIOS_IMAGE = "boot/grub/bios.img"  # GRUB's El Torito core, in the ISO tree


def volume_id(ctx: Context) -> str:
    """ISO9660 volume id: at most 32 characters, upper case (Rufus and Ventoy show it)."""
    return "".join(c if c.isalnum() else "_" for c in f"{ctx.config.name}_{ctx.config.version}".upper())[:32]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard links keep the big layers from being copied again; fall back to a copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def populate_tree(ctx: Context) -> str:
    tree = ctx.work / "iso"
    live = tree / "live"
    live.mkdir(parents=True)
    ordered = sorted(ctx.layers, key=lambda layer: layer.order)
    for layer in ordered:
        link_or_copy(layer.path, live / layer.filename)
    # The explicit stacking order (lowest first); without it live-boot would use the sorted file names.
    (live / "filesystem.module").write_text("\n".join(layer.filename for layer in ordered) + "\n")
    link_or_copy(ctx.files["kernel"], live / "vmlinuz")
    link_or_copy(ctx.files["initrd"], live / "initrd.img")
    grub = tree / "boot" / "grub"
    grub.mkdir(parents=True)
    shutil.copy2(ctx.files["grub_cfg"], grub / "grub.cfg")
    shutil.copy2(ctx.files["loopback_cfg"], grub / "loopback.cfg")  # the ISO booted as a file (boot.py)
    shutil.copy2(ctx.files["bios_img"], tree / BIOS_IMAGE)
    efi = tree / "EFI" / "BOOT"
    efi.mkdir(parents=True)
    shutil.copy2(ctx.files["efi_bin"], efi / "BOOTX64.EFI")
    disk = tree / ".disk"
    disk.mkdir()
    (disk / f"{ctx.stem}.id").write_text(f"{ctx.stem}\n")
    (disk / "info").write_text(f"{ctx.config.name} {ctx.config.version} ({ctx.config.profile})\n")
    # The "check the medium" boot entry checks every file against this list (appliance-verify-medium.service).
    # Not the BIOS boot image: xorriso writes its boot info table into it (-boot-info-table), as Debian's own
    # images leave isolinux.bin out of their md5sum.txt.
    lines = []
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            if p.stat().st_size >= ISO_FILE_LIMIT:
                raise BuildError(f"{p.relative_to(tree)} is 4 GiB or more: FAT32 writers cannot copy it")
            if p != tree / BIOS_IMAGE:
                lines.append(f"{sha256_file(p)}  ./{p.relative_to(tree)}")
    (tree / "sha256sum.txt").write_text("\n".join(lines) + "\n")
    ctx.files["iso_tree"] = tree
    return f"{len(lines)} files, layers: {', '.join(layer.filename for layer in ordered)}"


def make_iso(ctx: Context) -> str:
    iso = ctx.work / f"{ctx.stem}.iso"
    date = time.strftime("%Y%m%d%H%M%S00", time.gmtime(ctx.epoch))
    cmd = [
        "xorriso",
        "-as",
        "mkisofs",
        "-iso-level",
        "3",  # files over 2 GiB (a big model layer) need level 3
        "-full-iso9660-filenames",
        "-joliet",
        "-rational-rock",
        "-volid",
        volume_id(ctx),
        "-appid",
        f"{ctx.config.name} {ctx.config.version}",
        "-publisher",
        ctx.config.name,
        "-preparer",
        "appliance.build",
        "--modification-date=" + date,
        "--set_all_file_dates",
        date,  # SOURCE_DATE_EPOCH everywhere
        # BIOS from a stick: GRUB's hybrid MBR; the ISO filesystem starts at 16 sectors (partition 1).
        "--grub2-mbr",
        GRUB_MBR,
        "-partition_offset",
        "16",
        "--mbr-force-bootable",
        # Partition 2: the FAT ESP, appended after the ISO filesystem.
        "-append_partition",
        "2",
        "0xef",
        ctx.files["efi_img"],
        # BIOS from CD.
        "-b",
        BIOS_IMAGE,
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "--grub2-boot-info",
        # UEFI from CD: the El Torito EFI entry is the appended ESP itself.
        "-eltorito-alt-boot",
        "-e",
        "--interval:appended_partition_2:all::",
        "-no-emul-boot",
        "-o",
        iso,
        ctx.files["iso_tree"],
    ]
    run(cmd, ctx)
    ctx.files["iso"] = iso
    return f"{iso.name} {iso.stat().st_size / 2**20:.0f} MiB"
