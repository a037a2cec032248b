"""appliance.storage: is the data directory on a persistent partition or in RAM, and was the boot medium checked."""

from __future__ import annotations

from appliance import storage

# /proc/mounts of a Debian live system without persistence: / is an overlay whose upper layer is on a tmpfs.
LIVE = """\
/dev/sr0 /run/live/medium iso9660 ro,noatime 0 0
/dev/loop0 /run/live/rootfs/filesystem.squashfs squashfs ro,noatime 0 0
tmpfs /run/live/overlay tmpfs rw,noatime,mode=755 0 0
overlay / overlay rw,noatime,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=1611676k,mode=755 0 0
"""
# The same with a live-boot persistence partition: the upper layer is on ext4.
PERSISTENT = LIVE.replace(
    "tmpfs /run/live/overlay tmpfs rw,noatime,mode=755 0 0",
    "/dev/sdb3 /run/live/persistence/sdb3 ext4 rw,noatime 0 0",
).replace("upperdir=/run/live/overlay/rw", "upperdir=/run/live/persistence/sdb3/rw")
# A labelled data partition mounted at /srv/ocr (with a space in a mount point, escaped as /proc/mounts does).
DATA_PARTITION = LIVE + "/dev/sdb2 /srv/ocr ext4 rw,relatime 0 0\n/dev/sdc1 /media/MY\\040STICK vfat rw 0 0\n"


def where(text: str, path: str):
    mounts = storage.read_mounts(text)
    mount = storage.mount_of(path, mounts)
    return mount, storage.in_ram(mount, mounts)


def test_live_system_without_persistence_runs_from_ram():
    mount, ram = where(LIVE, "/srv/ocr")
    assert mount.point == "/" and mount.fstype == "overlay" and ram is True
    assert where(LIVE, "/run/appliance")[1] is True  # tmpfs itself


def test_persistence_or_a_data_partition_is_kept():
    assert where(PERSISTENT, "/srv/ocr")[1] is False
    mount, ram = where(DATA_PARTITION, "/srv/ocr/jobs")
    assert (mount.point, mount.device, ram) == ("/srv/ocr", "/dev/sdb2", False)
    assert where(DATA_PARTITION, "/media/MY STICK/scans")[0].fstype == "vfat"
    assert where(DATA_PARTITION, "/srv/ocrx")[0].point == "/"  # a prefix of the name is not inside it


def test_cannot_tell_without_mounts():
    assert storage.in_ram(None, []) is None
    overlay = storage.Mount("overlay", "/", "overlay", ("rw",))  # no upperdir option
    assert storage.in_ram(overlay, [overlay]) is None
    assert storage.in_ram(storage.Mount("/dev/zram0", "/srv", "ext4", ("rw",)), []) is True


def test_medium_marker(tmp_path):
    marker = tmp_path / "medium-verified"
    assert storage.medium_state(marker) == ("unchecked", "")
    marker.write_text("ok: sha256 of 812 files\n")
    assert storage.medium_state(marker) == ("verified", "sha256 of 812 files")
    marker.write_text("OK\n")
    assert storage.medium_state(marker) == ("verified", "")
    marker.write_text("failed: live/filesystem.squashfs does not match\n")
    assert storage.medium_state(marker) == ("failed", "live/filesystem.squashfs does not match")
    marker.write_text("checksum mismatch\n")
    assert storage.medium_state(marker) == ("failed", "checksum mismatch")
    marker.write_text("")
    assert storage.medium_state(marker)[0] == "unchecked"


def test_storage_of_a_real_folder(tmp_path):
    state = storage.storage(tmp_path, marker=tmp_path / "none")
    # This host did not boot from the appliance's medium: nothing to check (not "not checked").
    assert state.total >= state.free > 0 and state.mount and state.medium == "none"
    assert state.to_dict()["path"] == str(tmp_path)
    mounts = tmp_path / "mounts"
    mounts.write_text(LIVE)
    assert storage.storage(tmp_path, mounts_file=str(mounts), marker=tmp_path / "none").medium == "unchecked"
