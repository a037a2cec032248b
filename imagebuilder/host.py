"""Build-host checks: `appliance doctor` shows them, the first build stage enforces them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagebuilder.context import BuildError

# tool -> Debian package that provides it (the Makefile's `iso` target installs the missing packages).
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "systemctl": "systemd",  # `systemctl --root` enables the app layer's units from a preset
    "xorriso": "xorriso",
    "grub-mkimage": "grub-common",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",  # sets the persistence.conf's ctime in the .img (usb.py)
}
FILES = {
    "/usr/lib/grub/i386-pc/boot_hybrid.img": "grub-pc-bin",
    "/usr/lib/grub/x86_64-efi/linux.mod": "grub-efi-amd64-bin",
}
# Only the boot test needs these.
# The Ventoy-style stick (boottest/writers.py): its exFAT partition is made and filled through a loop device + FUSE.
BOOT_TEST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "mkfs.exfat": "exfatprogs",
    "mount.exfat-fuse": "exfat-fuse",
}
BOOT_TEST_FILES = {"/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf"}
MIN_FREE_GIB = 8


def check_host(cache_dir: str | Path = "cache", boot_test: bool = True) -> list[tuple[str, bool, str]]:
    """[(name, ok, detail)] for everything a build (and the boot test) needs on this machine."""
    checks = [("root", os.geteuid() == 0, "mmdebstrap --mode=root, chroot and loop mounts need root")]
    tools = {**TOOLS, **(BOOT_TEST_TOOLS if boot_test else {})}
    for tool, package in tools.items():
        path = shutil.which(tool)
        checks.append((tool, bool(path), path or f"missing: apt-get install {package}"))
    files = {**FILES, **(BOOT_TEST_FILES if boot_test else {})}
    for path, package in files.items():
        checks.append(
            (
                Path(path).name,
                Path(path).exists(),
                path if Path(path).exists() else f"missing {path}: apt-get install {package}",
            )
        )
    where = Path(cache_dir)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    checks.append(("disk space", free >= MIN_FREE_GIB, f"{free:.0f} GiB free at {where} (need {MIN_FREE_GIB})"))
    return checks


def missing_packages(boot_test: bool = True) -> list[str]:
    """Debian packages to install so that check_host passes (used by `make iso`)."""
    wanted = {**TOOLS, **(BOOT_TEST_TOOLS if boot_test else {})}
    pkgs = {pkg for tool, pkg in wanted.items() if not shutil.which(tool)}
    files = {**FILES, **(BOOT_TEST_FILES if boot_test else {})}
    pkgs |= {pkg for path, pkg in files.items() if not Path(path).exists()}
    return sorted(pkgs)


def require_host(ctx) -> None:
    failed = [f"{name}: {detail}" for name, ok, detail in check_host(ctx.cache_dir, boot_test=False) if not ok]
    if failed:
        raise BuildError("the build host is missing: " + "; ".join(failed))
