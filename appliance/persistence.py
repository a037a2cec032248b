"""Persistent storage on demand: a `persistence` partition made in the free space of the stick the appliance booted
from, so that /srv/ocr (results, history, settings) survives a power-off, as the .img's partition does.

Who does what. The web app (user `ocr`, no privileges) only reads STATE_FILE and, when the person confirms, creates
REQUEST_FILE (its content is never read). appliance-persistence.path starts appliance-persistence.service as root
for it, which runs `appliance persistence update`: it deletes the request and works everything out itself from the
running system, never from the web app: the disk is the one holding the partition live-boot mounted on
/run/live/medium, and nothing else. The same unit runs at boot to write the first state.

What `create` does on a stick written raw with the hybrid ISO (dd, Etcher, Rufus DD: MBR, partition 1 = ISO9660,
2 = the EFI partition, then unallocated space), in an order where a power cut at any moment leaves a stick that
boots as before:
  1. zeroes the first MiB of the free space (no old filesystem may show through the new partition);
  2. appends partition 3 (type 83) with one sfdisk call, 1 MiB aligned, after the image and its 300 KiB tail,
     to the end of the stick; the MBR's boot code and partitions 1-2 stay byte for byte as they were;
  3. mkfs.ext4 labelled `persistence` on it;
  4. persistence.conf (`/srv/ocr union`, what the .img has) written under a temporary name, fsynced, renamed.
live-boot ignores a `persistence` volume without persistence.conf, so a stick cut off before step 4 boots as before,
and `status` calls it "incomplete": `create` then finishes it on the same partition (a blank one, or an ext4
`persistence` without persistence.conf, at exactly the place step 2 puts it; anything else is never touched).

What is refused, with a reason: not booted from a partition of a disk (a CD, copy to RAM, an ISO file booted by
Ventoy or GRUB loopback), a read-only stick, a table that is not MBR or is full, less than MIN_FREE free after the
image's partitions (a writer that copied files onto one FAT partition filling the stick: Rufus ISO mode, UltraISO).
A persistence *file* on such a FAT/exFAT partition is not offered: live-boot (20250815) leaves the devices mounted on
/run/live/medium and /run/live/findiso out of its search for persistence, so it would never be used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from appliance import storage
from appliance.messages import Text

LABEL = "persistence"
PERSISTENCE_CONF = "/srv/ocr union\n"  # live-boot: keep /srv/ocr (jobs, results, scan folders, settings), no more
ALIGN = 1 << 20
ISO_TAIL = 300 * 1024  # xorriso pads the image with 300 KiB after its last partition: left as it is
MIN_FREE = 256 << 20
MBR_SECTORS = 2**32  # the most an MBR partition entry can reach
PARTITION_TYPE = "83"
STATE_FILE = Path("/run/appliance/persistence.json")  # written by root (`update`), read by the web app
REQUEST_FILE = Path("/run/appliance/requests/persistence")  # made by the web app; its content is never read

# Whether the UI offers to create (or finish) persistent storage, by state.
OFFERED = ("possible", "incomplete")


class PersistenceError(Exception):
    """A refusal or a failed step; its first argument is a Text for people."""


def align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def sfdisk_line(start: int, size: int, sector: int = 512) -> str:
    """The sfdisk script line that appends the persistence partition (bytes in, sectors out)."""
    return f"start={start // sector}, size={size // sector}, type={PARTITION_TYPE}\n"


@dataclass(frozen=True)
class Partition:
    number: int
    node: str
    start: int  # bytes
    size: int
    type: str

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Disk:
    name: str  # sda
    size: int  # bytes
    sector: int
    label: str  # dos | gpt | ...
    partitions: tuple[Partition, ...]
    read_only: bool
    description: str  # vendor and model, as the kernel has them

    @property
    def node(self) -> str:
        return f"/dev/{self.name}"


@dataclass
class Status:
    state: str  # possible | incomplete | exists | read_only | too_small | unavailable
    message: Text
    disk: str | None = None
    description: str = ""
    disk_size: int = 0
    start: int = 0  # where the partition goes (possible) or is (incomplete, exists), in bytes
    size: int = 0
    partition: str | None = None  # incomplete, exists: its device

    @property
    def offered(self) -> bool:
        return self.state in OFFERED

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict() would deep-copy the Text
        data["message"] = self.message.to_dict()
        data["text"] = str(self.message)
        return data


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise PersistenceError(Text("persist_tool_missing", tool=cmd[0])) from exc
    if proc.returncode:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PersistenceError(Text("persist_tool_failed", tool=cmd[0], detail=detail[-1] if detail else ""))
    return proc


def _sysfs(name: str, attr: str) -> str:
    try:
        return Path("/sys/class/block", name, attr).read_text().strip()
    except OSError:
        return ""


def boot_partition(medium: str = storage.LIVE_MEDIUM, mounts_file: str = "/proc/mounts") -> tuple[str, str] | Text:
    """(partition name, disk name) of the medium live-boot mounted; or why there is none to use."""
    try:
        mounts = storage.read_mounts(Path(mounts_file).read_text())
    except OSError:
        mounts = []
    mount = next((m for m in reversed(mounts) if m.point == medium), None)
    if mount is None:
        return Text("persist_not_live")
    name = os.path.basename(os.path.realpath(mount.device)) if mount.device.startswith("/dev/") else ""
    if not name or not Path("/sys/class/block", name).exists():
        return Text("persist_not_disk")  # copied to RAM (toram), or from the network
    if not _sysfs(name, "partition"):
        if name.startswith(("loop", "dm-")):
            return Text("persist_iso_file")  # an ISO file: Ventoy's device mapper, GRUB loopback + findiso=
        return Text("persist_whole_disk")  # a CD/DVD, or the ISO9660 seen on the whole disk
    disk = os.path.basename(os.path.dirname(os.path.realpath(f"/sys/class/block/{name}")))
    return name, disk


def read_disk(name: str) -> Disk:
    table = json.loads(_run(["sfdisk", "--json", f"/dev/{name}"]).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    partitions = tuple(
        Partition(
            number=int(re.search(r"(\d+)$", p["node"]).group(1)),
            node=p["node"],
            start=p["start"] * sector,
            size=p["size"] * sector,
            type=str(p.get("type", "")).lower(),
        )
        for p in table.get("partitions", [])
    )
    words = [_sysfs(name, f"device/{attr}") for attr in ("vendor", "model")]
    return Disk(
        name=name,
        size=int(_sysfs(name, "size") or 0) * 512,  # the kernel counts 512-byte sectors here, whatever the device's
        sector=sector,
        label=table.get("label", ""),
        partitions=tuple(sorted(partitions, key=lambda p: p.start)),
        read_only=_sysfs(name, "ro") == "1",
        description=" ".join(w for w in words if w),
    )


def probe(node: str) -> dict[str, str]:
    """blkid's low-level probe of a device (TYPE, LABEL, ...): {} when it finds no filesystem."""
    proc = subprocess.run(["blkid", "-p", "-o", "export", node], capture_output=True, text=True)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def has_conf(node: str) -> bool:
    """Whether the ext filesystem on `node` has a non-empty /persistence.conf (read without mounting it)."""
    proc = subprocess.run(["debugfs", "-R", "cat /persistence.conf", node], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def planned_start(partitions) -> int:
    """Where a partition appended after these goes: 1 MiB aligned, past the image's 300 KiB tail."""
    return align_up(max((p.end for p in partitions), default=0) + ISO_TAIL)


def status(medium: str = storage.LIVE_MEDIUM, mounts_file: str = "/proc/mounts") -> Status:
    """What can be done on the boot stick, read from the running system (root: sfdisk and blkid read the disk)."""
    found = boot_partition(medium, mounts_file)
    if isinstance(found, Text):
        return Status("unavailable", found)
    medium_part, name = found
    try:
        disk = read_disk(name)
    except (PersistenceError, ValueError, KeyError) as exc:
        return Status("unavailable", Text("persist_unreadable", disk=f"/dev/{name}", error=exc.args[0]))
    facts = {"disk": disk.node, "description": disk.description, "disk_size": disk.size}
    for part in disk.partitions:
        fs = probe(part.node)
        if fs.get("LABEL") == LABEL and fs.get("TYPE", "").startswith("ext") and has_conf(part.node):
            return Status("exists", Text("persist_exists", device=part.node), **facts, **_where(part))
    if disk.read_only:
        return Status("read_only", Text("persist_read_only", disk=disk.node), **facts)
    if disk.label != "dos":
        return Status("unavailable", Text("persist_table", disk=disk.node, label=disk.label or "?"), **facts)
    last = disk.partitions[-1] if disk.partitions else None
    if last and _ours(last, disk, medium_part):
        return Status("incomplete", Text("persist_incomplete", device=last.node), **facts, **_where(last))
    if len(disk.partitions) >= 4 or any(p.type in ("5", "f", "85") for p in disk.partitions):
        return Status("unavailable", Text("persist_table_full", disk=disk.node), **facts)
    start = planned_start(disk.partitions)
    end = min(disk.size, MBR_SECTORS * disk.sector) // ALIGN * ALIGN
    free = max(0, end - start)
    if free < ALIGN:
        return Status("unavailable", Text("persist_no_space", disk=disk.node), **facts)
    if free < MIN_FREE:
        text = Text("persist_too_small", free=free >> 20, minimum=MIN_FREE >> 20)
        return Status("too_small", text, **facts, start=start, size=free)
    text = Text("persist_possible", size=free >> 20, disk=disk.node)
    return Status("possible", text, **facts, start=start, size=free)


def _where(part: Partition) -> dict:
    return {"start": part.start, "size": part.size, "partition": part.node}


def _ours(part: Partition, disk: Disk, medium_part: str) -> bool:
    """A partition `create` made and did not finish: exactly where it puts one, its type, and blank or an ext
    `persistence` without persistence.conf. Never the medium's partition, never anything holding other data."""
    before = [p for p in disk.partitions if p is not part]
    if os.path.basename(part.node) == medium_part or not before or part.type != PARTITION_TYPE:
        return False
    if part.start != planned_start(before):
        return False
    fs = probe(part.node)
    blank = not fs.get("TYPE") and not fs.get("PTTYPE")
    return blank or (fs.get("TYPE", "").startswith("ext") and fs.get("LABEL") == LABEL)


# ---- making it (root) ---------------------------------------------------------------------------------------------


def add_partition(disk: Disk, start: int, size: int) -> str:
    """Steps 1-2: blank the start of the free space, append the partition in one sfdisk call, make the kernel see
    it (the stick's first partition is mounted, so sfdisk must not re-read the table: partx adds just this one)."""
    with open(disk.node, "r+b", buffering=0) as dev:
        dev.seek(start)
        dev.write(bytes(ALIGN))
        os.fsync(dev.fileno())
    _run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never"]
        + ["--append", disk.node],
        input=sfdisk_line(start, size, disk.sector),
    )
    return kernel_node(disk, len(disk.partitions) + 1)


def kernel_node(disk: Disk, number: int) -> str:
    """The device of partition `number`, told to the kernel first if it does not know it yet (written with
    --no-tell-kernel, or a run cut off right after the table was written)."""
    if not partition_name(disk.name, number):
        _run(["partx", "--add", "--nr", str(number), disk.node])
    for _ in range(100):  # the device node follows the kernel's uevent (devtmpfs, then udev)
        name = partition_name(disk.name, number)
        if name and Path("/dev", name).exists():
            return f"/dev/{name}"
        time.sleep(0.1)
    raise PersistenceError(Text("persist_no_node", disk=disk.node, number=number))


def partition_name(disk: str, number: int) -> str | None:
    """The kernel's name for partition `number` of `disk` (sda3, mmcblk0p3, loop0p3), if it knows one."""
    for entry in Path("/sys/class/block", disk).iterdir():
        if _sysfs(f"{disk}/{entry.name}", "partition") == str(number):
            return entry.name
    return None


def make_filesystem(node: str) -> None:
    """Step 3: ext4 labelled `persistence` (no persistence.conf yet: live-boot ignores it until step 4)."""
    _run(["mkfs.ext4", "-q", "-F", "-L", LABEL, "-E", "nodiscard", node])


def write_conf(node: str) -> None:
    """Step 4: persistence.conf under a temporary name, synced, then renamed: it appears whole or not at all."""
    mountpoint = tempfile.mkdtemp(prefix="appliance-persistence-")
    try:
        _run(["mount", "-t", "ext4", "-o", "nosuid,nodev,noexec", node, mountpoint])
        try:
            tmp = Path(mountpoint, "persistence.conf.tmp")
            with open(tmp, "w") as f:
                f.write(PERSISTENCE_CONF)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, Path(mountpoint, "persistence.conf"))
            folder = os.open(mountpoint, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        finally:
            _run(["umount", mountpoint])
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)
    os.sync()


def create(medium: str = storage.LIVE_MEDIUM, mounts_file: str = "/proc/mounts", progress=None) -> Status:
    """Make (or finish) persistent storage on the boot stick; refuse with the reason otherwise. `progress(step)` is
    told each step: partition, format, config. Returns the status afterwards (`exists`)."""
    progress = progress or (lambda step: None)
    before = status(medium, mounts_file)
    if not before.offered:
        raise PersistenceError(before.message)
    disk = read_disk(os.path.basename(before.disk))
    if before.state == "possible":
        progress("partition")
        node = add_partition(disk, before.start, before.size)
    else:  # incomplete: the last partition, made here before
        node = kernel_node(disk, disk.partitions[-1].number)
    progress("format")
    make_filesystem(node)
    progress("config")
    write_conf(node)
    after = status(medium, mounts_file)
    if after.state != "exists":
        raise PersistenceError(after.message)
    return after


# ---- the unit's side: request in, state out ------------------------------------------------------------------------


@dataclass
class State:
    """What STATE_FILE holds: the status, and the last request's outcome (job: running | done | failed | refused)."""

    status: dict
    job: dict | None = None
    updated: float = field(default_factory=time.time)


def write_state(path: Path, state: State) -> None:
    """Atomically, readable by the web app. mkstemp: the folder is root's, but never follow a planted name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".persistence-")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, ensure_ascii=False)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_state(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("status"), dict) else None


def request(path: Path = REQUEST_FILE) -> None:
    """The web app's side: ask the root unit to create persistent storage (nothing in the file is trusted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.0f}\n")


def update(
    state_file: Path = STATE_FILE,
    request_file: Path = REQUEST_FILE,
    medium: str = storage.LIVE_MEDIUM,
    mounts_file: str = "/proc/mounts",
) -> State:
    """What appliance-persistence.service runs (root): take a pending request, if any, and create; always write the
    state the web app shows. The request is removed only once the state says what became of it, so the page never
    falls between the two (it would offer again while the partition is being made)."""
    requested = os.path.lexists(request_file)
    now = status(medium, mounts_file)
    if not requested:
        state = State(now.to_dict())
    elif not now.offered:
        state = State(now.to_dict(), {"state": "refused", "message": now.message.to_dict(), "text": str(now.message)})
        write_state(state_file, state)
        _take(request_file)
    else:

        def progress(step: str) -> None:
            write_state(state_file, State(now.to_dict(), {"state": "running", "step": step}))

        progress("partition" if now.state == "possible" else "format")
        _take(request_file)
        try:
            done = create(medium, mounts_file, progress)
            state = State(done.to_dict(), {"state": "done"})
        except Exception as exc:  # whatever it was, the page must stop saying "working"
            if isinstance(exc, PersistenceError) and isinstance(exc.args[0], Text):
                text = exc.args[0]
            else:
                traceback.print_exc()  # the journal keeps the whole story
                text = Text("persist_failed", error=getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            state = State(status(medium, mounts_file).to_dict(), _failed(text))
    write_state(state_file, state)
    return state


def _take(request_file: Path) -> None:
    """The request goes (a folder planted there too, when it is empty): the .path unit would start us again."""
    try:
        request_file.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        with contextlib.suppress(OSError):
            request_file.rmdir()


def _failed(text: Text) -> dict:
    return {"state": "failed", "message": text.to_dict(), "text": str(text)}
