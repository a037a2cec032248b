"""The image's USB automount pieces point at each other (udev rule -> template unit -> script)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOTFS = Path(__file__).resolve().parents[2] / "rootfs"


def test_rule_unit_and_script_fit_together():
    rule = (ROOTFS / "etc/udev/rules.d/90-appliance-usb.rules").read_text()
    unit_name = re.search(r'SYSTEMD_WANTS}\+="([\w@.-]+)@%k\.service"', rule).group(1)
    unit = (ROOTFS / f"usr/lib/systemd/system/{unit_name}@.service").read_text()
    assert "BindsTo=dev-%i.device" in unit  # pulled stick -> unit stops -> unmount
    script = ROOTFS / re.search(r"ExecStart=/(\S+) add %I", unit).group(1)
    assert script.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(script)], check=True)
    # Only the filesystems sticks carry; never our own ISO9660 medium or ext4 persistence partition.
    assert 'ENV{ID_FS_TYPE}=="vfat|exfat|ntfs"' in rule and 'ENV{ID_BUS}=="usb"' in rule


def test_boot_test_data_stick_holds_the_picture(tmp_path):
    from imagebuilder.boottest import sticks

    stick = sticks.data_stick(tmp_path / "stick.img")
    listing = subprocess.run(["mdir", "-b", "-i", str(stick), "::/"], capture_output=True, text=True, check=True)
    assert sticks.STICK_FILE in listing.stdout.lower()
    label = subprocess.run(["mlabel", "-s", "-i", str(stick), "::"], capture_output=True, text=True, check=True)
    assert sticks.STICK_LABEL in label.stdout
