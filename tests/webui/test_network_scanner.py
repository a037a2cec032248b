"""A network scanner through the whole product path: the web API (/scanners) -> appliance.scanner -> the real
scanimage and sane-airscan -> the eSCL scanner emulated on loopback (the `escl` fixture); the scan becomes a job for
the real CPU engine (`cpu_server`), whose text must match what was on the pages."""

from __future__ import annotations

import time

import requests
from escl_scanner import DEVICE, text_page

from imagebuilder.boottest.checks import cer

EN = {"Accept-Language": "en"}
GLASS = ["Northfield Water Authority", "Invoice 2041 Total 118.40"]
STACK = [
    ["Meter reading 004512", "Period March to May"],
    ["Customer number 88123", "Payment due 30 June"],
    ["Thank you for paying", "on time this year"],
]


def poll(url: str, done, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(url, headers=EN, timeout=10).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def scan(server, **body) -> dict:
    """POST /scanners/scans and wait for the run to end; the scan's JSON."""
    started = requests.post(f"{server.url}/scanners/scans", json={"device": DEVICE, **body}, headers=EN, timeout=30)
    assert started.status_code == 202, started.text
    return poll(server.url + started.headers["Location"], lambda s: s["state"] != "scanning")


def test_a_flatbed_page_and_a_feeder_stack_become_one_job_read_by_the_cpu_engine(cpu_server, escl):
    listed = requests.get(f"{cpu_server.url}/scanners", timeout=60).json()["scanners"]
    assert DEVICE in [s["device"] for s in listed]
    options = requests.get(f"{cpu_server.url}/scanners/options", params={"device": DEVICE}, timeout=60).json()
    assert [s["name"] for s in options["sources"] if s["feeder"]] == ["ADF"]

    escl.place(text_page(GLASS))
    escl.load([text_page(lines) for lines in STACK])
    first = scan(cpu_server, source="Flatbed", resolution=options["resolution"], mode=options["mode"])
    assert (first["state"], first["pages"]) == ("ready", 1), first
    both = scan(cpu_server, scan=first["id"], source="ADF", resolution=300, mode="Gray")
    assert (both["state"], both["pages"], both["error"]) == ("ready", 4, None), both

    made = requests.post(f"{cpu_server.url}/scanners/scans/{both['id']}/job", json={"task": "text"}, timeout=60)
    assert made.status_code == 202, made.text
    job_url = cpu_server.url + made.headers["Location"]
    job = poll(job_url, lambda j: j["state"] in ("done", "failed", "cancelled"), timeout=600)
    assert job["state"] == "done", job
    result = requests.get(f"{job_url}/result", params={"format": "json"}, timeout=30).json()
    read = [page["text"] for page in result["pages"]]
    truth = ["\n".join(lines) for lines in [GLASS, *STACK]]
    assert len(read) == 4
    for want, got in zip(truth, read):
        assert cer(want, got) <= 0.03, (want, got)
    assert requests.get(f"{cpu_server.url}/scanners/scans/{both['id']}", timeout=10).status_code == 404  # now a job


def test_a_jam_fails_the_scan_with_advice_and_keeps_its_pages(cpu_server, escl):
    escl.load([text_page([f"Sheet {n}"]) for n in (1, 2, 3)], jam_after=1)
    jammed = scan(cpu_server, source="ADF", resolution=75)
    assert (jammed["state"], jammed["pages"]) == ("failed", 1), jammed
    assert jammed["error"]["code"] == "scanner_jammed"
    assert jammed["error_text"].startswith("paper jam in the feeder")
    page = requests.get(cpu_server.url + jammed["page_urls"][0], timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "image/jpeg"
    assert requests.delete(f"{cpu_server.url}/scanners/scans/{jammed['id']}", timeout=10).status_code == 204
