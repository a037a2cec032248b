"""The ledger (ROOT/.state/ledger.sqlite): one row per file taken from an inbox, with the step it is in.

It records states, not results: a file's result lives in the job queue's cache (`appliance.jobs`), and the row
names the job it came from. A ledger written by an older image (on a persistence partition or a stick) had its own
`results` table and no `job` column: opening it for writing drops the one and adds the other.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from appliance.export import FORMATS
from appliance.messages import Text

STATE_DIR = ".state"  # under ROOT: the ledger, the work folder, the status file, the locks, the local job queue
LEDGER = "ledger.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    tree TEXT NOT NULL,          -- '' = ROOT, else the stick's mount folder
    rel TEXT NOT NULL,           -- path under the inbox, e.g. 'doc/scan 1.jpg'
    folder TEXT NOT NULL,        -- the inbox subfolder that chose the task ('' = the inbox itself)
    state TEXT NOT NULL,         -- claiming queued working publishing moving done failing failed lost retried
    source TEXT NOT NULL,        -- where the file was found
    work TEXT,                   -- our copy under .state/work (NULL for refused links and special files)
    sha256 TEXT,
    size INTEGER,
    out_dir TEXT, out_stem TEXT, -- outputs: out_dir/out_stem.<format>, chosen once
    formats TEXT,                -- the output formats written, e.g. 'txt,json,pdf' (NULL: all of export.FORMATS)
    final TEXT,                  -- where the original goes (done/ or failed/), chosen once
    error TEXT,
    engine TEXT,                 -- the engine, in words
    job TEXT,                    -- the job queue's job whose result these outputs are written from
    reused INTEGER DEFAULT 0,    -- 1: the result came from the queue's cache, not from OCR
    attempts INTEGER DEFAULT 0,
    note TEXT,
    message TEXT,                -- the error's (else the note's) appliance.messages id and values, JSON
    created REAL, updated REAL
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
"""
ADDED_COLUMNS = {"formats": "TEXT", "job": "TEXT", "message": "TEXT"}  # columns an older ledger lacks
ACTIVE = ("claiming", "queued", "working", "publishing", "moving", "failing")
FINISHED = ("done", "failed", "lost")
ACTIVE_SQL = "(" + ",".join(f"'{state}'" for state in ACTIVE) + ")"


def state_dir(root) -> Path:
    return Path(root) / STATE_DIR


def open_ledger(state: Path, readonly: bool = False) -> sqlite3.Connection:
    path = state / LEDGER
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        db = sqlite3.connect(path, timeout=10, isolation_level=None)  # autocommit: every write is its own commit
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed step survives a power cut
        db.executescript(SCHEMA)
        _upgrade(db)
    db.row_factory = sqlite3.Row
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """An older image's ledger: its result cache goes (the job queue's is the only one), new columns come."""
    db.execute("DROP TABLE IF EXISTS results")
    have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE files ADD COLUMN {name} {kind}")


def column(row: sqlite3.Row, name: str):
    """A column that an older ledger, read before a watcher upgraded it, may not have yet."""
    return row[name] if name in row.keys() else None  # noqa: SIM118 - `in` on a sqlite3.Row looks at its values


def formats(row: sqlite3.Row) -> tuple[str, ...]:
    """The output formats chosen for a row; all of them for a row from an older image (which wrote every one)."""
    chosen = column(row, "formats")
    return tuple(chosen.split(",")) if chosen else FORMATS


class Ledger:
    """The watcher's connection: read and update one file's row, each update its own commit."""

    def __init__(self, state: Path):
        self.db = open_ledger(state)

    def row(self, row_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM files WHERE id=?", (row_id,)).fetchone()

    def set(self, row_id: int, **columns) -> None:
        for key in ("note", "error"):  # an error's words win over a note's, as the UI shows them
            if isinstance(columns.get(key), Text):
                columns["message"] = json.dumps(columns[key].to_dict(), ensure_ascii=False)
            if columns.get(key) is not None:
                columns[key] = str(columns[key])
        columns["updated"] = time.time()
        names = ", ".join(f"{k}=?" for k in columns)
        self.db.execute(f"UPDATE files SET {names} WHERE id=?", (*columns.values(), row_id))

    def insert(self, **columns) -> int:
        now = time.time()
        columns = {**columns, "created": now, "updated": now}
        cursor = self.db.execute(
            f"INSERT INTO files ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})",
            tuple(columns.values()),
        )
        return cursor.lastrowid

    def active(self) -> list[sqlite3.Row]:
        """Unfinished rows, oldest first."""
        return self.db.execute(f"SELECT id, rel, state FROM files WHERE state IN {ACTIVE_SQL} ORDER BY id").fetchall()

    def active_at(self, tree: str, rel: str) -> bool:
        return bool(
            self.db.execute(
                f"SELECT 1 FROM files WHERE tree=? AND rel=? AND state IN {ACTIVE_SQL}", (tree, rel)
            ).fetchone()
        )

    def close(self) -> None:
        self.db.close()
