"""The scan folder's files: readiness, claiming, outputs, done/failed, duplicates, refused entries, a burst.

Most tests run the real CPU engine on small Pillow-made images with known text; the 200-file burst and the refusals
use the fast engine double, where what is checked is the bookkeeping, not the OCR.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from scan_helpers import (
    ALL_OUTPUTS,
    CJK,
    FakeEngine,
    assert_no_leftovers,
    ledger,
    outputs,
    png_bytes,
    queue_jobs,
    run_once,
    save,
    squash,
    text_image,
)

from appliance import scan


def test_mixed_batch(root, cpu):
    """PNG, JPEG (Chinese), a 2-page TIFF and a PDF, in the inbox and in text/: every output, right text."""
    inbox = root / "inbox"
    save(text_image(["Invoice number 4711"]), inbox / "invoice.png")
    save(text_image(["发票号码 合计金额"], font=CJK, size=40), inbox / "fapiao.jpg", quality=92)
    pages = [text_image(["First page alpha"]), text_image(["Second page omega"])]
    pages[0].save(inbox.joinpath("two pages.tif"), save_all=True, append_images=pages[1:])
    save(text_image(["Delivery address Berlin"]), inbox / "text" / "letter.pdf", resolution=200)
    (inbox / "notes.txt.part").write_text("a download in progress is ignored")

    run_once(root, cpu)

    assert outputs(root) == sorted(
        f"{stem}.{ext}" for stem in ("invoice", "fapiao", "two pages") for ext in ("txt", "md", "json", "pdf")
    )
    assert outputs(root, "text") == ["letter.json", "letter.md", "letter.pdf", "letter.txt"]
    out = root / "outbox"
    assert "invoicenumber4711" in squash((out / "invoice.txt").read_text())
    assert "发票号码" in squash((out / "fapiao.txt").read_text())
    two = json.loads((out / "two pages.json").read_text())
    assert [p["number"] for p in two["pages"]] == [1, 2] and "omega" in two["pages"][1]["text"].lower()
    assert json.loads((out / "text" / "letter.json").read_text())["task"] == "text"
    assert "berlin" in (out / "text" / "letter.txt").read_text().lower()
    assert sorted(p.name for p in (root / "done").rglob("*") if p.is_file()) == [
        "fapiao.jpg",
        "invoice.png",
        "letter.pdf",
        "two pages.tif",
    ]
    assert (inbox / "notes.txt.part").exists()  # ignored, untouched
    assert_no_leftovers(root)
    state = scan.queue_state(root)
    assert state["counts"] == {"waiting": 0, "working": 0, "done": 4, "failed": 0}
    assert {f["name"] for f in state["files"]} == {"invoice.png", "fapiao.jpg", "two pages.tif", "text/letter.pdf"}


def test_slow_writer_is_not_read_early(root, cpu):
    """Written in chunks with pauses, one of them longer than the quiet period: only the whole file is read."""
    data = png_bytes(text_image(["Slowly written page"]))
    target = root / "inbox" / "slow.png"
    target.parent.mkdir(parents=True)
    chunks = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with open(target, "wb") as f:
        f.write(chunks[0])

    def writer():
        with open(target, "ab") as f:
            for i, chunk in enumerate(chunks[1:]):
                time.sleep(0.8 if i == 1 else 0.15)  # 0.8 s > quiet: the truncated PNG must still not be taken
                f.write(chunk)
                f.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    run_once(root, cpu, give_up=5.0)
    thread.join()
    # What was recognised: one file, and the bytes the queue was given were all of them.
    assert cpu.calls == 1
    assert [(j["sha256"], j["size"]) for j in queue_jobs(root)] == [(hashlib.sha256(data).hexdigest(), len(data))]
    assert "slowlywrittenpage" in squash((root / "outbox" / "slow.txt").read_text())
    assert (root / "done" / "slow.png").read_bytes() == data


def test_same_file_twice_is_recognised_once(root, cpu):
    image = png_bytes(text_image(["Duplicate receipt 99"]))
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "receipt.png").write_bytes(image)
    (root / "inbox" / "receipt copy.png").write_bytes(image)
    run_once(root, cpu)
    # And once more, the same name again, later: a clash gets a suffix, never an overwrite.
    (root / "inbox" / "receipt.png").write_bytes(image)
    run_once(root, cpu)

    assert cpu.calls == 1
    out = root / "outbox"
    for stem in ("receipt", "receipt copy", "receipt-1"):
        text = squash((out / f"{stem}.txt").read_text())
        assert "receipt" in text and "99" in text
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (root / "done").iterdir()) == ["receipt copy.png", "receipt-1.png", "receipt.png"]
    assert [r["reused"] for r in ledger(root)] == [0, 1, 1]
    # One cache, the queue's: one result file for the three, and each ledger row names its job. The queue's copies
    # of the inputs are dropped (the originals are in done/).
    assert len(list((root / ".state" / "jobs" / "results").iterdir())) == 1
    assert [r["job"] for r in ledger(root)] == [j["id"] for j in queue_jobs(root)]
    assert list((root / ".state" / "jobs" / "inputs").iterdir()) == []


def test_corrupt_and_non_image_go_to_failed_with_reason(root, cpu):
    inbox = root / "inbox"
    good = png_bytes(text_image(["Fine page"]))
    inbox.mkdir(parents=True)
    (inbox / "broken.png").write_bytes(good[: len(good) // 2])
    (inbox / "minutes.jpg").write_text("This is a text file with a .jpg name\n")
    (inbox / "doc").mkdir()
    save(text_image(["Needs the GPU"]), inbox / "doc" / "report.png")  # the CPU engine cannot do 'doc'

    run_once(root, cpu)

    failed = root / "failed"
    assert sorted(p.name for p in failed.rglob("*") if p.is_file()) == [
        "broken.png",
        "broken.png.error.json",
        "minutes.jpg",
        "minutes.jpg.error.json",
        "report.png",
        "report.png.error.json",
    ]
    broken = json.loads((failed / "broken.png.error.json").read_text())
    assert "truncated" in broken["reason"] or "corrupt" in broken["reason"]
    assert broken["when"] and broken["engine"].startswith("cpu") and broken["file"] == "broken.png"
    assert "not an image" in json.loads((failed / "minutes.jpg.error.json").read_text())["reason"]
    assert "HunyuanOCR model" in json.loads((failed / "doc" / "report.png.error.json").read_text())["reason"]
    assert (failed / "broken.png").read_bytes() == good[: len(good) // 2]  # the original, untouched
    assert outputs(root) == [] and outputs(root, "doc") == []
    assert scan.queue_state(root)["counts"]["failed"] == 3

    # Not retried by itself; --retry-failed puts them back, and they are tried (and fail) once more.
    run_once(root, cpu)
    assert len(ledger(root)) == 3
    broken_id = next(r["id"] for r in ledger(root) if r["rel"] == "broken.png")
    assert scan.retry_failed(root, ids=[broken_id]).moved == 1  # the UI's retry of one file
    assert (inbox / "broken.png").exists() and not (failed / "broken.png").exists()
    run_once(root, cpu, retry_failed=True)  # and the rest
    assert len(ledger(root)) == 6 and sorted(p.name for p in failed.rglob("*.error.json")) == [
        "broken.png.error.json",
        "minutes.jpg.error.json",
        "report.png.error.json",
    ]


def test_symlink_and_unknown_folder_are_refused(root, tmp_path):
    secret = tmp_path / "secret.png"
    save(text_image(["Not yours"]), secret)
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "link.png").symlink_to(secret)
    save(text_image(["Which task"]), inbox / "2024-05" / "scan.png")
    fake = FakeEngine()

    run_once(root, fake)

    assert fake.calls == 0
    assert (root / "failed" / "link.png").is_symlink() and secret.exists()
    assert "symbolic link" in json.loads((root / "failed" / "link.png.error.json").read_text())["reason"]
    assert (inbox / "2024-05" / "scan.png").exists()  # unknown folder: reported, not guessed
    status = json.loads((root / ".state" / "status.json").read_text())
    assert status["unknown_folders"] == [str(inbox / "2024-05")]


def test_outbox_inside_inbox_is_refused(root):
    (root / "inbox").mkdir(parents=True)
    (root / "outbox").symlink_to(root / "inbox" / "out", target_is_directory=True)
    (root / "inbox" / "out").mkdir()
    with pytest.raises(scan.WatchError, match="overlap"):
        run_once(root, FakeEngine())


def test_burst_of_200_files(root):
    """200 tiny files at once, through the fast engine double: every one done exactly once, 800 outputs."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    fake = FakeEngine()
    for i in range(200):
        image = Image.new("L", (48, 24), 255)
        ImageDraw.Draw(image).text((2, 6), f"{i:03d}", fill=0)
        image.save(inbox / f"s{i:03d}.png")
        fake.learn(inbox / f"s{i:03d}.png")
    started = time.monotonic()
    run_once(root, fake)
    elapsed = time.monotonic() - started
    assert fake.calls == 200
    assert len(outputs(root)) == 800
    assert (root / "outbox" / "s123.txt").read_text() == "text of s123.png\n"
    assert len(list((root / "done").iterdir())) == 200
    assert scan.queue_state(root)["counts"]["done"] == 200
    print(f"200 files in {elapsed:.1f} s")


@pytest.mark.parametrize("chosen", [("txt", "json", "pdf"), ("md",)])
def test_outputs_choose_the_outbox_files(root, chosen):
    """`outputs` decides which files each input gets in the outbox; the UI lists exactly those."""
    save(text_image(["Only some formats"], width=300), root / "inbox" / "a.png")
    run_once(root, FakeEngine(), outputs=chosen)
    assert outputs(root) == sorted(f"a.{ext}" for ext in chosen)
    [row] = scan.queue_state(root)["files"]
    assert sorted(Path(p).name for p in row["outputs"]) == sorted(f"a.{ext}" for ext in chosen)
    assert ledger(root)[0]["formats"] == ",".join(ext for ext in ALL_OUTPUTS if ext in chosen)


@pytest.mark.parametrize("chosen", [("txt", "docx"), ()])
def test_unknown_outputs_are_refused(root, chosen):
    with pytest.raises(scan.WatchError, match="choose one or more of txt, md, json, pdf"):
        run_once(root, FakeEngine(), outputs=chosen)
