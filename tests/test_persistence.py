"""Persistent storage on demand (appliance.persistence) on a stick stand-in (tests/persistence_sticks.py: the
builder's own hybrid ISO written raw into a sparse 1 GiB file, on a loop device): status and create run the real
sfdisk, partx, mkfs.ext4, debugfs and mount against it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from persistence_sticks import ENTRY3, needs_loop, run

from appliance import persistence
from appliance.messages import Text
from appliance.persistence import ALIGN, PERSISTENCE_CONF, PersistenceError

pytestmark = needs_loop


def conf_of(node: str) -> str:
    return run("debugfs", "-R", "cat /persistence.conf", node)


def test_create_appends_a_persistence_partition_and_touches_nothing_of_the_image(stick, iso):
    s = stick()
    original = s.image_digest()
    assert original == stick_digest_of(iso)
    now = persistence.status(**s.where)
    assert now.state == "possible" and now.offered and now.disk == s.disk
    p2_end = max(p["start"] + p["size"] for p in s.table()) * 512
    assert now.start == persistence.align_up(p2_end + persistence.ISO_TAIL) and now.start >= iso.stat().st_size
    assert now.size == (1 << 30) - now.start and now.size % ALIGN == 0
    steps = []
    done = persistence.create(**s.where, progress=steps.append)
    assert steps == ["partition", "format", "config"]
    assert done.state == "exists" and done.partition == f"{s.disk}p3"
    table = s.table()
    assert [p["type"] for p in table] == ["cd", "ef", "83"]
    assert table[2]["start"] * 512 == now.start and table[2]["size"] * 512 == now.size
    fs = persistence.probe(done.partition)
    assert fs["TYPE"] == "ext4" and fs["LABEL"] == "persistence"
    assert conf_of(done.partition) == PERSISTENCE_CONF == "/srv/ocr union\n"
    assert s.image_digest() == original  # boot code, partitions 1 and 2 and the ISO's tail, byte for byte
    with pytest.raises(PersistenceError) as again:
        persistence.create(**s.where)
    assert again.value.args[0].code == "persist_exists"
    assert len(s.table()) == 3


def stick_digest_of(iso: Path) -> str:
    data = bytearray(iso.read_bytes())
    data[ENTRY3.start : ENTRY3.stop] = bytes(len(ENTRY3))
    return hashlib.sha256(data).hexdigest()


def test_a_read_only_stick_is_refused(stick):
    s = stick(read_only=True)
    now = persistence.status(**s.where)
    assert now.state == "read_only" and not now.offered
    assert "read-only" in now.message and s.disk in now.message
    with pytest.raises(PersistenceError, match="read-only"):
        persistence.create(**s.where)


@pytest.mark.parametrize(
    ("extra", "state", "code"),
    [(100 << 20, "too_small", "persist_too_small"), (0, "unavailable", "persist_no_space")],
)
def test_too_little_free_space_is_refused(stick, iso, extra, state, code):
    s = stick(size=iso.stat().st_size + extra)
    now = persistence.status(**s.where)
    assert (now.state, now.message.code) == (state, code)
    with pytest.raises(PersistenceError):
        persistence.create(**s.where)
    assert len(s.table()) == 2


@pytest.mark.parametrize("cut_after", ["table", "partition", "format"])
def test_a_power_cut_leaves_the_image_whole_and_create_finishes_the_partition(stick, cut_after):
    """What a power cut leaves is what the steps before it wrote: run those, then look and finish."""
    s = stick()
    original = s.image_digest()
    plan = persistence.status(**s.where)
    node = persistence.add_partition(persistence.read_disk(s.name), plan.start, plan.size)
    if cut_after == "table":  # cut before the kernel was told: on this boot only the table knows partition 3
        run("partx", "--delete", "--nr", "3", s.disk)
    if cut_after == "format":
        persistence.make_filesystem(node)
        assert conf_of(node) == ""  # persistence.conf never came: live-boot ignores it
    assert s.image_digest() == original
    now = persistence.status(**s.where)
    assert now.state == "incomplete" and now.offered and now.partition == node
    assert now.message.code == "persist_incomplete"
    done = persistence.create(**s.where, progress=lambda step: None)
    assert done.state == "exists" and done.partition == node and len(s.table()) == 3
    assert conf_of(node) == PERSISTENCE_CONF and s.image_digest() == original


def test_an_old_filesystem_in_the_free_space_never_shows_through(stick, iso, tmp_path):
    """The stick once held the .img (a `persistence` ext4 with persistence.conf right after the ISO), then the ISO
    was written over it with dd: the old filesystem is still in the free space. The new partition starts blank, so
    even a run cut off after the table write does not bring the old data back as persistence."""
    start = persistence.align_up(iso.stat().st_size)
    old = tmp_path / "old"
    (old / "srv" / "ocr").mkdir(parents=True)
    (old / "persistence.conf").write_text(PERSISTENCE_CONF)
    (old / "srv" / "ocr" / "secret.txt").write_text("last year's results\n")

    def earlier_life(image):
        run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "persistence", "-d", old, "-E", f"offset={start}", image, "64M")

    s = stick(prepare=earlier_life)
    plan = persistence.status(**s.where)
    assert plan.state == "possible" and plan.start == start
    node = persistence.add_partition(persistence.read_disk(s.name), plan.start, plan.size)
    fs = persistence.probe(node)
    assert "TYPE" not in fs and "LABEL" not in fs and persistence.status(**s.where).state == "incomplete"


def test_a_partition_holding_other_data_is_never_taken(stick):
    """A third partition where create would put one, but with someone's filesystem on it: not ours, not touched."""
    s = stick()
    plan = persistence.status(**s.where)
    node = persistence.add_partition(persistence.read_disk(s.name), plan.start, plan.size)
    run("mkfs.ext4", "-q", "-F", "-L", "DATA", node)
    now = persistence.status(**s.where)
    assert now.state == "unavailable" and now.message.code == "persist_no_space"
    assert persistence.probe(node)["LABEL"] == "DATA"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("", "persist_not_live"),
        ("tmpfs {medium} tmpfs rw 0 0", "persist_not_disk"),  # copied to RAM
        ("{disk} {medium} iso9660 ro 0 0", "persist_iso_file"),  # an ISO file on a loop device (findiso=)
    ],
)
def test_no_offer_where_the_medium_is_not_a_stick_partition(stick, line, code):
    s = stick()
    s.mounts.write_text(line.format(medium=s.medium, disk=s.disk) + "\n")
    now = persistence.status(**s.where)
    assert now.state == "unavailable" and now.message.code == code and not now.offered


def test_the_unit_takes_a_request_and_writes_the_state(stick, tmp_path):
    """`appliance persistence update` as the root unit runs it: the state at boot, then a request from the web app."""
    s = stick()
    state_file, request = tmp_path / "run" / "persistence.json", tmp_path / "run" / "requests" / "persistence"
    persistence.update(state_file, request, **s.where)
    state = persistence.read_state(state_file)
    assert state["status"]["state"] == "possible" and state["job"] is None
    request.parent.mkdir(parents=True)
    request.write_text("/dev/vda please\n")  # the request's content is never read: the disk is worked out anew
    persistence.update(state_file, request, **s.where)
    state = persistence.read_state(state_file)
    assert not request.exists() and state["job"] == {"state": "done"}
    assert state["status"]["state"] == "exists" and state["status"]["partition"] == f"{s.disk}p3"
    persistence.request(request)  # asked again: refused, nothing changed
    persistence.update(state_file, request, **s.where)
    state = persistence.read_state(state_file)
    assert state["job"]["state"] == "refused" and state["job"]["message"]["code"] == "persist_exists"
    assert len(s.table()) == 3
    assert Text.from_dict(state["status"]["message"]) == state["status"]["text"]


def test_a_failed_step_is_said_and_the_next_request_finishes_it(stick, tmp_path, monkeypatch):
    """An image without mkfs.ext4: the partition is added, formatting fails, the state says why (not "working"),
    status calls the partition incomplete, and a later request (with the tool back) finishes it."""
    s = stick()
    state_file, request = tmp_path / "persistence.json", tmp_path / "requests" / "persistence"
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sfdisk", "partx", "blkid", "debugfs", "mount", "umount"):
        (tools / tool).symlink_to(shutil.which(tool))
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tools))
        persistence.request(request)
        state = persistence.update(state_file, request, **s.where)
    assert state.job["state"] == "failed" and state.job["message"]["code"] == "persist_tool_missing"
    assert state.job["text"] == "mkfs.ext4 is not installed" and state.status["state"] == "incomplete"
    persistence.request(request)
    state = persistence.update(state_file, request, **s.where)
    assert state.job == {"state": "done"} and state.status["partition"] == f"{s.disk}p3" and len(s.table()) == 3


def test_a_stick_filled_by_a_file_copy_writer_is_refused_with_the_reason(tmp_path):
    """Rufus in ISO mode (or UltraISO's file mode): one FAT32 partition over the whole stick holds the ISO's files and
    is the medium. No free space, and live-boot never looks for a persistence file on the medium's partition."""
    if not shutil.which("mkfs.vfat"):
        pytest.skip("needs mkfs.vfat (dosfstools)")
    image = tmp_path / "rufus.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input="start=2048, type=c, bootable\n", text=True, check=True)
    disk = run("losetup", "-f", "--show", "-P", image).strip()
    try:
        if not Path(f"/sys/class/block/{Path(disk).name}p1").exists():
            run("partx", "--add", disk)
        run("mkfs.vfat", "-F", "32", "-n", "OCR_APPLIAN", f"{disk}p1")
        (tmp_path / "mounts").write_text(f"{disk}p1 {tmp_path}/medium vfat ro,noatime 0 0\n")
        now = persistence.status(f"{tmp_path}/medium", str(tmp_path / "mounts"))
        assert now.state == "unavailable" and now.message.code == "persist_no_space" and "Rufus" in now.message
    finally:
        subprocess.run(["partx", "--delete", disk], capture_output=True)
        run("losetup", "-d", disk)
