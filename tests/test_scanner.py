"""appliance.scanner against SANE's real `scanimage` and its virtual `test` scanner (tests/sane_test.py)."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from appliance import scanner
from appliance.scanner import Scans, parse_choices

FEEDER = "Automatic Document Feeder"  # the test backend's feeder holds 10 sheets
SLOW = {"read-limit": "true", "read-limit-size": "2048", "read-delay": "true", "read-delay-duration": "20000"}


@pytest.fixture
def scans(tmp_path):
    made = Scans(tmp_path / "scans", max_pages=300)
    yield made
    made.close()


def wait(scan, timeout=60):
    end = time.monotonic() + timeout
    while scan.run is not None:
        assert time.monotonic() < end, "the scan did not end"
        time.sleep(0.05)
    return scan.to_dict()


def test_finds_the_virtual_scanner_and_what_it_offers(sane):
    devices = {s.device: s for s in scanner.find_scanners()}
    assert "test:0" in devices and devices["test:0"].label == "frontend-tester"
    choices = scanner.read_choices("test:0")
    assert choices.sources == ("Flatbed", FEEDER) and choices.source == "Flatbed"
    assert choices.modes == ("Gray", "Color") and choices.mode == "Gray"
    assert choices.resolution == 300 and 600 in choices.resolutions  # a 1..1200 range: the usual values


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # sane-airscan
        (
            "    --mode Color|Gray [Color]\n    --resolution 75|150|300|600dpi [300]\n"
            "    --source Flatbed|ADF [ADF]\n",
            dict(sources=("Flatbed", "ADF"), source="ADF", modes=("Color", "Gray"), mode="Gray", resolution=300),
        ),
        # pnm: no source, no mode, 'auto' first; a scanner without 300 dpi gets the nearest
        (
            "    --resolution auto||75|90|100|150|200|240dpi [75]\n",
            dict(sources=(), source=None, modes=(), mode=None, resolution=240),
        ),
        # an inactive option is not offered
        ("    --source Flatbed|ADF [inactive]\n    --mode Lineart|Color [Color]\n", dict(sources=(), mode="Color")),
    ],
)
def test_parse_choices(options, expected):
    choices = parse_choices(f"All options specific to device `x':\n{options}")
    for key, value in expected.items():
        assert getattr(choices, key) == value


def test_flatbed_scans_one_page_per_run_and_a_scan_becomes_one_tiff(sane, scans):
    scan = scans.new()
    for _ in range(2):
        scans.start(scan, "test:0", source="Flatbed", resolution=150, mode="Gray")
        state = wait(scan)
    assert state["state"] == "ready" and state["pages"] == 2 and state["error"] is None
    with Image.open(scans.as_tiff(scan)) as tiff:
        assert tiff.n_frames == 2 and tiff.mode == "L" and round(tiff.info["dpi"][0]) == 150


def test_the_feeder_scans_its_stack_and_stops_at_the_page_limit(sane, tmp_path):
    scans = Scans(tmp_path / "scans", max_pages=12)
    scan = scans.new()
    scans.start(scan, "test:0", source=FEEDER, resolution=100)
    state = wait(scan)
    assert state["pages"] == 10 and state["error"] is None  # the feeder ran empty: the normal end of a stack
    scans.start(scan, "test:0", source=FEEDER, resolution=100)
    assert wait(scan)["pages"] == 12  # only as many as one job may have
    with pytest.raises(scanner.ScannerError, match="the most one job may have"):
        scans.start(scan, "test:0", source=FEEDER, resolution=100)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("SANE_STATUS_JAMMED", "scanner_jammed"),
        ("SANE_STATUS_COVER_OPEN", "scanner_cover_open"),
        ("SANE_STATUS_IO_ERROR", "scanner_io_error"),
        ("SANE_STATUS_NO_DOCS", "scanner_no_paper"),
    ],
)
def test_a_device_error_says_what_to_do_and_keeps_the_pages_before_it(sane, scans, status, code):
    scan = scans.new()
    scans.start(scan, "test:0", resolution=100)
    assert wait(scan)["pages"] == 1
    sane({"read-status-code": f'"{status}"'})
    scans.start(scan, "test:0", resolution=100)
    state = wait(scan)
    assert state["state"] == "failed" and state["error"]["code"] == code and state["pages"] == 1
    assert not list(scan.folder.glob("*.part"))
    sane()  # the paper jam cleared: scanning again goes on after the kept page
    scans.start(scan, "test:0", resolution=100)
    state = wait(scan)
    assert state["pages"] == 2 and state["error"] is None


def test_a_scanner_that_is_gone_is_named(sane, scans):
    scan = scans.new()
    scans.start(scan, "test:7", resolution=100)
    state = wait(scan)
    assert state["error"]["code"] == "scanner_gone" and "test:7" in state["error_text"]


def test_cancel_keeps_the_finished_pages_and_frees_the_scanner(sane, scans):
    sane(SLOW)
    scan = scans.new()
    scans.start(scan, "test:0", source=FEEDER, resolution=100)
    end = time.monotonic() + 60
    while not scan.pages():
        assert time.monotonic() < end and scan.run is not None, "no page came"
        time.sleep(0.05)
    scans.cancel(scan)
    state = wait(scan)
    assert state["note"]["code"] == "scanner_cancelled" and state["error"] is None
    assert 1 <= state["pages"] < 10 and not list(scan.folder.glob("*.part"))
    for page in scan.pages():
        with Image.open(page) as image:
            image.load()  # whole pages only
    sane()
    scans.start(scan, "test:0", resolution=100)  # the scanner is free again
    assert wait(scan)["error"] is None


def test_one_scanner_one_run_at_a_time(sane, scans, tmp_path):
    sane(SLOW)
    first = scans.new()
    scans.start(first, "test:0", source=FEEDER, resolution=100)
    try:
        with pytest.raises(scanner.ScannerBusy):
            scans.start(first, "test:0", resolution=100)  # the same scan twice
        with pytest.raises(scanner.ScannerBusy, match="someone else"):
            scans.start(scans.new(), "test:0", resolution=100)  # another scan on the same scanner
        other_process = Scans(tmp_path / "scans")  # another front-end sharing the lock folder
        with pytest.raises(scanner.ScannerBusy):
            other_process.start(other_process.new(), "test:0", resolution=100)
        other = scans.new()
        scans.start(other, "test:1", resolution=100)  # a second scanner is free
        assert wait(other)["pages"] == 1
    finally:
        scans.cancel(first)
        wait(first)


def test_scans_survive_a_restart(sane, tmp_path):
    scans = Scans(tmp_path / "scans")
    scan = scans.new()
    scans.start(scan, "test:0", resolution=100)
    wait(scan)
    (scan.folder / "page-0002.png.part").write_bytes(b"half a page")
    again = Scans(tmp_path / "scans").get(scan.id)
    assert len(again.pages()) == 1 and again.device == "test:0"
    assert not list(again.folder.glob("*.part"))


def test_preview_is_not_a_page(sane, scans):
    scan = scans.new()
    scans.start(scan, "test:0", preview=True)
    state = wait(scan)
    assert state["preview"] and state["pages"] == 0
    with Image.open(scan.page(0)) as preview:
        assert preview.info["dpi"][0] == pytest.approx(scanner.PREVIEW_RESOLUTION, abs=1)
    with pytest.raises(ValueError, match="nothing scanned"):
        scans.as_tiff(scan)


def test_the_status_scanimage_printed_stands_when_it_had_to_be_ended():
    said = "Scanning page 2\nscanimage: sane_read: Document feeder jammed\nBatch terminated, 1 page scanned\n"
    assert scanner.said_status(said) == 6 and scanner.said_status("Batch terminated, 2 pages scanned\n") == 0
