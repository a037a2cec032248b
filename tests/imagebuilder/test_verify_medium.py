"""The image's medium check (rootfs/usr/local/lib/appliance/verify-medium), run here on a medium-like folder."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from appliance.storage import medium_state

SCRIPT = Path(__file__).resolve().parents[2] / "rootfs/usr/local/lib/appliance/verify-medium"


@pytest.fixture
def medium(tmp_path):
    root = tmp_path / "medium"
    (root / "live").mkdir(parents=True)
    files = {"live/00-base.squashfs": b"base layer" * 1000, "boot/grub/grub.cfg": b"menuentry"}
    lines = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  ./{rel}")
    (root / "sha256sum.txt").write_text("\n".join(lines) + "\n")
    return root


def check(medium: Path, marker: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), str(medium), str(marker)], capture_output=True, text=True, timeout=60)


def test_intact_medium_is_verified(medium, tmp_path):
    marker = tmp_path / "run" / "medium-verified"
    proc = check(medium, marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state, detail = medium_state(marker)
    assert state == "verified" and detail.startswith("2 files match")
    assert not marker.with_name("medium-verified.partial").exists()


def test_a_changed_byte_fails_and_names_the_file(medium, tmp_path):
    layer = medium / "live/00-base.squashfs"
    data = bytearray(layer.read_bytes())
    data[100] ^= 1
    layer.write_bytes(bytes(data))
    marker = tmp_path / "medium-verified"
    assert check(medium, marker).returncode == 1
    state, detail = medium_state(marker)
    assert state == "failed" and "./live/00-base.squashfs" in detail and "grub.cfg" not in detail


def test_missing_checksum_list_fails(tmp_path):
    marker = tmp_path / "medium-verified"
    assert check(tmp_path, marker).returncode == 1
    assert medium_state(marker)[0] == "failed"
