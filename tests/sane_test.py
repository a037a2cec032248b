"""SANE's own `test` backend (a virtual scanner in libsane) for the scanner tests: a private SANE config folder
(SANE_CONFIG_DIR) that enables it, with its test.conf options (test picture, feeder, injected errors, slowness)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SYSTEM_TEST_CONF = Path("/etc/sane.d/test.conf")


def need_sane() -> None:
    if not shutil.which("scanimage") or not SYSTEM_TEST_CONF.is_file():
        if "sane" in os.environ.get("APPLIANCE_TEST_REQUIRE", ""):
            pytest.fail("SANE (sane-utils, libsane1) is required here: make test installs it")
        pytest.skip("SANE's scanimage and test backend are not installed (apt install sane-utils)")


def write_config(folder: Path, options: dict | None = None, backends: tuple[str, ...] = ("test",)) -> Path:
    """A SANE config folder enabling `backends`; `options` replace test.conf's lines ({"read-status-code": ...})."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dll.conf").write_text("".join(f"{b}\n" for b in backends))
    lines = SYSTEM_TEST_CONF.read_text().splitlines()
    for key, value in (options or {}).items():
        lines = [line for line in lines if not line.startswith(f"{key} ")] + [f"{key} {value}"]
    (folder / "test.conf").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def sane(tmp_path, monkeypatch):
    """`sane({test.conf option: value})` points SANE (every scanimage started here) at a config with the test
    backend; called once with no options already."""
    need_sane()

    def configure(options: dict | None = None) -> Path:
        folder = write_config(tmp_path / "sane.d", options)
        monkeypatch.setenv("SANE_CONFIG_DIR", str(folder))
        return folder

    configure()
    return configure
