"""The API's /scanners routes and the pages' scanner hand-over, over SANE's virtual `test` scanner
(tests/sane_test.py) and the fake engine."""

from __future__ import annotations

import io
import time

import pytest
from conftest import csrf
from PIL import Image

FEEDER = "Automatic Document Feeder"


def wait(client, scan_id, timeout=60) -> dict:
    end = time.monotonic() + timeout
    while True:
        state = client.get(f"/scanners/scans/{scan_id}").get_json()
        if state["state"] != "scanning":
            return state
        assert time.monotonic() < end, "the scan did not end"
        time.sleep(0.05)


def scan(client, **body) -> dict:
    response = client.post("/scanners/scans", json={"device": "test:0", "resolution": 100, **body})
    assert response.status_code == 202, response.get_json()
    return wait(client, response.get_json()["id"])


def test_list_options_scan_pages_and_make_one_job(sane, client):
    found = client.get("/scanners").get_json()["scanners"]
    assert {"device": "test:0", "label": "frontend-tester"} in [{k: s[k] for k in ("device", "label")} for s in found]
    options = client.get("/scanners/options", query_string={"device": "test:0"}).get_json()
    assert [s["name"] for s in options["sources"] if s["feeder"]] == [FEEDER] and options["resolution"] == 300

    state = scan(client, source=FEEDER)
    assert state["pages"] == 10 and state["error"] is None and len(state["page_urls"]) == 10
    state = scan(client, source="Flatbed", scan=state["id"])  # one more from the glass, into the same scan
    assert state["pages"] == 11

    thumb = client.get(state["page_urls"][0], query_string={"size": "thumb"})
    assert thumb.mimetype == "image/jpeg" and max(Image.open(io.BytesIO(thumb.data)).size) <= 360
    assert client.delete(state["page_urls"][10]).get_json()["pages"] == 10

    job = client.post(f"/scanners/scans/{state['id']}/job", json={"task": "text"})
    assert job.status_code == 202
    body = job.get_json()
    assert body["name"].startswith("scan-") and body["name"].endswith(".tif")
    assert client.get(f"/scanners/scans/{state['id']}").status_code == 404  # the job holds its own copy now
    for _ in range(200):
        done = client.get(f"/jobs/{body['id']}").get_json()
        if done["state"] == "done":
            break
        time.sleep(0.05)
    assert done["state"] == "done" and done["pages_total"] == 10


def test_a_device_error_is_said_in_the_ui_language(sane, client):
    sane({"read-status-code": '"SANE_STATUS_JAMMED"'})
    client.set_cookie("lang", "zh")
    state = scan(client)
    assert state["error"]["code"] == "scanner_jammed" and "卡纸" in state["error_text"]


def test_only_devices_sane_found_are_opened(sane, client):
    response = client.post("/scanners/scans", json={"device": "net:evil.example:test:0"})
    assert response.status_code == 400 and response.get_json()["message"]["code"] == "scanner_unknown"
    response = client.post("/scanners/scans", json={"device": "test:0", "resolution": "300; rm -rf /"})
    assert response.status_code == 400


def test_busy_scanner_is_409_and_unknown_scan_404(sane, client):
    sane({"read-limit": "true", "read-limit-size": "2048", "read-delay": "true", "read-delay-duration": "20000"})
    first = client.post("/scanners/scans", json={"device": "test:0", "source": FEEDER, "resolution": 100})
    try:
        second = client.post("/scanners/scans", json={"device": "test:0", "resolution": 100})
        assert second.status_code == 409 and second.get_json()["error"] == "scanner busy"
    finally:
        client.post(f"/scanners/scans/{first.get_json()['id']}/cancel")
    state = wait(client, first.get_json()["id"])
    assert state["note"]["code"] == "scanner_cancelled"
    assert client.get("/scanners/scans/nope").status_code == 404
    assert client.post("/scanners/scans/nope/job", json={}).status_code == 404


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_start_page_takes_a_scan_and_its_task(sane, client, lang):
    client.set_cookie("lang", lang)
    state = scan(client, source=FEEDER)
    home = client.get("/", query_string={"scan": state["id"]}).get_data(as_text=True)
    assert f'name="scan_id" id="scan-id" value="{state["id"]}"' in home
    assert ("scanned pages (10)" if lang == "en" else "扫描的页面（10 页）") in home
    token = csrf(client)
    response = client.post("/upload", data={"csrf_token": token, "scan_id": state["id"], "task": "text"})
    assert response.status_code == 303 and "/job/" in response.headers["Location"]
    page = client.get("/scanner").get_data(as_text=True)
    assert 'id="scanner-device"' in page and ("Look again" if lang == "en" else "重新查找") in page
