"""The scan folder inside `appliance serve`: the web app's job queue, its outputs choice; and `appliance watch`'s."""

from __future__ import annotations

import time
from pathlib import Path

from scan_helpers import FAST, FakeEngine, outputs, save, squash, text_image

from appliance import scan
from appliance.cli import main


def wait_for_file(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_scan_folder_runs_through_the_shared_job_queue(tmp_path):
    from appliance.jobs import Jobs
    from appliance.ocr.engines.cpu import CpuEngine

    jobs = Jobs(tmp_path / "data", lambda report: CpuEngine())
    scanner = scan.WatcherThread(tmp_path / "scans", scan.JobsRecognizer(jobs), media_dirs=(), **FAST)
    try:
        save(text_image(["Queue shared 42"]), tmp_path / "scans" / "inbox" / "shared.png")
        wait_for_file(tmp_path / "scans" / "outbox" / "shared.json")
        assert [(j.name, j.state) for j in jobs.list()] == [("shared.png", "done")]  # the UI's history shows it
    finally:
        scanner.stop()
        jobs.close()
    assert squash((tmp_path / "scans" / "outbox" / "shared.txt").read_text()) == "queueshared42"
    assert not (tmp_path / "scans" / ".state" / "jobs").exists()  # the app's queue, not a second one


def test_watcher_thread_writes_the_outputs_it_is_given(tmp_path):
    from appliance.jobs import Jobs

    jobs = Jobs(tmp_path / "data", lambda report: FakeEngine())
    root = tmp_path / "scans"
    scanner = scan.WatcherThread(root, scan.JobsRecognizer(jobs), media_dirs=(), outputs=("json", "pdf"), **FAST)
    try:
        save(text_image(["two formats"], width=300), root / "inbox" / "a.png")
        wait_for_file(root / "done" / "a.png")
    finally:
        scanner.stop()
        jobs.close()
    assert outputs(root) == ["a.json", "a.pdf"]


def test_serve_starts_the_scan_folder_when_asked(tmp_path):
    from webui import close_app, create_app

    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "SCAN_DIR": str(tmp_path / "scans")})
    try:
        assert app.extensions["backend"].scanner.thread.is_alive()
        assert (tmp_path / "scans" / "inbox").is_dir()
    finally:
        close_app(app)


def test_watch_command_takes_outputs(tmp_path, capsys):
    root = tmp_path / "scans"
    save(text_image(["Command line formats"], width=400), root / "inbox" / "a.png")
    args = ["watch", str(root), "--once", "--engine", "cpu", "--quiet", "0.3", "--media", str(tmp_path / "none")]
    assert main([*args, "--outputs", "txt,json"]) == 0
    assert outputs(root) == ["a.json", "a.txt"]
    assert main([*args, "--outputs", "txt,docx"]) == 1
    assert "docx" in capsys.readouterr().err
