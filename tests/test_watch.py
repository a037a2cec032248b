"""The scan folder: readiness, claiming, outputs, done/failed, the ledger, crashes, USB sticks.

Most tests run the real CPU engine on small Pillow-made images with known text. Two use a fast test double
(`FakeRecognizer`, defined here only): the 200-file burst, and the crash-point tests that stop the watcher between
two steps, where what is checked is the bookkeeping, not the OCR.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from appliance import watch
from appliance.ocr.result import Block, EngineInfo, OcrResult, Page

SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CJK = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
REPO = Path(__file__).resolve().parents[1]
FAST = {"quiet": 0.3, "give_up": 1.5, "rescan": 1.0}


def text_image(lines, font=SANS, size=34, width=720) -> Image.Image:
    image = Image.new("RGB", (width, 40 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    face = ImageFont.truetype(font, size)
    for i, line in enumerate(lines):
        draw.text((24, 20 + 60 * i), line, font=face, fill="black")
    return image


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def squash(text: str) -> str:
    return "".join(text.split()).lower()


class CountingRecognizer:
    """Wraps the real engine recognizer: counts calls and records the bytes each call saw."""

    def __init__(self, inner):
        self.inner, self.calls, self.seen = inner, 0, []

    def describe(self):
        return self.inner.describe()

    def cache_key(self):
        return self.inner.cache_key()

    def recognize(self, path, request, name):
        self.calls += 1
        self.seen.append(Path(path).read_bytes())
        return self.inner.recognize(path, request, name)


class FakeRecognizer:
    """A fast test double for the engine: one line per page, reading the file name (so outputs differ per file)."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = 0, delay

    def describe(self):
        return "fake"

    def cache_key(self):
        return "fake|test|1"

    def recognize(self, path, request, name):
        self.calls += 1
        time.sleep(self.delay)
        with Image.open(path) as image:
            width, height = image.size
        page = Page(
            text=f"text of {name}",
            blocks=[Block(f"text of {name}", [2, 2, width - 2, height - 2], 0.9)],
            number=1,
            width=width,
            height=height,
        )
        return OcrResult(name, request.task.value, request.options(), EngineInfo("fake", "test"), [page])


@pytest.fixture(scope="module")
def cpu():
    recognizer = watch.EngineRecognizer("cpu")
    recognizer.cache_key()  # load once for the module
    yield recognizer
    recognizer.close()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "scans"


def run_once(root, recognizer, **kwargs):
    options = {**FAST, "media_dirs": [], **kwargs}
    return watch.run(root, recognizer=recognizer, once=True, **options)


def outputs(root, rel_dir="") -> list[str]:
    folder = root / "outbox" / rel_dir
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def ledger(root) -> list[dict]:
    db = sqlite3.connect(root / ".state" / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM files ORDER BY id")]
    finally:
        db.close()


def assert_no_leftovers(root):
    """No temporary or half-written files anywhere, nothing left in the work folder or the inbox."""
    leftovers = [
        p
        for p in root.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith(".")) and p.parent.name != ".state"
    ]
    assert leftovers == []
    assert list((root / ".state" / "work").iterdir()) == []


# --- the real engine ---------------------------------------------------------------------------------------------


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
    state = watch.queue_state(root)
    assert state["counts"] == {"waiting": 0, "working": 0, "done": 4, "failed": 0}
    assert {f["name"] for f in state["files"]} == {"invoice.png", "fapiao.jpg", "two pages.tif", "text/letter.pdf"}


def test_slow_writer_is_not_read_early(root, cpu):
    """Written in chunks with pauses, one of them longer than the quiet period: only the whole file is read."""
    data = _png_bytes(text_image(["Slowly written page"]))
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

    counting = CountingRecognizer(cpu)
    thread = threading.Thread(target=writer)
    thread.start()
    run_once(root, counting, give_up=5.0)
    thread.join()
    assert counting.seen == [data]
    assert "slowlywrittenpage" in squash((root / "outbox" / "slow.txt").read_text())
    assert (root / "done" / "slow.png").read_bytes() == data


def test_same_file_twice_is_recognised_once(root, cpu):
    image = _png_bytes(text_image(["Duplicate receipt 99"]))
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "receipt.png").write_bytes(image)
    (root / "inbox" / "receipt copy.png").write_bytes(image)
    counting = CountingRecognizer(cpu)
    run_once(root, counting)
    # And once more, the same name again, later: a clash gets a suffix, never an overwrite.
    (root / "inbox" / "receipt.png").write_bytes(image)
    run_once(root, counting)

    assert counting.calls == 1
    out = root / "outbox"
    for stem in ("receipt", "receipt copy", "receipt-1"):
        text = squash((out / f"{stem}.txt").read_text())
        assert "receipt" in text and "99" in text
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (root / "done").iterdir()) == ["receipt copy.png", "receipt-1.png", "receipt.png"]
    assert [r["reused"] for r in ledger(root)] == [0, 1, 1]


def test_corrupt_and_non_image_go_to_failed_with_reason(root, cpu):
    inbox = root / "inbox"
    good = _png_bytes(text_image(["Fine page"]))
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
    assert "GPU" in json.loads((failed / "doc" / "report.png.error.json").read_text())["reason"]
    assert (failed / "broken.png").read_bytes() == good[: len(good) // 2]  # the original, untouched
    assert outputs(root) == [] and outputs(root, "doc") == []
    assert watch.queue_state(root)["counts"]["failed"] == 3

    # Not retried by itself; --retry-failed puts them back, and they are tried (and fail) once more.
    run_once(root, cpu)
    assert len(ledger(root)) == 3
    broken_id = next(r["id"] for r in ledger(root) if r["rel"] == "broken.png")
    assert watch.retry_failed(root, ids=[broken_id]).moved == 1  # the UI's retry of one file
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
    fake = FakeRecognizer()

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
    with pytest.raises(watch.WatchError, match="overlap"):
        run_once(root, FakeRecognizer())


def test_kill_9_mid_batch_then_restart(root):
    """The watcher as its own process, killed with SIGKILL while working: a restart finishes the batch exactly once."""
    names = [f"page{i}" for i in range(4)]
    for name in names:
        save(text_image([f"Kill test {name}"]), root / "inbox" / f"{name}.png")
    command = [sys.executable, "-m", "appliance.watch", str(root), "--engine", "cpu", "--quiet", "0.3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                states = [r["state"] for r in ledger(root)]
            except sqlite3.OperationalError:  # the ledger's file exists a moment before its tables
                states = []
            if states.count("done") >= 1 and "working" in states:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the watcher never got going: " + first.stderr.read1().decode())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert len(list((root / "done").iterdir())) < len(names)  # killed mid-batch

    second = subprocess.run(
        command + ["--once"], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, second.stderr

    assert outputs(root) == sorted(f"{n}.{ext}" for n in names for ext in ("txt", "md", "json", "pdf"))
    for i, name in enumerate(names):
        assert name in squash((root / "outbox" / f"{name}.txt").read_text())
        json.loads((root / "outbox" / f"{name}.json").read_text())  # complete, parses
    assert sorted(p.name for p in (root / "done").iterdir()) == [f"{n}.png" for n in names]
    assert [r["state"] for r in ledger(root)] == ["done"] * len(names)
    assert_no_leftovers(root)


# --- the bookkeeping, with the fast test double -------------------------------------------------------------------


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so nothing in the watcher catches it."""


@pytest.mark.parametrize("before", ["queued", "working", "publishing", "moving", "done", "mid-publish"])
def test_crash_between_steps_resumes_exactly_once(root, monkeypatch, before):
    for i in range(3):
        save(text_image([f"file {i}"], width=200), root / "inbox" / f"f{i}.png")
    fake = FakeRecognizer()
    original_set = watch.Watcher.set
    original_write = watch.export.write_atomic
    writes = []

    def crashing_set(self, row_id, **columns):
        if columns.get("state") == before and row_id == 2:
            raise Crash()
        original_set(self, row_id, **columns)

    def crashing_write(path, data):
        if Path(path).parent.name == "outbox":
            writes.append(path)
        if len(writes) == 4 + 2:  # the second file, after two of its outputs are in place
            raise Crash()
        original_write(path, data)

    monkeypatch.setattr(watch.Watcher, "set", crashing_set)
    if before == "mid-publish":
        monkeypatch.setattr(watch.export, "write_atomic", crashing_write)
    with pytest.raises(Crash):
        run_once(root, fake)
    monkeypatch.undo()

    run_once(root, fake)

    assert outputs(root) == sorted(f"f{i}.{ext}" for i in range(3) for ext in ("txt", "md", "json", "pdf"))
    assert sorted(p.name for p in (root / "done").iterdir()) == ["f0.png", "f1.png", "f2.png"]
    assert [r["state"] for r in ledger(root)] == ["done"] * 3
    assert fake.calls <= 4  # at most the interrupted file again
    assert_no_leftovers(root)


def test_a_file_that_keeps_killing_the_watcher_is_parked(root, monkeypatch):
    save(text_image(["poison"], width=200), root / "inbox" / "poison.png")

    class Killer(FakeRecognizer):
        def recognize(self, path, request, name):
            raise Crash()

    for _ in range(watch.MAX_ATTEMPTS):
        with pytest.raises(Crash):
            run_once(root, Killer())
    run_once(root, Killer())
    report = json.loads((root / "failed" / "poison.png.error.json").read_text())
    assert "3 times" in report["reason"] and report["attempts"] == watch.MAX_ATTEMPTS + 1, report


def test_burst_of_200_files(root):
    """200 tiny files at once, through the fast test double: every one done exactly once, 800 outputs."""
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for i in range(200):
        image = Image.new("L", (48, 24), 255)
        ImageDraw.Draw(image).text((2, 6), f"{i:03d}", fill=0)
        image.save(inbox / f"s{i:03d}.png")
    fake = FakeRecognizer()
    started = time.monotonic()
    run_once(root, fake)
    elapsed = time.monotonic() - started
    assert fake.calls == 200
    assert len(outputs(root)) == 800
    assert (root / "outbox" / "s123.txt").read_text() == "text of s123.png\n"
    assert len(list((root / "done").iterdir())) == 200
    assert watch.queue_state(root)["counts"]["done"] == 200
    print(f"200 files in {elapsed:.1f} s")


# --- USB sticks ----------------------------------------------------------------------------------------------------


def test_usb_stick(root, tmp_path):
    media = tmp_path / "media"
    stick = media / "KINGSTON"
    save(text_image(["on the stick"], width=300), stick / "OCR-INBOX" / "a.png")
    save(text_image(["also there"], width=300), stick / "OCR-INBOX" / "doc" / "b.png")
    fake = FakeRecognizer()
    run_once(root, fake, media_dirs=[media])
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
    monkeypatch.setattr(watch.Tree, "read_only", lambda tree: tree.label == "LOCKED")
    run_once(root, FakeRecognizer(), media_dirs=[media])
    assert sorted(p.name for p in (media / "LOCKED").iterdir()) == ["OCR-INBOX"]  # nothing written, nothing moved
    assert (media / "LOCKED" / "OCR-INBOX" / "a.png").exists()
    assert (media / "KINGSTON" / "OCR-OUTBOX" / "b.txt").exists()
    assert [row["rel"] for row in ledger(root)] == ["b.png"]
    sticks = watch.queue_state(root)["sticks"]
    assert {s["label"]: s["read_only"] for s in sticks} == {"KINGSTON": False, "LOCKED": True}


def test_read_only_mount_is_seen(tmp_path):
    folder = tmp_path / "STICK" / "OCR-INBOX"
    folder.mkdir(parents=True)
    tree = watch.Tree.usb(tmp_path / "STICK")
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

    class Puller(FakeRecognizer):
        def recognize(self, path, request, name):
            if stick.exists():
                stick.rename(pulled)  # the stick's folder vanishes, as on unmount
            return super().recognize(path, request, name)

    run_once(root, Puller(), media_dirs=[media])

    local = root / "outbox" / "usb-SANDISK"
    assert sorted(p.name for p in local.iterdir()) == [f"{s}.{e}" for s in "ab" for e in ("json", "md", "pdf", "txt")]
    assert sorted(p.name for p in (root / "done" / "usb-SANDISK").iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in (pulled / "OCR-INBOX").iterdir()) == ["a.png", "b.png"]  # the stick untouched
    state = watch.queue_state(root)
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
    assert "GPU" in json.loads((failed / "report.png.error.json").read_text())["reason"]
    assert not (stick / "OCR-INBOX" / "doc" / "report.png").exists()
    assert [p for p in (root / "failed").rglob("*") if p.is_file()] == []  # nothing of the stick's on our disk
    [row] = watch.queue_state(root)["files"]
    assert (row["state"], row["retry"], row["waiting_for_stick"]) == ("failed", True, None)

    pulled = tmp_path / "pulled-KINGSTON"
    stick.rename(pulled)
    [row] = watch.queue_state(root)["files"]
    assert (row["retry"], row["waiting_for_stick"]) == (False, "KINGSTON")
    retried = watch.retry_failed(root)
    assert (retried.moved, retried.waiting) == (0, {"KINGSTON": ["doc/report.png"]})
    assert (pulled / "OCR-FAILED" / "doc" / "report.png").exists()  # untouched while the stick is out

    pulled.rename(stick)
    gpu = FakeRecognizer()  # stands for the GPU model, now there
    run_once(root, gpu, media_dirs=[media], retry_failed=True)
    assert gpu.calls == 1
    assert sorted(p.name for p in (stick / "OCR-OUTBOX" / "doc").iterdir()) == [
        f"report.{ext}" for ext in ("json", "md", "pdf", "txt")
    ]
    assert sorted(p.name for p in (stick / "OCR-DONE" / "doc").iterdir()) == ["report.png"]
    assert list(failed.iterdir()) == []
    assert [r["state"] for r in ledger(root)] == ["retried", "done"]
    assert watch.retry_failed(root).moved == 0  # nothing is put back twice
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

    class PullThenFail(FakeRecognizer):  # pulls the stick on the first file; 'table' needs a GPU it lacks
        def recognize(self, path, request, name):
            if stick.exists():
                shutil.move(stick, pulled)  # the stick's folder vanishes, as on unmount
            if request.task.value == "table":
                raise watch.OcrError(f"{name}: task 'table' needs the HunyuanOCR model on an NVIDIA GPU")
            return super().recognize(path, request, name)

    run_once(root, PullThenFail(), media_dirs=[media])

    ours = root / "failed" / "usb-SANDISK" / "table"
    assert sorted(p.name for p in ours.iterdir()) == ["t.png", "t.png.error.json"]
    assert (pulled / "OCR-INBOX" / "table" / "t.png").exists()  # the stick keeps its original
    [record] = watch.queue_state(root)["pulled"]
    assert (record["finished_locally"], record["failed_locally"]) == (["a.png"], ["table/t.png"])
    failed_row = next(f for f in watch.queue_state(root)["files"] if f["state"] == "failed")
    assert (failed_row["retry"], failed_row["waiting_for_stick"]) == (False, "SANDISK")
    assert watch.retry_failed(root).waiting == {"SANDISK": ["table/t.png"]}

    run_once(root, FakeRecognizer(), media_dirs=[media])  # a restart without the stick: the notice stays
    assert [p["stick"] for p in watch.queue_state(root)["pulled"]] == ["SANDISK"]

    if not stick_keeps_original:
        (pulled / "OCR-INBOX" / "table" / "t.png").unlink()  # someone tidied the stick meanwhile
    shutil.move(pulled, stick)
    gpu = FakeRecognizer()
    run_once(root, gpu, media_dirs=[media])
    assert watch.queue_state(root)["pulled"] == []  # the stick is back: its files are being done
    # a.png was finished here: the stick now gets its results too, from the ledger, without a second OCR.
    assert (stick / "OCR-OUTBOX" / "a.json").exists() and (stick / "OCR-DONE" / "a.png").exists()
    assert gpu.calls == (1 if stick_keeps_original else 0)  # t.png, taken again from the stick's inbox

    retried = watch.retry_failed(root)  # our parked copy: dropped if the stick's own went again, else put back
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


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the scan folder inside `appliance serve`: the same job queue as the UI ---------------------------------------


def wait_for_file(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_scan_folder_runs_through_the_shared_job_queue(tmp_path):
    from appliance.jobs import Jobs
    from appliance.ocr.engines.cpu import CpuEngine

    jobs = Jobs(tmp_path / "data", lambda report: CpuEngine())
    scanner = watch.WatcherThread(tmp_path / "scans", watch.JobsRecognizer(jobs), media_dirs=(), **FAST)
    try:
        save(text_image(["Queue shared 42"]), tmp_path / "scans" / "inbox" / "shared.png")
        wait_for_file(tmp_path / "scans" / "outbox" / "shared.json")
        assert [(j.name, j.state) for j in jobs.list()] == [("shared.png", "done")]  # the UI's history shows it
    finally:
        scanner.stop()
        jobs.close()
    assert squash((tmp_path / "scans" / "outbox" / "shared.txt").read_text()) == "queueshared42"


def test_serve_starts_the_scan_folder_when_asked(tmp_path):
    from webui import close_app, create_app

    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "SCAN_DIR": str(tmp_path / "scans")})
    try:
        assert app.extensions["backend"].scanner.thread.is_alive()
        assert (tmp_path / "scans" / "inbox").is_dir()
    finally:
        close_app(app)
