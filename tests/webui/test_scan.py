"""The scan folder in the kiosk (issue 5): the page and its JSON twin GET /scan, over a real watcher running inside
the app (`appliance serve --scan ROOT`) on the fake engine; retry of failed files; the page when it is off."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import csrf, image_bytes

from appliance import scan as watch

EN = {"Accept-Language": "en"}


def use_scan_folder(app_config, root):
    """Run the app's scan folder on `root` with short waits, watching the fake USB_ROOT for sticks."""
    app_config["SCAN_DIR"] = str(root)
    app_config["SCAN_OPTIONS"] = {
        "quiet": 0.2,
        "give_up": 0.6,
        "rescan": 0.3,
        "media_dirs": (app_config["USB_ROOT"],),
    }
    return root


@pytest.fixture
def scan_root(tmp_path, app_config):
    """ROOT with a good scan, a doc-folder scan, a broken file, an unknown folder, and a USB stick with OCR-INBOX;
    the app starts a watcher on it with short quiet periods."""
    root = tmp_path / "scan"
    inbox = root / "inbox"
    (inbox / "doc").mkdir(parents=True)
    (inbox / "misc").mkdir()
    (inbox / "letter.png").write_bytes(image_bytes())
    (inbox / "doc" / "report.png").write_bytes(image_bytes(size=(200, 100)))
    (inbox / "broken.png").write_bytes(image_bytes()[:40])
    (inbox / "misc" / "left alone.png").write_bytes(image_bytes())
    stick = Path(app_config["USB_ROOT"]) / "KINGSTON" / watch.STICK_INBOX
    stick.mkdir(parents=True)
    (stick / "from stick.png").write_bytes(image_bytes(size=(90, 90)))
    return use_scan_folder(app_config, root)


@pytest.fixture
def scanning(scan_root, app):
    """The app with its watcher; waits until everything dropped above is done or failed."""
    deadline = time.monotonic() + 30
    while True:
        counts = watch.queue_state(scan_root)["counts"]
        if counts["done"] == 3 and counts["failed"] == 1:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
    yield app
    app.extensions["backend"].scanner.stop(10)


def test_scan_json_has_counts_files_unknown_folders_and_sticks(scanning, client, scan_root):
    scan = client.get("/scan").get_json()
    assert scan["enabled"] and scan["running"] and scan["engine"].startswith("fake")
    assert scan["counts"] == {"waiting": 0, "working": 0, "done": 3, "failed": 1}
    assert scan["inbox"] == str(scan_root / "inbox")
    files = {f["name"]: f for f in scan["files"]}
    assert set(files) == {"letter.png", "doc/report.png", "broken.png", "from stick.png"}
    report = files["doc/report.png"]
    assert (report["state"], report["task"], report["source"]) == ("done", "doc", "inbox")
    assert report["output_dir"] == "outbox/doc"
    assert sorted(report["output_names"]) == ["report.json", "report.md", "report.pdf", "report.txt"]
    assert all(Path(p).is_file() for p in report["outputs"])
    assert files["from stick.png"]["source"] == "KINGSTON"
    assert files["from stick.png"]["output_dir"].endswith("KINGSTON/OCR-OUTBOX")
    broken = files["broken.png"]
    assert broken["state"] == "failed" and broken["detail"] and isinstance(broken["id"], int)
    assert scan["unknown_folders"] == [f"{scan_root / 'inbox'}/misc"]
    assert [s["label"] for s in scan["sticks"]] == ["KINGSTON"]
    folders = {f["folder"]: f for f in scan["folders"]}
    assert folders[""]["task"] == "spotting" and folders["translate-en"]["options"] == {"target_lang": "en"}
    assert folders["extract-invoice"]["options"]["fields"][0] == "发票代码"
    assert all(f["available"] for f in scan["folders"])  # the fake engine has every task


def test_scan_page_shows_the_queue_and_the_folder_help(scanning, client, scan_root):
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert 'aria-current="page">Scan folder</a>' in html and 'data-scan-url="/scan"' in html
    assert str(scan_root / "inbox") in html and "Watching" in html
    assert '<strong data-count="done">3</strong>' in html and '<strong data-count="failed">1</strong>' in html
    for text in ("doc/report.png", "outbox/doc/", "report.pdf", "from stick.png", "KINGSTON", "Document to Markdown"):
        assert text in html, text
    assert 'id="scan-retry-all"' in html and 'id="scan-retry-all" hidden' not in html
    assert f"{scan_root / 'inbox'}/misc" in html and 'id="scan-unknown" hidden' not in html
    assert "<code>inbox/translate-en/</code>" in html and "<code>inbox/extract-invoice/</code>" in html
    assert "发票代码, 发票号码" in html
    assert 'id="scan-pulled" hidden' in html  # no stick was pulled
    zh = client.get("/scan-folder", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    assert "扫描文件夹" in zh and "重试失败的文件" in zh and "收件箱子文件夹与任务" in zh


def test_retry_failed_needs_csrf_and_moves_files_back(scanning, client, scan_root):
    assert client.post("/scan-folder/retry").status_code == 400  # no token: refused, nothing moved
    assert (scan_root / "failed" / "broken.png").exists()
    broken_id = next(f["id"] for f in client.get("/scan").get_json()["files"] if f["name"] == "broken.png")
    scanning.extensions["backend"].scanner.stop(10)  # hold the watcher so the file is seen back in the inbox
    response = client.post("/scan-folder/retry", data={"csrf_token": csrf(client, "/scan-folder"), "id": broken_id})
    assert response.status_code == 303 and response.headers["Location"] == "/scan-folder"
    assert (scan_root / "inbox" / "broken.png").exists() and not (scan_root / "failed" / "broken.png").exists()
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert "Moved 1 file(s) back into the inbox" in html
    assert 'id="scan-retry-all" hidden' in html  # nothing failed any more
    assert "The folder watcher is not running" in html and 'id="scan-stopped" class="alert error" hidden' not in html


def test_pulled_sticks_list_unfinished_files(client, app, monkeypatch, tmp_path):
    app.config["SCAN_DIR"] = str(tmp_path / "scan")  # no watcher started: the page reads the state as it is
    state = {
        "root": str(tmp_path / "scan"),
        "running": False,
        "engine": None,
        "counts": {"waiting": 0, "working": 1, "done": 0, "failed": 0},
        "files": [
            {
                "id": 4,
                "name": "b.png",
                "source": "SANDISK",
                "state": "working",
                "step": "working",
                "detail": "",
                "task": "spotting",
                "reused": False,
                "outputs": [],
                "original": None,
                "updated": 1.7e9,
            }
        ],
        "unknown_folders": [],
        "sticks": [],
        "pulled": [
            {"stick": "SANDISK", "when": 1.7e9, "not_copied": ["c.png", "d.png"], "finished_locally": ["b.png"]}
        ],
    }
    monkeypatch.setattr(watch, "queue_state", lambda root, recent=100: dict(state))
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert "Sticks removed before their files were finished" in html and 'id="scan-pulled" hidden' not in html
    assert "Not copied off (still on the stick; insert it again to process them): c.png, d.png" in html
    assert "Finished on this machine, results in outbox/usb-SANDISK: b.png" in html
    assert "No stick with an OCR-INBOX folder is inserted." in html
    assert client.get("/scan").get_json()["running"] is False  # no watcher of ours runs


def test_scan_folder_off(client):
    scan = client.get("/scan").get_json()
    assert scan == {"enabled": False, "detail": scan["detail"]} and "--scan ROOT" in scan["detail"]
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert "The scan folder is off." in html and "appliance serve --scan ROOT" in html
    assert "data-scan-url" not in html  # nothing to poll
    response = client.post("/scan-folder/retry", data={"csrf_token": csrf(client)})
    assert response.status_code == 400 and "The scan folder is off." in response.get_data(as_text=True)
    zh = client.get("/scan-folder", headers={"Accept-Language": "zh"}).get_data(as_text=True)
    assert "扫描文件夹未开启" in zh


@pytest.fixture
def stick_root(tmp_path, app_config):
    """ROOT with nothing in its inbox, and a USB stick KINGSTON with a broken file in its OCR-INBOX."""
    root = tmp_path / "scan"
    stick = Path(app_config["USB_ROOT"]) / "KINGSTON"
    (stick / watch.STICK_INBOX).mkdir(parents=True)
    (stick / watch.STICK_INBOX / "torn.png").write_bytes(image_bytes()[:40])
    return use_scan_folder(app_config, root)


def test_retry_of_a_usb_sticks_failed_file(stick_root, client, app):
    """A stick's failed file: retry button while the stick is in; out, the row and the retry say it waits for it."""
    root, stick = stick_root, Path(app.config["USB_ROOT"]) / "KINGSTON"
    deadline = time.monotonic() + 30
    while watch.queue_state(root)["counts"]["failed"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    app.extensions["backend"].scanner.stop(10)  # hold the watcher so the file is seen back in the stick's inbox
    assert (stick / watch.STICK_FAILED / "torn.png.error.json").exists()
    [row] = client.get("/scan").get_json()["files"]
    assert (row["source"], row["retry"], row["waiting_for_stick"]) == ("KINGSTON", True, None)
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert f'name="id" value="{row["id"]}"' in html and 'id="scan-retry-all" hidden' not in html

    stick.rename(stick.with_name("away"))  # pulled
    [row] = client.get("/scan", headers=EN).get_json()["files"]
    assert row["retry"] is False and "It is on USB stick KINGSTON, which is not inserted" in row["detail"]
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert f'name="id" value="{row["id"]}"' not in html and 'id="scan-retry-all" hidden' in html
    response = client.post("/scan-folder/retry", data={"csrf_token": csrf(client, "/scan-folder")}, headers=EN)
    html = client.get(response.headers["Location"], headers=EN).get_data(as_text=True)
    assert "Not moved, waiting for their USB stick (insert it, then retry): KINGSTON: torn.png" in html

    stick.with_name("away").rename(stick)  # back in
    token = csrf(client, "/scan-folder")
    client.post("/scan-folder/retry", data={"csrf_token": token, "id": row["id"]})
    assert (stick / watch.STICK_INBOX / "torn.png").exists()
    assert list((stick / watch.STICK_FAILED).iterdir()) == []
    html = client.get("/scan-folder", headers=EN).get_data(as_text=True)
    assert "Moved 1 file(s) back into the inbox" in html


def test_a_failed_scan_is_said_in_the_pages_language(scanning, client, scan_root):
    """The failure's words keep their message id in the ledger and its report; the page says them in Chinese."""
    zh = {"Accept-Language": "zh"}
    broken = next(f for f in client.get("/scan", headers=zh).get_json()["files"] if f["name"] == "broken.png")
    assert broken["message"]["code"] == "scan_gave_up" and "unchanged for" in broken["detail"]  # English stays
    assert "文件损坏或不完整" in broken["detail_ui"] and "秒没有变化" in broken["detail_ui"]
    page = client.get("/scan-folder", headers=zh).get_data(as_text=True)
    assert "PNG 文件损坏或不完整：无法读取文件头" in page and "秒没有变化）" in page
    english = next(f for f in client.get("/scan", headers=EN).get_json()["files"] if f["name"] == "broken.png")
    assert english["detail_ui"] == english["detail"]
    report = (scan_root / "failed" / "broken.png.error.json").read_text(encoding="utf-8")
    assert '"code": "scan_gave_up"' in report
