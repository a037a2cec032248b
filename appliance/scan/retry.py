"""Failed files back into the inbox they came from (`appliance watch --retry-failed`, the UI's retry button)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.files import copy_atomic, fsync_dir, fsync_file, sha256_file
from appliance.scan.ledger import open_ledger, state_dir
from appliance.scan.trees import Tree, exists, inside

log = logging.getLogger("appliance.scan")


@dataclass
class Retried:
    """What `retry_failed` did: how many files went back into an inbox, and the failed files of USB sticks that are
    not inserted (stick label -> names), which wait for their stick."""

    moved: int = 0
    waiting: dict = field(default_factory=dict)

    def waiting_text(self) -> str:
        return "; ".join(f"{stick}: {', '.join(names)}" for stick, names in sorted(self.waiting.items()))


def retry_failed(root, ids=None, db: sqlite3.Connection | None = None) -> Retried:
    """Put failed files back into the inbox they came from, to be tried once more; all of them, or the ledger rows
    `ids` (the UI's retry button). A USB stick's file goes back into the stick's OCR-INBOX, only while that stick is
    inserted; otherwise it is listed in `waiting`. Safe while a watcher runs (it never touches failed rows) and
    against a second retry at the same time (a double tap): retries take turns on ROOT/.state/retry.lock."""
    root = Path(root).absolute()
    own = db is None
    db = db or open_ledger(state_dir(root))
    done = Retried()
    # Not the ledger's write lock: a copy back onto a slow stick must not hold up the watcher.
    lock = open(state_dir(root) / "retry.lock", "a+")  # noqa: SIM115 - closed in finally
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = db.execute("SELECT * FROM files WHERE state='failed' AND work IS NOT NULL ORDER BY id").fetchall()
        for row in rows:
            if ids is not None and row["id"] not in ids:
                continue
            tree = Tree.of_row(root, row["tree"])
            if tree.stick and not tree.present():
                done.waiting.setdefault(tree.label, []).append(row["rel"])
                continue
            try:
                moved = _put_back(db, tree, row)
            except OSError as error:  # the stick pulled meanwhile, a full stick: this file stays failed
                log.warning("%s: could not be put back into %s: %s", row["rel"], tree.inbox, error)
                continue
            if moved:
                db.execute("UPDATE files SET state='retried', updated=? WHERE id=?", (time.time(), row["id"]))
                done.moved += 1
    finally:
        lock.close()
        if own:
            db.close()
    if done.moved:
        log.info("moved %d failed file(s) back into their inbox", done.moved)
    if done.waiting:
        log.warning("failed files waiting for their USB stick (insert it, then retry): %s", done.waiting_text())
    return done


def _put_back(db: sqlite3.Connection, tree: Tree, row) -> bool:
    """Move one failed file back into its inbox folder under a free name; False when there is nothing to move."""
    final = Path(row["final"])
    if not final.is_file():
        return False  # moved or deleted by hand since
    if tree.stick and not inside(final, tree.key):
        # The stick was pulled before this file failed: `final` is our copy in ROOT/failed/usb-<STICK>/, and the
        # stick kept its original in OCR-INBOX. If the stick still has it, or a later ledger row took those bytes
        # from the same place after the stick came back, that is the retry: our copy would be a second one.
        source = Path(row["source"])
        again = db.execute(
            "SELECT 1 FROM files WHERE tree=? AND rel=? AND sha256=? AND id>?",
            (row["tree"], row["rel"], row["sha256"], row["id"]),
        ).fetchone()
        if again or (source.is_file() and sha256_file(source) == row["sha256"]):
            final.unlink()
            Path(f"{final}.error.json").unlink(missing_ok=True)
            return True
    back = tree.inbox / row["rel"]
    back.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix, n = back.stem, back.suffix, 0
    while exists(back):
        n += 1
        back = back.with_name(f"{stem}-{n}{suffix}")
    try:
        os.rename(final, back)  # a crash right after this only means the file is tried again: the point
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        copy_atomic(final, back)  # our copy of a pulled stick's file, back onto the stick
        final.unlink()
    fsync_file(back)  # FAT: the renamed file's size reaches its new directory entry only now
    fsync_dir(back.parent)
    Path(f"{final}.error.json").unlink(missing_ok=True)
    return True
