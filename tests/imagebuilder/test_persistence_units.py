"""The image's pieces for persistent storage on demand point at each other: the web app's request file is what the
.path unit watches, in a folder the web app's group may write, and the service runs the command that reads it."""

from __future__ import annotations

import re
from pathlib import Path

from appliance import persistence

ROOTFS = Path(__file__).resolve().parents[2] / "rootfs"
UNITS = ROOTFS / "usr/lib/systemd/system"


def test_request_path_unit_service_and_folders_fit_together():
    path_unit = (UNITS / "appliance-persistence.path").read_text()
    assert f"PathExists={persistence.REQUEST_FILE}\n" in path_unit
    assert "Unit=appliance-persistence.service" in path_unit
    service = (UNITS / "appliance-persistence.service").read_text()
    assert re.search(r"^ExecStart=/usr/local/bin/appliance persistence update$", service, re.M)
    assert "User=" not in service  # root: it writes the stick's partition table
    web = (UNITS / "appliance-web.service").read_text()
    assert "User=ocr" in web and "Group=ocr" in web
    tmpfiles = (ROOTFS / "usr/lib/tmpfiles.d/appliance.conf").read_text().splitlines()
    assert f"d {persistence.REQUEST_FILE.parent} 0770 root ocr -" in tmpfiles  # the web app asks here
    assert f"d {persistence.STATE_FILE.parent} 0755 root root -" in tmpfiles  # only root writes the state
