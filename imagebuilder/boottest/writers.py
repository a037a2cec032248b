"""Boot sticks as the usual writers leave them, made from the ISO with host tools only (no writer is run):

- raw (dd, Etcher, Rufus DD mode, UltraISO "Write Disk Image"): the ISO's bytes at the start of an 8 GiB stick, the
  rest unallocated: the appliance offers to make persistent storage there (appliance/persistence.py);
- filecopy (Rufus ISO mode for UEFI, UltraISO file mode, the ISO's files copied by hand): GPT, one FAT32 partition
  holding the ISO's files; the firmware starts EFI/BOOT/BOOTX64.EFI from it. BIOS boot of such a stick needs the
  writer's own boot code (Rufus installs one), so only UEFI is booted here;
- loopback (Ventoy-style): MBR, an exFAT partition holding the ISO as a file (Ventoy's default filesystem) and a
  small FAT EFI partition at the end, as Ventoy lays them out, with our own small GRUB instead of Ventoy's: in the
  MBR gap for BIOS, as EFI/BOOT/BOOTX64.EFI for UEFI. It loop-mounts the ISO file and sources the ISO's
  /boot/grub/loopback.cfg with iso_path set, GRUB's loopback convention (Ventoy's GRUB mode, Super GRUB2 Disk):
  live-boot then finds the ISO file by `findiso=`. Ventoy's own normal mode (its virtual CD and initramfs hooks)
  is Ventoy's code and is not booted here. Ventoy's persistence plugin maps a `.dat` file beside the ISO as a block
  device of its own (device-mapper); `ventoy_dat` makes that file as `ventoy_dat=on` does, and the boot test
  attaches it as a disk of its own, which is what live-boot then sees.

Every stick is a sparse file: only what is written takes disk space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from imagebuilder import boot, usb
from imagebuilder.boottest.sticks import fuse_mounted, partition_device

STICK_SIZE = 8 << 30
MIB = 1 << 20
ISO_NAME = "ocr-appliance.iso"  # the name people give the file on a Ventoy stick does not matter; one without spaces
LOOPBACK_LABEL = "Ventoy"  # the exFAT partition's label, as Ventoy names it
ESP_MIB = 32  # Ventoy's VTOYEFI partition: 32 MiB of FAT at the end of the stick
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # the GPT type Rufus gives its FAT32 partition
GRUB = boot.GRUB_LIB
# The image's own GRUB modules, and what a loader that opens the ISO as a file on exFAT needs besides.
LOADER_MODULES = [*boot.COMMON_MODULES, "exfat", "loopback"]
LOADER_TARGETS = {"i386-pc": boot.BIOS_MODULES, "x86_64-efi": boot.EFI_MODULES}
DRIVE_CHECK = 0x66  # boot.img's jump over its boot-drive check: grub-bios-setup turns it into two NOPs for disks
MBR_CODE = 440  # boot.img's code; the disk signature, partition table and 0x55AA that follow are the stick's


def _run(*cmd, **kw) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def _sparse(dest: Path, size: int) -> None:
    dest.unlink(missing_ok=True)
    with dest.open("wb") as f:
        f.truncate(size)


def raw_stick(iso: Path, dest: Path, size: int = STICK_SIZE) -> Path:
    """The ISO written raw (dd) to a stick of `size` bytes: its hybrid MBR, ISO9660 and EFI partition, then
    unallocated space."""
    _sparse(dest, size)
    with iso.open("rb") as src, dest.open("r+b") as out:
        shutil.copyfileobj(src, out, 16 * MIB)
    return dest


def extract_iso(iso: Path, folder: Path) -> Path:
    """The ISO's files (Rock Ridge names, as a file-copy writer sees them) in `folder`."""
    _run("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", folder)
    return folder


def filecopy_stick(iso: Path, dest: Path, size: int = STICK_SIZE, label: str = "OCR_APPLIAN") -> Path:
    """Rufus's ISO mode for UEFI: GPT, one FAT32 partition (basic data) from 1 MiB to the end, the ISO's files
    copied onto it (mtools: no mount)."""
    _sparse(dest, size)
    _run("sfdisk", "-q", dest, input=f'label: gpt\nstart=2048, type={BASIC_DATA}, name="{label}"\n')
    end = size - MIB  # the FAT stops 1 MiB short of the stick's end, clear of the backup GPT in its last 33 sectors
    _run("mkfs.vfat", "-F", "32", "--offset", "2048", "-n", label, dest, (end - MIB) // 1024)
    fat = f"{dest}@@{MIB}"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="iso-files-") as tmp:
        tree = extract_iso(iso, Path(tmp) / "tree")
        for entry in sorted(tree.iterdir()):  # .disk too: a shell glob would leave it out
            _run("mcopy", "-s", "-m", "-i", fat, entry, "::/")
        _chmod_tree(tree)  # xorriso restores the ISO's read-only modes: let the folder be removed
    return dest


def _chmod_tree(tree: Path) -> None:
    for folder, _, _ in os.walk(tree):
        os.chmod(folder, 0o755)


def loader_cfg(iso_path: str = "/" + ISO_NAME) -> str:
    """Our Ventoy stand-in's GRUB config: find the ISO file, loop-mount it, and hand over to its loopback.cfg with
    iso_path exported, as GRUB's loopback convention has it. Serial console first, so the boot test can see and
    drive the ISO's menu."""
    return "\n".join(
        [
            "serial --unit=0 --speed=115200",
            "terminal_input console serial",
            "terminal_output console serial",
            f"search --no-floppy --set=root --file {iso_path}",
            f"set iso_path={iso_path}",
            "export iso_path",
            "loopback loop ($root)$iso_path",
            "set root=(loop)",
            "configfile /boot/grub/loopback.cfg",
            "",
        ]
    )


def loader_images(work: Path) -> dict[str, Path]:
    """GRUB cores with loader_cfg embedded: {'i386-pc': core.img, 'x86_64-efi': BOOTX64.EFI}."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "loader.cfg"
    cfg.write_text(loader_cfg())
    images = {}
    for target, extra in LOADER_TARGETS.items():
        out = work / ("core.img" if target == "i386-pc" else "BOOTX64.EFI")
        _run("grub-mkimage", "-O", target, "-p", "/boot/grub", "-c", cfg, "-o", out, *LOADER_MODULES, *extra)
        images[target] = out
    return images


def install_bios_loader(stick: Path, core: Path, first_partition: int) -> None:
    """What grub-install --target=i386-pc does on an MBR disk, by hand: GRUB's boot.img code in the MBR (the table
    stays), its core.img right after it in the gap before the first partition. boot.img reads core from sector 1
    and core's first sector reads the rest from sector 2 on, their defaults; only the drive check is patched."""
    boot = bytearray((GRUB / "i386-pc" / "boot.img").read_bytes())
    boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
    data = core.read_bytes()
    if 512 + len(data) > first_partition:
        raise RuntimeError(f"{core} ({len(data)} bytes) does not fit before the first partition")
    with stick.open("r+b") as f:
        f.write(boot[:MBR_CODE])
        f.seek(512)
        f.write(data)


def loopback_stick(iso: Path, dest: Path, size: int = STICK_SIZE) -> Path:
    """The Ventoy-style stick: MBR; partition 1 exFAT (labelled Ventoy) holding the ISO as ISO_NAME; partition 2
    a 32 MiB FAT EFI partition with our GRUB as EFI/BOOT/BOOTX64.EFI; the same GRUB for BIOS in the MBR gap.
    Root: the exFAT partition is written through a loop device and FUSE (exfatprogs, exfat-fuse)."""
    _sparse(dest, size)
    esp_start = size - ESP_MIB * MIB
    data_size = esp_start - MIB
    table = (
        "label: dos\n"
        f"start=2048, size={data_size // 512}, type=7, bootable\n"
        f"start={esp_start // 512}, size={ESP_MIB * MIB // 512}, type=ef\n"
    )
    _run("sfdisk", "-q", dest, input=table)
    images = loader_images(dest.parent / f"{dest.stem}-grub")
    install_bios_loader(dest, images["i386-pc"], MIB)
    _run("mkfs.vfat", "-F", "16", "--offset", str(esp_start // 512), "-n", "VTOYEFI", dest, ESP_MIB * 1024)
    esp = f"{dest}@@{esp_start}"
    _run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    _run("mcopy", "-i", esp, images["x86_64-efi"], "::/EFI/BOOT/BOOTX64.EFI")
    with partition_device(dest, size=data_size) as loop:
        _run("mkfs.exfat", "-L", LOOPBACK_LABEL, loop)
    with fuse_mounted(dest, "exfat", size=data_size) as root:
        shutil.copyfile(iso, root / ISO_NAME)
    return dest


def ventoy_dat(dest: Path, size: int = 256 * MIB) -> Path:
    """Ventoy's persistence backend file, made as the build's `ventoy_dat=on` makes <name>-persistence.dat: ext4
    labelled `persistence`, holding persistence.conf."""
    _sparse(dest, size)
    usb.persistence_fs(dest, size, dest.parent, None)
    return dest


# vm.MODES' medium -> the stick made for it; boot_test makes each once and its modes boot it in turn, so a boot
# finds what the one before it left there (the raw stick's persistent storage).
BUILDERS = {"raw": raw_stick, "filecopy": filecopy_stick, "loopback": loopback_stick}
