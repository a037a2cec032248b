"""How office scanners (MFPs) write into a scan folder, against the real watcher and job queue: a writer that holds
the file open and pauses between pages, one that opens and closes it several times, a file created empty and
filled later, the same name reused. Each writer is a separate process, as Samba is for the scanner's files; the
engine double names the file whose bytes it was shown, so what was read (and how often) is checked.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scan_helpers import FAST, FakeEngine, ledger, outputs, save, text_image

from appliance import export, scan
from appliance.scan.watcher import open_for_writing

# A plan of steps on one file: ["open", mode], ["write", source, start, end], ["rewind"], ["sleep", s], ["close"].
WRITER = r"""
import json, sys, time
target, plan = sys.argv[1], json.loads(sys.argv[2])
for step in plan:
    if step[0] == "open":
        f = open(target, step[1])
    elif step[0] == "write":
        with open(step[1], "rb") as source:
            f.write(source.read()[step[2]:step[3]])
        f.flush()
    elif step[0] == "rewind":
        f.seek(0)
        f.truncate()
    elif step[0] == "sleep":
        time.sleep(step[1])
    elif step[0] == "close":
        f.close()
"""


def writer(target: Path, plan: list) -> subprocess.Popen:
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), json.dumps(plan)])


def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def pages(tmp_path):
    """pages(*names) -> one PDF per name (each page says its name), outside the inbox; the engine knows them."""
    engine = FakeEngine()

    def make(*names):
        made = [save(text_image([f"page {n}"], width=400), tmp_path / "pages" / n, resolution=100) for n in names]
        engine.learn(*made)
        return made

    make.engine = engine
    return make


@pytest.fixture
def watch(tmp_path, make_jobs, pages):
    """watch() -> the scan root, with a WatcherThread (FAST timings) over it until the test ends."""
    started = []

    def start():
        jobs = make_jobs(pages.engine)
        started.append(scan.WatcherThread(tmp_path / "scans", scan.JobsRecognizer(jobs), media_dirs=(), **FAST))
        return tmp_path / "scans"

    yield start
    for thread in started:
        thread.stop()


def read(root: Path, stem: str) -> str:
    return (root / "outbox" / f"{stem}.txt").read_text().strip()


def digests(root: Path) -> list[str]:
    return [r["sha256"] for r in ledger(root)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_for_writing_is_told_by_a_read_lease(tmp_path):
    path = tmp_path / "f.pdf"
    path.write_bytes(b"%PDF")
    assert not open_for_writing(path)
    holder = writer(path, [["open", "ab"], ["sleep", 30]])
    try:
        wait_until(lambda: open_for_writing(path), 10, "the writer's open")
    finally:
        holder.kill()
        holder.wait()
    assert not open_for_writing(path)
    with open(path, "rb"):  # a reader is no writer
        assert not open_for_writing(path)


def test_a_file_held_open_is_not_taken_even_when_it_would_open(watch, pages):
    """A complete page sits in the file, unchanged for longer than the give-up time, while its writer still holds it
    open; then the writer replaces it with the final page and closes. Only the final bytes are read."""
    early, final = pages("early.pdf", "final.pdf")
    root = watch()
    target = root / "inbox" / "SCN_0001.pdf"
    plan = [["open", "wb"], ["write", str(early), 0, None], ["sleep", 2.5]]
    plan += [["rewind"], ["write", str(final), 0, None], ["close"]]
    proc = writer(target, plan)
    wait_until(lambda: (root / "done" / "SCN_0001.pdf").exists(), what="SCN_0001.pdf done")
    assert proc.wait() == 0
    assert read(root, "SCN_0001") == "text of final.pdf"
    assert digests(root) == [sha(final)] and pages.engine.calls == 1


def test_a_slow_writer_pausing_past_the_give_up_time_is_waited_for(watch, pages):
    """Half a PDF (which does not open) held open for longer than the give-up time: no failure, read once whole."""
    (page,) = pages("slow.pdf")
    root = watch()
    half = page.stat().st_size // 2
    plan = [["open", "wb"], ["write", str(page), 0, half], ["sleep", 2.5]]
    plan += [["write", str(page), half, None], ["close"]]
    proc = writer(root / "inbox" / "slow.pdf", plan)
    wait_until(lambda: (root / "done" / "slow.pdf").exists(), what="slow.pdf done")
    assert proc.wait() == 0
    assert read(root, "slow") == "text of slow.pdf"
    assert digests(root) == [sha(page)] and not list((root / "failed").iterdir())


def test_opened_and_closed_several_times(watch, pages):
    """Appended in four opens, closed between them for longer than the quiet period: read once, whole."""
    (page,) = pages("pieces.pdf")
    root = watch()
    size = page.stat().st_size
    cuts = [0, size // 4, size // 2, 3 * size // 4, size]
    plan = []
    for start, end in zip(cuts, cuts[1:]):
        plan += [["open", "ab"], ["write", str(page), start, end], ["close"], ["sleep", 0.6]]
    proc = writer(root / "inbox" / "pieces.pdf", plan)
    wait_until(lambda: (root / "done" / "pieces.pdf").exists(), what="pieces.pdf done")
    assert proc.wait() == 0
    assert read(root, "pieces") == "text of pieces.pdf"
    assert digests(root) == [sha(page)] and pages.engine.calls == 1


def test_an_empty_file_waits_and_is_never_failed_for_it(watch, pages):
    (page,) = pages("later.pdf")
    root = watch()
    target = root / "inbox" / "later.pdf"
    target.touch()
    status = root / ".state" / "status.json"

    def waiting_reason():
        try:
            return {w["name"]: (w["message"] or {}).get("code") for w in json.loads(status.read_text())["waiting"]}
        except (OSError, ValueError, KeyError):
            return {}

    wait_until(lambda: waiting_reason().get("later.pdf") == "scan_empty_waiting", what="the empty file's reason")
    time.sleep(FAST["give_up"] + 0.5)  # empty for longer than the give-up time
    assert target.exists() and not list((root / "failed").iterdir())
    assert waiting_reason().get("later.pdf") == "scan_empty_waiting"
    proc = writer(target, [["open", "ab"], ["write", str(page), 0, None], ["close"]])
    wait_until(lambda: (root / "done" / "later.pdf").exists(), what="later.pdf done")
    assert proc.wait() == 0
    assert read(root, "later") == "text of later.pdf" and digests(root) == [sha(page)]


def test_a_reused_name_gets_outputs_of_its_own(watch, pages):
    """SCN_0001.pdf twice, the second written as soon as the first left the inbox: both read, once each; the second's
    outputs and original get a suffix, nothing is overwritten."""
    first, second = pages("first.pdf", "second.pdf")
    root = watch()
    target = root / "inbox" / "SCN_0001.pdf"
    assert writer(target, [["open", "wb"], ["write", str(first), 0, None], ["close"]]).wait() == 0
    wait_until(lambda: not target.exists(), what="the first SCN_0001.pdf claimed")
    assert writer(target, [["open", "wb"], ["write", str(second), 0, None], ["close"]]).wait() == 0
    wait_until(lambda: (root / "done" / "SCN_0001-1.pdf").exists(), what="the second SCN_0001.pdf done")
    assert read(root, "SCN_0001") == "text of first.pdf"
    assert read(root, "SCN_0001-1") == "text of second.pdf"
    assert outputs(root) == sorted(f"{stem}.{ext}" for stem in ("SCN_0001", "SCN_0001-1") for ext in export.FORMATS)
    assert (root / "done" / "SCN_0001.pdf").read_bytes() == first.read_bytes()
    assert (root / "done" / "SCN_0001-1.pdf").read_bytes() == second.read_bytes()
    assert digests(root) == [sha(first), sha(second)] and pages.engine.calls == 2
