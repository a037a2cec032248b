"""The scan folder after a crash: kill -9 mid-batch, a crash between any two steps, a file that keeps killing the
watcher, and a ledger written by an older image (which still has its own result cache)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scan_helpers import (
    REPO,
    FakeEngine,
    assert_no_leftovers,
    ledger,
    outputs,
    png_bytes,
    run_once,
    save,
    squash,
    text_image,
)

from appliance import export, scan
from appliance.scan.ledger import Ledger


def test_kill_9_mid_batch_then_restart(root):
    """The watcher in its own process, killed with SIGKILL while working: a restart ends the batch exactly once."""
    names = [f"page{i}" for i in range(4)]
    for name in names:
        save(text_image([f"Kill test {name}"]), root / "inbox" / f"{name}.png")
    command = [sys.executable, "-m", "appliance", "watch", str(root), "--engine", "cpu", "--quiet", "0.3"]
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
    for name in names:
        assert name in squash((root / "outbox" / f"{name}.txt").read_text())
        json.loads((root / "outbox" / f"{name}.json").read_text())  # complete, parses
    assert sorted(p.name for p in (root / "done").iterdir()) == [f"{n}.png" for n in names]
    assert [r["state"] for r in ledger(root)] == ["done"] * len(names)
    assert_no_leftovers(root)


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so nothing in the watcher catches it."""


@pytest.mark.parametrize("before", ["queued", "working", "publishing", "moving", "done", "mid-publish"])
def test_crash_between_steps_resumes_exactly_once(root, monkeypatch, before):
    for i in range(3):
        save(text_image([f"file {i}"], width=200), root / "inbox" / f"f{i}.png")
    fake = FakeEngine()
    original_set = Ledger.set
    original_write = export.write_atomic
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

    monkeypatch.setattr(Ledger, "set", crashing_set)
    if before == "mid-publish":
        monkeypatch.setattr(export, "write_atomic", crashing_write)
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

    def killer(self, path, request, name):  # the watcher dies while this file is being recognised
        raise Crash()

    monkeypatch.setattr(scan.JobsRecognizer, "recognize", killer)
    for _ in range(scan.MAX_ATTEMPTS):
        with pytest.raises(Crash):
            run_once(root, FakeEngine())
    run_once(root, FakeEngine())
    report = json.loads((root / "failed" / "poison.png.error.json").read_text())
    assert "3 times" in report["reason"] and report["attempts"] == scan.MAX_ATTEMPTS + 1, report


# The ledger of an image from before the job queue's cache was the only one: its own `results` table, no `job`.
OLD_SCHEMA = """
CREATE TABLE files (
    id INTEGER PRIMARY KEY, tree TEXT NOT NULL, rel TEXT NOT NULL, folder TEXT NOT NULL, state TEXT NOT NULL,
    source TEXT NOT NULL, work TEXT, sha256 TEXT, size INTEGER, out_dir TEXT, out_stem TEXT, final TEXT, error TEXT,
    engine TEXT, result_key TEXT, reused INTEGER DEFAULT 0, attempts INTEGER DEFAULT 0, note TEXT,
    created REAL, updated REAL
);
CREATE INDEX files_state ON files(state);
CREATE TABLE results (
    sha256 TEXT NOT NULL, request TEXT NOT NULL, engine TEXT NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (sha256, request, engine)
);
"""


def test_a_ledger_from_an_older_image_opens(root):
    """An older ledger (a persistence partition, a stick) opens: the UI reads it as it is, a watcher drops its
    result cache, and a file it left half-published is recognised again through the queue and finished."""
    work = root / ".state" / "work" / "1-old.png"
    data = png_bytes(text_image(["left by an older image"], width=300))
    work.parent.mkdir(parents=True)
    work.write_bytes(data)
    (root / "done").mkdir()
    (root / "done" / "before.png").write_bytes(data)
    db = sqlite3.connect(root / ".state" / "ledger.sqlite")
    db.executescript(OLD_SCHEMA)
    now = time.time()
    rows = [
        ("before.png", "done", None, str(root / "done" / "before.png")),
        ("old.png", "publishing", str(work), None),
    ]
    for rel, state, work_path, final in rows:
        db.execute(
            "INSERT INTO files (tree, rel, folder, state, source, work, sha256, size, out_dir, out_stem, final, "
            "engine, result_key, attempts, created, updated) VALUES ('', ?, '', ?, ?, ?, ?, ?, ?, ?, ?, 'fake', "
            "'fake|test|1', 1, ?, ?)",
            (
                rel,
                state,
                str(root / "inbox" / rel),
                work_path,
                hashlib.sha256(data).hexdigest(),
                len(data),
                str(root / "outbox"),
                Path(rel).stem,
                final,
                now,
                now,
            ),
        )
    db.execute("INSERT INTO results VALUES (?, '[]', 'fake|test|1', '{}')", (hashlib.sha256(data).hexdigest(),))
    db.commit()
    db.close()

    state = scan.queue_state(root)  # read-only, before any watcher upgraded it
    assert state["counts"] == {"waiting": 0, "working": 1, "done": 1, "failed": 0}
    done = next(f for f in state["files"] if f["name"] == "before.png")
    assert sorted(Path(p).name for p in done["outputs"]) == ["before.json", "before.md", "before.pdf", "before.txt"]

    fake = FakeEngine()
    run_once(root, fake)

    assert fake.calls == 1  # its result was in the old ledger only: recognised again, once
    assert outputs(root) == ["old.json", "old.md", "old.pdf", "old.txt"]
    assert (root / "done" / "old.png").read_bytes() == data
    assert [r["state"] for r in ledger(root)] == ["done", "done"]
    db = sqlite3.connect(root / ".state" / "ledger.sqlite")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert tables == {"files"}
    assert_no_leftovers(root)
