"""appliance.scanner against a network scanner: the real scanimage and sane-airscan driving the eSCL scanner emulated
on loopback (tests/escl_scanner.py, the `escl` fixture). What the pages say is read back in
tests/webui/test_scanner_escl.py, through the web API and the real CPU engine."""

from __future__ import annotations

import time

import pytest
from escl_scanner import A4, DEVICE, text_page
from PIL import Image

from appliance import scanner
from appliance.scanner import Scans


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
