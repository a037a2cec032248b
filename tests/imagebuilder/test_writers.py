"""Sticks as the usual writers leave them (imagebuilder/boottest/writers.py) and the ISO's loopback.cfg, on a small
ISO made by the builder's own steps (its real GRUB images and xorriso call; random bytes for kernel, initrd and
layer). What GRUB would see is read back with GRUB's own filesystem code (grub-fstest), not with the host's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from contexts import make_ctx

from imagebuilder import boot
from imagebuilder import iso as iso_stage
from imagebuilder.boottest import writers
from imagebuilder.boottest.run import STICKS
from imagebuilder.boottest.vm import MODES, WRITER_MODES, split_mode

TOOLS = ("grub-mkimage", "xorriso", "mkfs.vfat", "mcopy", "sfdisk", "blkid", "grub-fstest")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS) or not iso_stage.GRUB_MBR.exists(),
    reason=f"needs {', '.join(TOOLS)} and GRUB's BIOS files (grub-pc-bin)",
)
EXFAT_TOOLS = ("losetup", "mkfs.exfat", "mount.exfat-fuse")
needs_exfat = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in EXFAT_TOOLS) or not Path("/dev/fuse").exists(),
    reason=f"needs root, /dev/fuse and {', '.join(EXFAT_TOOLS)}",
)
SMALL = 64 << 20  # the sticks here: big enough for FAT32, small enough to write in a moment


class Layer:
    def __init__(self, path: Path):
        self.path, self.order, self.filename = path, 0, "00-base.squashfs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(ctx, iso): the builder's bootloader, tree and ISO steps on dummy kernel, initrd and layer."""
    tmp = tmp_path_factory.mktemp("writers")
    ctx = make_ctx(tmp)
    ctx.work.mkdir(parents=True)
    boot.make_bootloader(ctx)
    for name in ("kernel", "initrd", "layer"):
        (tmp / name).write_bytes(os.urandom(1 << 20))
        ctx.files[name] = tmp / name
    ctx.layers = [Layer(tmp / "layer")]
    iso_stage.populate_tree(ctx)
    iso_stage.make_iso(ctx)
    return ctx, ctx.files["iso"]


def grub(image: Path, *command: str) -> str:
    return subprocess.run(["grub-fstest", str(image), *command], check=True, capture_output=True, text=True).stdout


def table(image: Path) -> dict:
    return json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True).stdout)[
        "partitiontable"
    ]


def probe(image: Path, offset: int) -> dict:
    cmd = ["blkid", "-p", "-o", "export", "-O", str(offset), str(image)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def crc(path: Path) -> str:
    return f"{zlib.crc32(path.read_bytes()):08x}"


def test_loopback_cfg_is_the_menu_with_findiso_on_every_kernel_line(tmp_path):
    ctx = make_ctx(tmp_path)
    plain, loop = boot.grub_cfg(ctx).splitlines(), boot.grub_cfg(ctx, loopback=True).splitlines()
    assert len(plain) == len(loop)  # the same lines, so the boot test's keys reach the same line of each entry
    kernel_lines = [(a, b) for a, b in zip(plain, loop, strict=True) if a.strip().startswith("linux ")]
    assert len(kernel_lines) == len(boot.MENU)
    for a, b in kernel_lines:
        assert "findiso" not in a
        assert "findiso=${iso_path}" in b and b.replace(boot.FINDISO_ARG, "", 1) == a
    others = [a for a, b in zip(plain, loop, strict=True) if a != b and not a.strip().startswith("linux ")]
    assert others == [plain[0]]  # and the comment on top


def test_the_iso_carries_loopback_cfg_and_grub_reads_it(built):
    ctx, iso = built
    assert grub(iso, "cat", "(loop0)/boot/grub/loopback.cfg") == boot.grub_cfg(ctx, loopback=True)
    if shutil.which("grub-script-check"):
        subprocess.run(["grub-script-check", str(ctx.work / "iso/boot/grub/loopback.cfg")], check=True)
    sums = (ctx.work / "iso/sha256sum.txt").read_text()  # "Check the medium" checks it too
    assert "./boot/grub/loopback.cfg" in sums


def test_writer_modes_parse_and_each_has_a_stick():
    assert set(WRITER_MODES) == {"bios-raw", "uefi-raw", "uefi-filecopy", "bios-loopback", "uefi-loopback"}
    for mode in WRITER_MODES:
        assert split_mode(mode) == (mode, "normal")
        assert split_mode(mode + ":toram") == (mode, "toram")
    assert {medium for _, medium in MODES.values()} - {"cd"} == set(STICKS)
    with pytest.raises(SystemExit):
        split_mode("bios-filecopy")  # BIOS of a file copy needs the writer's own boot code: not a mode


def test_raw_stick_is_the_iso_then_free_space(built, tmp_path):
    _, iso = built
    stick = writers.raw_stick(iso, tmp_path / "raw.img", SMALL)
    assert stick.stat().st_size == SMALL
    assert stick.stat().st_blocks * 512 < SMALL // 2  # sparse: the free space takes no room on the host
    with stick.open("rb") as f:
        assert f.read(iso.stat().st_size) == iso.read_bytes()
    assert [p["type"] for p in table(stick)["partitions"]] == [table(iso)["partitions"][0]["type"], "ef"]


def test_filecopy_stick_is_gpt_fat32_with_every_file_of_the_iso(built, tmp_path):
    ctx, iso = built
    stick = writers.filecopy_stick(iso, tmp_path / "filecopy.img", SMALL)
    parts = table(stick)
    assert parts["label"] == "gpt"
    assert [(p["start"], p["type"]) for p in parts["partitions"]] == [(2048, writers.BASIC_DATA)]
    assert probe(stick, writers.MIB)["TYPE"] == "vfat" and probe(stick, writers.MIB)["VERSION"] == "FAT32"
    tree = ctx.work / "iso"
    for rel in ("EFI/BOOT/BOOTX64.EFI", boot.marker(ctx).lstrip("/"), "boot/grub/grub.cfg", "live/00-base.squashfs"):
        # GRUB's own FAT code finds the marker its embedded config searches for, and the files it then loads.
        assert grub(stick, "crc", f"(loop0,gpt1)/{rel}").strip() == crc(tree / rel), rel
    names = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    listed = subprocess.run(
        ["mdir", "-/", "-b", "-i", f"{stick}@@{writers.MIB}", "::/"], check=True, capture_output=True, text=True
    ).stdout
    assert {line.removeprefix("::/") for line in listed.split() if not line.endswith("/")} >= names


def test_loader_cfg_follows_grubs_loopback_convention():
    cfg = writers.loader_cfg("/ocr-appliance.iso")
    assert "search --no-floppy --set=root --file /ocr-appliance.iso" in cfg
    assert cfg.index("export iso_path") < cfg.index("configfile /boot/grub/loopback.cfg")
    assert "set root=(loop)" in cfg
    if shutil.which("grub-script-check"):
        subprocess.run(["grub-script-check"], input=cfg, text=True, check=True)


@needs_exfat
def test_loopback_stick_is_ventoys_layout_with_our_grub(built, tmp_path):
    _, iso = built
    stick = writers.loopback_stick(iso, tmp_path / "loopback.img", SMALL)
    parts = table(stick)
    assert parts["label"] == "dos"
    esp_start = SMALL - writers.ESP_MIB * writers.MIB
    assert [(p["start"] * 512, p["type"]) for p in parts["partitions"]] == [(writers.MIB, "7"), (esp_start, "ef")]
    data, esp = probe(stick, writers.MIB), probe(stick, esp_start)
    assert (data["TYPE"], data["LABEL"]) == ("exfat", writers.LOOPBACK_LABEL)
    assert (esp["TYPE"], esp["LABEL"]) == ("vfat", "VTOYEFI")
    # GRUB's exFAT code reads the ISO file whole; the ESP holds the UEFI loader.
    assert grub(stick, "crc", f"(loop0,msdos1)/{writers.ISO_NAME}").strip() == crc(iso)
    work = tmp_path / "loopback-grub"
    assert grub(stick, "crc", "(loop0,msdos2)/EFI/BOOT/BOOTX64.EFI").strip() == crc(work / "BOOTX64.EFI")
    # BIOS: GRUB's boot code in the MBR (the table kept), its core right after it.
    raw = stick.read_bytes()[: writers.MIB]
    boot_img = (writers.GRUB / "i386-pc/boot.img").read_bytes()
    assert raw[: writers.DRIVE_CHECK] == boot_img[: writers.DRIVE_CHECK]
    assert raw[writers.DRIVE_CHECK : writers.DRIVE_CHECK + 2] == b"\x90\x90"
    core = (work / "core.img").read_bytes()
    assert raw[512 : 512 + len(core)] == core
    assert raw[510:512] == b"\x55\xaa"


def grub_emu(tmp_path: Path, stick: Path, cfg: str, seconds: int = 12) -> str:
    """GRUB itself (grub-emu: its script engine, filesystems and menu, in user space) running `cfg` with `stick` as
    its first disk, until the menu has booted its default entry (emu has no `linux`: that is where it stops)."""
    folder = tmp_path / "emu"
    folder.mkdir(exist_ok=True)
    (folder / "grub.cfg").write_text(cfg)
    (folder / "device.map").write_text(f"(hd0) {stick}\n")
    proc = subprocess.run(
        ["timeout", str(seconds), "grub-emu", "-d", str(folder), "-m", str(folder / "device.map")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return proc.stdout.decode(errors="replace")


needs_emu = pytest.mark.skipif(not shutil.which("grub-emu"), reason="needs grub-emu (apt-get install grub-emu)")


@needs_emu
def test_the_iso_s_own_grub_boots_its_menu_from_a_file_copy(built, tmp_path):
    """The embedded config of BOOTX64.EFI (boot.early_cfg) on the FAT32 stick: it finds the marker there, reads
    grub.cfg from it and boots the first entry."""
    ctx, iso = built
    stick = writers.filecopy_stick(iso, tmp_path / "filecopy.img", SMALL)
    out = grub_emu(tmp_path, stick, boot.early_cfg(ctx))
    assert "executed automatically" in out and f"Booting `{ctx.config.name}'" in out
    assert "can't find command `linux'" in out  # emu's end of the road: the entry's first command ran


@needs_exfat
@needs_emu
def test_the_ventoy_style_loader_boots_the_iso_s_loopback_menu(built, tmp_path):
    ctx, iso = built
    stick = writers.loopback_stick(iso, tmp_path / "loopback.img", SMALL)
    # A look in between: what the sourced file sees (configfile opens a new context: only exported variables).
    probe = tmp_path / "probe.cfg"
    probe.write_text("echo root=$root iso_path=$iso_path\nconfigfile /boot/grub/loopback.cfg\n")
    loader = writers.loader_cfg()
    assert loader.count("configfile /boot/grub/loopback.cfg") == 1
    out = grub_emu(tmp_path, stick, loader.replace("configfile /boot/grub/loopback.cfg", f"configfile (host){probe}"))
    assert f"root=loop iso_path=/{writers.ISO_NAME}" in out
    assert "executed automatically" in out and f"Booting `{ctx.config.name}'" in out
    assert "can't find command `linux'" in out


def test_ventoy_persistence_dat_is_a_disk_of_its_own_for_live_boot(tmp_path):
    """--persistence on a Ventoy-style stick: the .dat (as `ventoy_dat=on` makes it) is attached as the block
    device Ventoy's plugin maps it to (device-mapper: not a USB disk, so the appliance's stick mounting leaves it to
    live-boot), and its first boot already counts on it."""
    from imagebuilder import usb
    from imagebuilder.boottest.vm import Vm

    dat = writers.ventoy_dat(tmp_path / "ventoy-persistence.dat", size=16 << 20)
    fs = probe(dat, 0)
    assert (fs["TYPE"], fs["LABEL"]) == ("ext4", "persistence")
    listing = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(dat)], capture_output=True, text=True)
    assert listing.stdout == usb.PERSISTENCE_CONF
    command = " ".join(Vm(disk=tmp_path / "stick.img", mode="bios-loopback", dir=tmp_path, ventoy_dat=dat).command())
    assert f"file={dat},format=raw,if=none,id=vtoydat -device virtio-blk-pci,drive=vtoydat" in command
    assert "vtoydat" not in " ".join(Vm(disk=tmp_path / "stick.img", mode="bios-loopback", dir=tmp_path).command())
