"""The scan folder on USB sticks: found under the media folders, read-only ones left alone, pulled mid-job, failed
files retried on their stick."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from scan_helpers import FakeEngine, assert_no_leftovers, ledger, outputs, run_once, save, text_image

from appliance import scan
from appliance.ocr.errors import OcrError


def test_usb_stick(root, tmp_path):
    media = tmp_path / "media"
    stick = media / "KINGSTON"
    save(text_image(["on the stick"], width=300), stick / "OCR-INBOX" / "a.png")
    save(text_image(["also there"], width=300), stick / "OCR-INBOX" / "doc" / "b.png")
    run_once(root, FakeEngine(), media_dirs=[media])
    assert sorted(p.name for p in (stick / "OCR-OUTBOX").iterdir() if p.is_file()) == [
        "a.json",
        "a.md",
        "a.pdf",
        "a.txt",
    ]
    assert (stick / "OCR-DONE" / "a.png").exists() and not (stick / "OCR-INBOX" / "a.png").exists()
    assert (stick / "OCR-OUTBOX" / "doc" / "b.txt").exists()
    assert outputs(root) == []
    assert_no_leftovers(root)


def test_read_only_stick_is_listed_not_watched(root, tmp_path, monkeypatch):
    """A stick mounted read-only (NTFS marked dirty, a locked SD card) would be taken again on every pass, as neither
    its results nor its moved original can be written: it is left alone and the scan page says why."""
    media = tmp_path / "media"
    save(text_image(["locked"], width=300), media / "LOCKED" / "OCR-INBOX" / "a.png")
    save(text_image(["writable"], width=300), media / "KINGSTON" / "OCR-INBOX" / "b.png")
    monkeypatch.setattr(scan.Tree, "read_only", lambda tree: tree.label == "LOCKED")
    run_once(root, FakeEngine(), media_dirs=[media])
    assert sorted(p.name for p in (media / "LOCKED").iterdir()) == ["OCR-INBOX"]  # nothing written, nothing moved
    assert (media / "LOCKED" / "OCR-INBOX" / "a.png").exists()
    assert (media / "KINGSTON" / "OCR-OUTBOX" / "b.txt").exists()
    assert [row["rel"] for row in ledger(root)] == ["b.png"]
    sticks = scan.queue_state(root)["sticks"]
    assert {s["label"]: s["read_only"] for s in sticks} == {"KINGSTON": False, "LOCKED": True}


def test_read_only_mount_is_seen(tmp_path):
    folder = tmp_path / "STICK" / "OCR-INBOX"
    folder.mkdir(parents=True)
    tree = scan.Tree.usb(tmp_path / "STICK")
    assert not tree.read_only()
    try:
        subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no bind mounts here (needs root)")
    try:
        assert tree.read_only()
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_usb_stick_pulled_mid_job(root, tmp_path):
    """Both files are copied off before work starts; the stick goes away during the first OCR; nothing is lost."""
    media = tmp_path / "media"
    stick = media / "SANDISK"
    save(text_image(["first"], width=300), stick / "OCR-INBOX" / "a.png")
    save(text_image(["second"], width=300), stick / "OCR-INBOX" / "b.png")
    pulled = tmp_path / "pulled-SANDISK"

    class Puller(FakeEngine):
        def recognize(self, image, request, on_text=None):
            if stick.exists():
                stick.rename(pulled)  # the stick's folder vanishes, as on unmount
            return super().recognize(image, request, on_text)

    run_once(root, Puller(), media_dirs=[media])

    local = root / "outbox" / "usb-SANDISK"
    assert sorted(p.name for p in local.iterdir()) == [f"{s}.{e}" for s in "ab" for e in ("json", "md", "pdf", "txt")]
    assert sorted(p.name for p in (root / "done" / "usb-SANDISK").iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in (pulled / "OCR-INBOX").iterdir()) == ["a.png", "b.png"]  # the stick untouched
    state = scan.queue_state(root)
    assert state["counts"]["done"] == 2
    assert all("removed" in f["detail"] for f in state["files"])
    # Both are named as finished here, a.png too: it was done before the watcher noticed the stick had gone.
    [record] = state["pulled"]
    assert (record["stick"], record["finished_locally"], record["not_copied"]) == ("SANDISK", ["a.png", "b.png"], [])
    assert_no_leftovers(root)


def test_usb_stick_failure_is_retried_on_its_stick(root, tmp_path, cpu):
    """A stick's failed file stays on the stick (OCR-FAILED + .error.json); retry puts it back into the stick's
    OCR-INBOX while the stick is in, and names it as waiting for its stick while it is out."""
    media = tmp_path / "media"
    stick = media / "KINGSTON"
    save(text_image(["Annual report"], width=400), stick / "OCR-INBOX" / "doc" / "report.png")
    run_once(root, cpu, media_dirs=[media])  # the CPU engine cannot do 'doc': failed

    failed = stick / "OCR-FAILED" / "doc"
    assert sorted(p.name for p in failed.iterdir()) == ["report.png", "report.png.error.json"]
    assert "HunyuanOCR model" in json.loads((failed / "report.png.error.json").read_text())["reason"]
    assert not (stick / "OCR-INBOX" / "doc" / "report.png").exists()
    assert [p for p in (root / "failed").rglob("*") if p.is_file()] == []  # nothing of the stick's on our disk
    [row] = scan.queue_state(root)["files"]
    assert (row["state"], row["retry"], row["waiting_for_stick"]) == ("failed", True, None)

    pulled = tmp_path / "pulled-KINGSTON"
    stick.rename(pulled)
    [row] = scan.queue_state(root)["files"]
    assert (row["retry"], row["waiting_for_stick"]) == (False, "KINGSTON")
    retried = scan.retry_failed(root)
    assert (retried.moved, retried.waiting) == (0, {"KINGSTON": ["doc/report.png"]})
    assert (pulled / "OCR-FAILED" / "doc" / "report.png").exists()  # untouched while the stick is out

    pulled.rename(stick)
    gpu = FakeEngine()  # stands for the GPU model, now there
    run_once(root, gpu, media_dirs=[media], retry_failed=True)
    assert gpu.calls == 1
    assert sorted(p.name for p in (stick / "OCR-OUTBOX" / "doc").iterdir()) == [
        f"report.{ext}" for ext in ("json", "md", "pdf", "txt")
    ]
    assert sorted(p.name for p in (stick / "OCR-DONE" / "doc").iterdir()) == ["report.png"]
    assert list(failed.iterdir()) == []
    assert [r["state"] for r in ledger(root)] == ["retried", "done"]
    assert scan.retry_failed(root).moved == 0  # nothing is put back twice
    run_once(root, gpu, media_dirs=[media])
    assert gpu.calls == 1 and len(ledger(root)) == 2
    assert_no_leftovers(root)


@pytest.mark.parametrize("stick_keeps_original", [True, False])
def test_usb_stick_pulled_then_file_fails_then_stick_is_back(root, tmp_path, stick_keeps_original):
    """The stick goes away during the OCR of a file that then fails here: our copy is parked in
    ROOT/failed/usb-<STICK>/, the UI says it failed (not "finished") and waits for the stick, over a restart too.
    Back in, the stick's files are done on the stick, each recognised once, and retry makes no second copy."""
    media = Path("/dev/shm") if os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev else tmp_path
    media = Path(tempfile.mkdtemp(dir=media)) / "media"  # another file system where there is one: a real stick's case
    stick = media / "SANDISK"
    try:
        _pulled_then_failed(root, tmp_path, stick, stick_keeps_original)
    finally:
        shutil.rmtree(media.parent)


def _pulled_then_failed(root, tmp_path, stick, stick_keeps_original):
    media = stick.parent
    save(text_image(["fine page"], width=300), stick / "OCR-INBOX" / "a.png")
    save(text_image(["table page"], width=300), stick / "OCR-INBOX" / "table" / "t.png")
    pulled = tmp_path / "pulled-SANDISK"

    class PullThenFail(FakeEngine):  # pulls the stick on the first file; 'table' needs a GPU it lacks
        def recognize(self, image, request, on_text=None):
            if stick.exists():
                shutil.move(stick, pulled)  # the stick's folder vanishes, as on unmount
            if request.task.value == "table":
                raise OcrError("task 'table' needs the HunyuanOCR model, not running here")
            return super().recognize(image, request, on_text)

    run_once(root, PullThenFail(), media_dirs=[media])

    ours = root / "failed" / "usb-SANDISK" / "table"
    assert sorted(p.name for p in ours.iterdir()) == ["t.png", "t.png.error.json"]
    assert (pulled / "OCR-INBOX" / "table" / "t.png").exists()  # the stick keeps its original
    [record] = scan.queue_state(root)["pulled"]
    assert (record["finished_locally"], record["failed_locally"]) == (["a.png"], ["table/t.png"])
    failed_row = next(f for f in scan.queue_state(root)["files"] if f["state"] == "failed")
    assert (failed_row["retry"], failed_row["waiting_for_stick"]) == (False, "SANDISK")
    assert scan.retry_failed(root).waiting == {"SANDISK": ["table/t.png"]}

    run_once(root, FakeEngine(), media_dirs=[media])  # a restart without the stick: the notice stays
    assert [p["stick"] for p in scan.queue_state(root)["pulled"]] == ["SANDISK"]

    if not stick_keeps_original:
        (pulled / "OCR-INBOX" / "table" / "t.png").unlink()  # someone tidied the stick meanwhile
    shutil.move(pulled, stick)
    gpu = FakeEngine()
    run_once(root, gpu, media_dirs=[media])
    assert scan.queue_state(root)["pulled"] == []  # the stick is back: its files are being done
    # a.png was finished here: the stick now gets its results too, from the queue's cache, without a second OCR.
    assert (stick / "OCR-OUTBOX" / "a.json").exists() and (stick / "OCR-DONE" / "a.png").exists()
    assert gpu.calls == (1 if stick_keeps_original else 0)  # t.png, taken again from the stick's inbox

    retried = scan.retry_failed(root)  # our parked copy: dropped if the stick's own went again, else put back
    assert (retried.moved, retried.waiting) == (1, {})
    assert not (ours / "t.png").exists() and not (ours / "t.png.error.json").exists()
    run_once(root, gpu, media_dirs=[media])
    assert gpu.calls == 1  # t.png recognised exactly once after the stick came back, either way
    assert sorted(p.name for p in (stick / "OCR-OUTBOX" / "table").iterdir()) == [
        f"t.{ext}" for ext in ("json", "md", "pdf", "txt")
    ]
    assert sorted(p.name for p in (stick / "OCR-DONE").rglob("*.png")) == ["a.png", "t.png"]
    assert list((stick / "OCR-INBOX").rglob("*.png")) == []
    assert_no_leftovers(root)
