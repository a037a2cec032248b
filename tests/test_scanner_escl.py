"""appliance.scanner against a network scanner: the real scanimage and sane-airscan driving the eSCL scanner emulated
on loopback (tests/escl_scanner.py, the `escl` fixture); and against SANE's own `test` backend, which streams a page
slowly, as a USB scanner does. What the pages say is read back in tests/webui/test_scanner_api.py, through the web
API and the real CPU engine."""

from __future__ import annotations

import time

import pytest
from escl_scanner import A4, DEVICE, missing, sane_test_config, text_page
from llama_fixtures import require
from PIL import Image

from appliance import scanner
from appliance.scanner import ScannerBusy, Scans


@pytest.fixture
def scans(tmp_path):
    scans = Scans(tmp_path / "scans")
    yield scans
    scans.close()


def scan_with(scans: Scans, scan, timeout: float = 60, **settings):
    """Run one scan of `scan` to its end; returns the scan."""
    scans.start(scan, DEVICE, **settings)
    deadline = time.monotonic() + timeout
    while scan.run is not None:
        assert time.monotonic() < deadline, "the scan did not end"
        time.sleep(0.05)
    return scan


def test_the_scanner_is_found_with_its_sources_modes_and_resolutions(escl):
    found = {s.device: s for s in scanner.find_scanners()}
    assert DEVICE in found, found
    assert found[DEVICE].label == "eSCL Emulated eSCL"  # sane-airscan: vendor "eSCL", model the configured name
    choices = scanner.read_choices(DEVICE)
    assert choices.sources == ("Flatbed", "ADF")
    assert choices.modes == ("Color", "Gray")
    assert choices.resolutions == (75, 150, 300, 600)
    assert (choices.source, choices.mode, choices.resolution) == ("Flatbed", "Gray", 300)
    assert [s["feeder"] for s in choices.to_dict()["sources"]] == [False, True]


def test_a_flatbed_page_then_a_feeder_stack_into_one_scan(escl, scans):
    escl.place(text_page(["On the glass"]))
    escl.load([text_page([f"Feeder page {n}"]) for n in (1, 2, 3)])
    scan = scan_with(scans, scans.new(), source="Flatbed", mode="Gray", resolution=300)
    assert len(scan.pages()) == 1 and scan.error is None
    scan_with(scans, scan, source="ADF", mode="Gray", resolution=300)  # more pages for the same scan
    assert [p.name for p in scan.pages()] == [f"page-{n:04d}.png" for n in (1, 2, 3, 4)]
    assert (scan.error, scan.note) == (None, None)  # the feeder running empty after its pages is the normal end
    assert scan.to_dict()["state"] == "ready" and scan.device == DEVICE
    jobs = escl.jobs
    assert [(j.source, j.mode, j.resolution, j.served) for j in jobs] == [
        ("Platen", "Grayscale8", 300, 1),
        ("Feeder", "Grayscale8", 300, 3),
    ]
    with Image.open(scan.page(1)) as page:
        assert page.size == A4 and page.mode == "L"  # the whole glass at 300 dpi, in grey


def test_a_preview_is_a_quick_scan_of_the_glass_beside_the_pages(escl, scans):
    escl.place(text_page(["Preview me"]))
    scan = scan_with(scans, scans.new(), source="Flatbed", preview=True)
    assert scan.pages() == [] and scan.to_dict()["preview"]
    with Image.open(scan.page(0)) as preview:
        assert preview.size == (620, 877)  # A4 at 75 dpi
    assert [j.resolution for j in escl.jobs] == [75]


def test_a_feeder_scan_becomes_one_tiff_of_its_pages(escl, scans):
    escl.load([text_page([f"Sheet {n}"]) for n in (1, 2, 3)])
    scan = scan_with(scans, scans.new(), source="ADF", resolution=150)
    tiff = scans.as_tiff(scan)
    with Image.open(tiff) as image:
        assert image.n_frames == 3
        for frame in range(3):
            image.seek(frame)
            assert image.size == (1240, 1754) and round(image.info["dpi"][0]) == 150


def test_a_jam_keeps_the_pages_before_it_and_says_what_to_do(escl, scans):
    escl.load([text_page([f"Page {n}"]) for n in (1, 2, 3)], jam_after=2)
    scan = scan_with(scans, scans.new(), source="ADF", resolution=75)
    assert len(scan.pages()) == 2
    assert scan.error is not None and scan.error.code == "scanner_jammed", scan.error
    assert "paper jam" in str(scan.error)
    assert scan.to_dict()["state"] == "failed" and scan.to_dict()["pages"] == 2
    assert not list(scan.folder.glob("*.part"))


def test_an_empty_feeder_says_to_load_paper(escl, scans):
    scan = scan_with(scans, scans.new(), source="ADF", resolution=75)
    assert scan.pages() == [] and scan.error.code == "scanner_no_paper"


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cancel_stops_the_feeder_after_the_page_in_hand_and_keeps_the_pages(escl, scans):
    escl.page_seconds = 1.0  # each page takes a second: time to cancel while one is on its way
    escl.load([text_page([f"Page {n}"]) for n in range(1, 7)])
    scan = scans.start(scans.new(), DEVICE, source="ADF", resolution=75)
    wait_for(lambda: scan.pages())
    with pytest.raises(ScannerBusy):  # one program at a time on a scanner: the flatbed waits for the feeder
        scans.start(scans.new(), DEVICE, source="Flatbed")
    scans.cancel(scan)
    wait_for(lambda: scan.run is None, timeout=10)
    assert 1 <= len(scan.pages()) <= 3 and not list(scan.folder.glob("*.part"))
    assert (scan.error, scan.note.code) == (None, "scanner_cancelled")
    assert len(escl.jobs) == 1 and escl.jobs[0].state == "Canceled"  # sane-airscan cancelled it and began no other
    assert escl.state.feeder  # sheets left in the feeder


def test_a_scanner_that_went_away_is_named(escl, scans):
    escl.stop()  # switched off
    scan = scan_with(scans, scans.new(), source="Flatbed")
    assert scan.error.code == "scanner_gone" and DEVICE in str(scan.error)


@pytest.fixture
def slow_test_scanner(tmp_path, monkeypatch):
    """SANE's test:0 alone, its feeder of 10 grey pages read slowly (20 ms a 32 KB buffer: ~1.5 s a page)."""
    why = missing()
    if why:
        require("sane", why)
    settings = {"read-delay": True, "read-delay-duration": 20000, "resolution": 150.0}
    monkeypatch.setenv("SANE_CONFIG_DIR", str(sane_test_config(tmp_path / "sane-test", settings)))
    return "test:0"


def test_cancel_while_a_page_is_read_stops_at_once_and_drops_only_that_page(slow_test_scanner, scans):
    feeder = "Automatic Document Feeder"
    scan = scans.start(scans.new(), slow_test_scanner, source=feeder)
    wait_for(lambda: len(scan.pages()) == 1 and scan.run.reading and scan.run.progress > 10)
    scans.cancel(scan)
    wait_for(lambda: scan.run is None, timeout=3)  # SIGINT: scanimage cancels the page being read and ends
    assert len(scan.pages()) == 1 and not list(scan.folder.glob("*.part"))
    assert (scan.error, scan.note.code) == (None, "scanner_cancelled")
