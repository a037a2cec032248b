"""A stick stand-in for the persistence tests (tests/test_persistence.py, tests/webui/test_persistence_page.py): a
hybrid ISO made by the image builder's own xorriso call (imagebuilder.iso.make_iso) from a dummy tree, written raw
into a sparse file, attached as a loop device.

What is not the real thing: live-boot's mount of the medium is a line in a mounts file (this host's kernel has no
iso9660), and partition 1 is held open exclusively as a mount holds it, so sfdisk sees the stick in use as on the
appliance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = ("losetup", "partx", "sfdisk", "blkid", "mkfs.ext4", "debugfs", "xorriso", "mount")
needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS) or not Path("/dev/loop-control").exists(),
    reason=f"needs root, loop devices and {', '.join(TOOLS)}",
)
REPO = Path(__file__).resolve().parent.parent
ENTRY3 = range(446 + 32, 446 + 48)  # the MBR's third partition entry: the only bytes of the image create may change


@pytest.fixture(scope="module")
def iso(tmp_path_factory) -> Path:
    """A small ISO made by imagebuilder.iso.make_iso (GRUB's hybrid MBR, ISO9660 as partition 1, an appended
    partition 2 as the ESP), from a dummy tree: random bytes stand in for the layers and the boot images."""
    from imagebuilder import iso as iso_stage
    from imagebuilder.context import Context
    from imagebuilder.settings import resolve

    if not iso_stage.GRUB_MBR.exists():
        pytest.skip(f"needs {iso_stage.GRUB_MBR} (grub-pc-bin)")
    tmp = tmp_path_factory.mktemp("iso")
    config = resolve("cpu", [], out_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    ctx = Context(config=config, repo=REPO, out_dir=tmp / "out", cache_dir=tmp / "cache", work=tmp, epoch=1700000000)
    tree = tmp / "tree"
    for rel, size in ((iso_stage.BIOS_IMAGE, 4096), ("live/filesystem.squashfs", 3 << 20)):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(os.urandom(size))
    efi = tmp / "efi.img"
    efi.write_bytes(os.urandom(4 << 20))
    ctx.files.update(iso_tree=tree, efi_img=efi)
    iso_stage.make_iso(ctx)
    return ctx.files["iso"]


class Stick:
    """The ISO written raw to a stick of `size` bytes, attached as a loop device (read-only if asked), with its
    partition 1 as live-boot's medium."""

    def __init__(self, iso: Path, folder: Path, size: int, read_only: bool = False, prepare=None):
        self.iso, self.file = iso, folder / "stick.img"
        shutil.copyfile(iso, self.file)
        os.truncate(self.file, size)
        if prepare:  # what else is on the stick (an earlier life of it), written before it is attached
            prepare(self.file)
        flags = ["-r"] if read_only else []
        self.disk = run("losetup", "-f", "--show", "-P", *flags, self.file).strip()
        self.name = os.path.basename(self.disk)
        if not Path(f"/sys/class/block/{self.name}p1").exists():  # a kernel without the MBR parser
            run("partx", "--add", self.disk)
        self.medium, self.mounts = str(folder / "medium"), folder / "mounts"
        self.mounts.write_text(f"{self.disk}p1 {self.medium} iso9660 ro,noatime 0 0\n")
        self.held = os.open(f"{self.disk}p1", os.O_RDONLY | os.O_EXCL)  # as live-boot's mount holds it

    @property
    def where(self) -> dict:
        return {"medium": self.medium, "mounts_file": str(self.mounts)}

    def close(self) -> None:
        os.close(self.held)
        subprocess.run(["partx", "--delete", self.disk], capture_output=True)
        run("losetup", "-d", self.disk)

    def table(self) -> list[dict]:
        return json.loads(run("sfdisk", "--json", self.disk))["partitiontable"]["partitions"]

    def image_digest(self) -> str:
        """The ISO's bytes as written on the stick (partitions 1-2, boot code, 300 KiB tail), but for entry 3."""
        os.sync()
        size = self.iso.stat().st_size
        with open(self.file, "rb") as f:
            data = bytearray(f.read(size))
        data[ENTRY3.start : ENTRY3.stop] = bytes(len(ENTRY3))
        return hashlib.sha256(data).hexdigest()


def run(*cmd) -> str:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def stick(iso, tmp_path):
    sticks = []

    def make(size: int = 1 << 30, read_only: bool = False, prepare=None) -> Stick:
        folder = tmp_path / f"stick{len(sticks)}"
        folder.mkdir()
        sticks.append(Stick(iso, folder, size, read_only, prepare))
        return sticks[-1]

    yield make
    for s in sticks:
        with contextlib.suppress(subprocess.CalledProcessError):
            s.close()
