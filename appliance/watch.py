"""Scan-to-folder: files dropped in ROOT/inbox (or a USB stick's OCR-INBOX) come out as txt/md/json/pdf in the outbox.

    ROOT/inbox/[FOLDER/]scan.jpg  ->  ROOT/outbox/[FOLDER/]scan.{pdf,md,txt,json}   original -> ROOT/done/[FOLDER/]
                                                                                 or -> ROOT/failed/ + .error.json
The inbox subfolder picks the task (`FOLDERS`); an unknown subfolder is reported and left alone.

Each file goes through one state machine, recorded in a SQLite ledger (ROOT/.state/ledger.sqlite) before each step:

    claiming -> queued -> working -> publishing -> moving -> done          (failing -> failed on the way)

- claiming: the file is moved (a stick's file: copied) into ROOT/.state/work, so the inbox can change freely and a
  pulled stick loses nothing;
- working: OCR, or the cached result of the same bytes + task + engine (the ledger is keyed by SHA-256);
- publishing: outputs written under temporary names, fsynced, renamed into place; the output name (with a suffix on a
  clash) is chosen once and recorded first, so a rerun rewrites its own files and never makes a second set;
- moving: the original goes to done/.

Every step can be repeated safely, so after kill -9 or a power cut the watcher reruns each unfinished file from
the step it was in (`Watcher.advance` is both the normal path and the recovery). A file that crashes the watcher
`MAX_ATTEMPTS` times goes to failed/ instead of looping forever.

A file is ready when its size and mtime have not changed for `quiet` seconds and it opens as an image or PDF;
one that still does not open after `give_up` quiet seconds goes to failed/. inotify only wakes the loop early;
a full rescan runs every `rescan` seconds anyway (network and FAT file systems send no events).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import signal
import sqlite3
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance import export
from appliance.files import copy_atomic, fsync_dir, fsync_file, sha256_file, write_atomic
from appliance.ocr.errors import EngineUnavailable, OcrError
from appliance.ocr.result import OcrResult
from appliance.ocr.tasks import EXTRACT_PRESETS, LANGUAGES, Request, Task

log = logging.getLogger("appliance.watch")

QUIET_SECONDS = 3.0  # unchanged this long before a file is looked at: scanners open and close files repeatedly
GIVE_UP_SECONDS = 60.0  # unchanged this long and still not an image/PDF: it is broken, not half-written
RESCAN_SECONDS = 30.0  # full rescan even without inotify events
MAX_ATTEMPTS = 3  # a file whose processing kills the watcher this often is parked in failed/
MEDIA_DIRS = ("/media", "/run/media", "/mnt")  # where USB sticks are mounted (depth 1 or 2)
STICK_INBOX, STICK_OUTBOX, STICK_DONE, STICK_FAILED = "OCR-INBOX", "OCR-OUTBOX", "OCR-DONE", "OCR-FAILED"


def folder_requests() -> dict[str, Request]:
    """Inbox subfolder (lower case) -> what is asked of its files. "" is the inbox itself."""
    table = {
        "": Request.make(Task.SPOTTING),
        "spotting": Request.make(Task.SPOTTING),
        "text": Request.make(Task.TEXT),
    }
    for task in (Task.DOC, Task.TABLE, Task.FORMULA, Task.CHART, Task.SUBTITLES):
        table[task.value] = Request.make(task)
    for lang in LANGUAGES:
        table[f"translate-{lang}"] = Request.make(Task.TRANSLATE, target_lang=lang)
    for preset, fields in EXTRACT_PRESETS.items():
        table[f"extract-{preset}"] = Request.make(Task.EXTRACT, fields=fields)
    return table


FOLDERS = folder_requests()

# Names that are never input: partial downloads, editor locks, OS metadata. Hidden files are skipped too.
IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp", ".error.json")
IGNORED_PREFIXES = (".", "~$", "._")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
IGNORED_DIRS = {"@eadir", "$recycle.bin", "system volume information", "lost+found"}


def ignored(name: str) -> bool:
    lower = name.lower()
    return name.startswith(IGNORED_PREFIXES) or lower.endswith(IGNORED_SUFFIXES) or lower in IGNORED_NAMES


class WatchError(Exception):
    """The folder cannot be watched (layout, lock): a message for a person."""


# --- the trees: ROOT and each USB stick --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """An inbox with its outbox, done and failed folders: ROOT itself, or a USB stick (`stick=True`)."""

    key: str  # "" for ROOT, the stick's mount folder otherwise
    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    label: str = ""
    stick: bool = False

    @classmethod
    def local(cls, root: Path) -> Tree:
        return cls("", root / "inbox", root / "outbox", root / "done", root / "failed")

    @classmethod
    def usb(cls, mount: Path) -> Tree:
        return cls(
            str(mount),
            mount / STICK_INBOX,
            mount / STICK_OUTBOX,
            mount / STICK_DONE,
            mount / STICK_FAILED,
            label=mount.name,
            stick=True,
        )

    def present(self) -> bool:
        return self.inbox.is_dir()

    def read_only(self) -> bool:
        """Mounted read-only (an NTFS stick marked dirty, a locked SD card): results could never be written to it."""
        try:
            return bool(os.statvfs(self.inbox).f_flag & os.ST_RDONLY)
        except OSError:
            return False


def find_sticks(media_dirs) -> list[Tree]:
    """Mounted media with an OCR-INBOX folder at their root (/media/STICK or /media/USER/STICK)."""
    sticks = []
    for base in map(Path, media_dirs):
        for pattern in (f"*/{STICK_INBOX}", f"*/*/{STICK_INBOX}"):
            for inbox in sorted(base.glob(pattern)):
                if inbox.is_dir() and not inbox.is_symlink() and not inbox.parent.is_symlink():
                    sticks.append(Tree.usb(inbox.parent))
    return sticks


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


# --- recognition: one small seam ---------------------------------------------------------------------------------


class EngineRecognizer:
    """Runs OCR with an engine this process opens (lazily, on the first file). The seam for routing through jobs."""

    def __init__(self, engine: str = "auto", model_dir=None):
        self.engine_name, self.model_dir, self._engine = engine, model_dir, None

    def describe(self) -> str:
        if self._engine is None:
            return self.engine_name
        info = self._engine.info
        return f"{info.name} ({info.model}{', ' + info.revision if info.revision else ''})"

    def cache_key(self) -> str:
        self._open()
        info = self._engine.info
        return f"{info.name}|{info.model}|{info.revision}"

    def recognize(self, path: Path, request: Request, name: str) -> OcrResult:
        from appliance.ocr.pipeline import recognize_file

        self._open()
        return recognize_file(self._engine, path, request, name=name)

    def _open(self) -> None:
        if self._engine is None:
            from appliance.ocr.engines.select import open_engine

            started = time.perf_counter()
            self._engine = open_engine(self.engine_name, model_dir=self.model_dir)
            log.info("engine %s ready in %.1f s", self.describe(), time.perf_counter() - started)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class JobsRecognizer:
    """Runs OCR through the web app's job queue, so the scan folder and the UI share one engine (`appliance serve
    --scan ROOT`). The scan-folder jobs then also show in the UI's history."""

    def __init__(self, jobs):
        self.jobs = jobs

    def _info(self) -> dict:
        status = self.jobs.wait_engine()
        if not status["ready"]:
            raise EngineUnavailable("the configured engine", status["error"] or status["state"])
        return status["info"]

    def describe(self) -> str:
        status = self.jobs.engine_status()
        info = status["info"]
        return f"{info['name']} ({info['model']})" if info else f"engine {status['state']}"

    def cache_key(self) -> str:
        info = self._info()
        return f"{info['name']}|{info['model']}|{info['revision']}"

    def recognize(self, path: Path, request: Request, name: str) -> OcrResult:
        from appliance.jobs import DONE, QueueFull

        while True:
            try:
                job = self.jobs.submit(path, name, request)
                break
            except QueueFull as full:  # the UI's users filled the queue: the scan folder waits its turn
                time.sleep(min(full.retry_after, 30))
        job = self.jobs.wait(job.id)
        if job.state != DONE:
            raise OcrError(f"{name}: {job.error or job.state}")
        return self.jobs.result(job.id)

    def close(self) -> None:
        pass  # the web app owns the queue and closes it


class WatcherThread:
    """A watcher on its own thread, inside a process that does other work (the web app, the benchmark).
    The ledger's SQLite connection is made on that thread, which is the only one that uses it."""

    def __init__(self, root, recognizer, **options):
        self.watcher = None
        self.error: Exception | None = None
        ready = threading.Event()

        def run():
            try:
                self.watcher = Watcher(Path(root), recognizer, **options)
            except Exception as error:  # noqa: BLE001 - reported to the starter through self.error
                self.error = error
                return
            finally:
                ready.set()
            try:
                self.watcher.run()
            finally:
                self.watcher.close()

        self.thread = threading.Thread(target=run, name="scan-folder", daemon=True)
        self.thread.start()
        ready.wait()
        if self.error:
            raise self.error

    def stop(self, timeout: float | None = 60) -> None:
        self.watcher.stopping = True
        self.thread.join(timeout)


# --- the ledger --------------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    tree TEXT NOT NULL,          -- '' = ROOT, else the stick's mount folder
    rel TEXT NOT NULL,           -- path under the inbox, e.g. 'doc/scan 1.jpg'
    folder TEXT NOT NULL,        -- the inbox subfolder that chose the task ('' = the inbox itself)
    state TEXT NOT NULL,         -- claiming queued working publishing moving done failing failed lost
    source TEXT NOT NULL,        -- where the file was found
    work TEXT,                   -- our copy under .state/work (NULL for refused links and special files)
    sha256 TEXT,
    size INTEGER,
    out_dir TEXT, out_stem TEXT, -- outputs: out_dir/out_stem.{pdf,md,txt,json}, chosen once
    final TEXT,                  -- where the original goes (done/ or failed/), chosen once
    error TEXT,
    engine TEXT,                 -- the engine, in words
    result_key TEXT,             -- results.engine of the result these outputs come from
    reused INTEGER DEFAULT 0,    -- 1: the result came from the ledger, not from OCR
    attempts INTEGER DEFAULT 0,
    note TEXT,
    created REAL, updated REAL
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL, request TEXT NOT NULL, engine TEXT NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (sha256, request, engine)
);
"""
ACTIVE = ("claiming", "queued", "working", "publishing", "moving", "failing")
ACTIVE_SQL = "(" + ",".join(f"'{state}'" for state in ACTIVE) + ")"


def open_ledger(state_dir: Path, readonly: bool = False) -> sqlite3.Connection:
    path = state_dir / "ledger.sqlite"
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        db = sqlite3.connect(path, timeout=10, isolation_level=None)  # autocommit: every write is its own commit
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed step survives a power cut
        db.executescript(SCHEMA)
    db.row_factory = sqlite3.Row
    return db


def request_key(request: Request) -> str:
    return json.dumps([request.task.value, request.options()], sort_keys=True, ensure_ascii=False)


# --- the watcher -------------------------------------------------------------------------------------------------


@dataclass
class Pending:
    """A file seen in an inbox and not yet claimed: how long it has been unchanged, and why it is still waiting."""

    size: int
    mtime_ns: int
    since: float
    reason: str = "settling"


@dataclass
class Watcher:
    root: Path
    recognizer: object
    quiet: float = QUIET_SECONDS
    give_up: float = GIVE_UP_SECONDS
    rescan: float = RESCAN_SECONDS
    media_dirs: tuple = MEDIA_DIRS
    pending: dict = field(default_factory=dict)  # (tree key, rel) -> Pending
    unknown_folders: set = field(default_factory=set)
    stopping: bool = False

    def __post_init__(self):
        self.root = Path(self.root).absolute()
        self.local = Tree.local(self.root)
        self.state_dir = self.root / ".state"
        self.work_dir = self.state_dir / "work"
        for folder in (self.local.inbox, self.local.outbox, self.local.done, self.local.failed, self.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for name in ("outbox", "done", "failed", ".state"):
            if _inside(self.root / name, self.local.inbox) or _inside(self.local.inbox, self.root / name):
                raise WatchError(
                    f"{self.root / name} and the inbox {self.local.inbox} overlap; outputs would be read "
                    "back as input. Make them separate folders."
                )
        self._lock = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - held open for the watcher's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WatchError(f"another watcher is already running on {self.root}") from None
        self.db = open_ledger(self.state_dir)
        self.sticks: dict[str, Tree] = {}
        self.read_only_sticks: dict[str, Tree] = {}
        self.stick_since: dict[str, float] = {}  # when each stick was found: what happened since is its session
        # Sticks that went away with files not finished, for the UI and the log. Kept over a restart (the files are
        # still on the stick) until the stick is back.
        self.pulled: list[dict] = self._previous_status().get("pulled", [])
        self.inotify = Inotify()

    def close(self) -> None:
        self.write_status(stopped=True)
        self.db.close()
        self.inotify.close()
        self._lock.close()  # releases the flock

    # -- the loop --

    def run(self, once: bool = False) -> None:
        self.recover()
        while not self.stopping:
            self.scan()
            self.process_queue()
            self.write_status()
            if once and not self.pending and not self._active_rows():
                return
            # Settling files are polled; otherwise sleep until an event or the next full rescan.
            wait = min(max(self.quiet / 4, 0.1), 1.0) if self.pending or self._active_rows() else self.rescan
            self.inotify.wait(wait, lambda: self.stopping)

    def recover(self) -> None:
        """Finish what a previous run left half-done (after kill -9 or a power cut), from the step it was in."""
        rows = self.db.execute(f"SELECT id FROM files WHERE state IN {ACTIVE_SQL} ORDER BY id").fetchall()
        if rows:
            log.info("resuming %d file(s) left unfinished by the previous run", len(rows))
        for tmp in self.work_dir.glob(".*.tmp"):  # a copy off a stick cut short; its row is still 'claiming'
            tmp.unlink()
        for row in rows:
            self.advance(row["id"], claim_only=True)

    def process_queue(self) -> None:
        """Every claimed file, oldest first, to the end of its state machine; rescanning between files.

        A step that fails for a reason that is not the file's (disk full, outbox not writable) is logged and
        tried again on the next pass; the other files go on meanwhile.
        """
        stuck: set[int] = set()
        while not self.stopping:
            rows = self.db.execute(f"SELECT id, rel, state FROM files WHERE state IN {ACTIVE_SQL} ORDER BY id")
            row = next((r for r in rows if r["id"] not in stuck), None)
            if row is None:
                return
            try:
                self.advance(row["id"])
            except (EngineUnavailable, WatchError):
                raise
            except Exception:
                log.exception("%s: step '%s' failed; trying again on the next pass", row["rel"], row["state"])
                stuck.add(row["id"])
            self.write_status()
            self.scan()  # claim what landed meanwhile (a stick's files are copied off as soon as they are ready)

    def _active_rows(self) -> int:
        return self.db.execute(f"SELECT count(*) FROM files WHERE state IN {ACTIVE_SQL}").fetchone()[0]

    # -- scanning: readiness and claiming --

    def trees(self) -> list[Tree]:
        for base in map(Path, self.media_dirs):  # a stick being mounted creates a folder here: wake up for it
            try:
                children = [c for c in base.iterdir() if c.is_dir() and not c.is_symlink()]
            except OSError:
                continue
            for folder in (base, *children):
                self.inotify.add(folder)
        found = {t.key: t for t in find_sticks(self.media_dirs)}
        # A read-only stick is not watched: its files could be OCR'd but neither results nor the moved original
        # could be written back, so each pass would take them again. The UI can still open them one by one.
        read_only = {key: tree for key, tree in found.items() if tree.read_only()}
        for key in set(read_only) - set(self.read_only_sticks):
            log.warning("USB stick %s is read-only: its %s is not watched (open its files in the UI instead)",
                        read_only[key].label, STICK_INBOX)
        self.read_only_sticks = read_only
        found = {key: tree for key, tree in found.items() if key not in read_only}
        for key in set(self.sticks) - set(found):
            self._stick_gone(self.sticks[key])
        for key in set(found) - set(self.sticks):
            self.stick_since[key] = time.time()
            log.info(
                "USB stick %s: watching %s, results go to %s", found[key].label, found[key].inbox, found[key].outbox
            )
            if any(p.get("path") == key for p in self.pulled):
                # Its files still in OCR-INBOX are taken now (those finished here get their results on the stick
                # too, from the ledger, without a second OCR): the "not finished" notice is over.
                log.info("USB stick %s is back: its unfinished files are processed now", found[key].label)
                self.pulled = [p for p in self.pulled if p.get("path") != key]
        self.sticks = found
        return [self.local, *found.values()]

    def scan(self) -> None:
        seen = set()
        for tree in self.trees():
            for path, rel, folder in self._walk(tree):
                seen.add((tree.key, rel))
                self._consider(tree, path, rel, folder)
        for key in set(self.pending) - seen:  # gone before it was claimed (deleted, renamed, stick pulled)
            del self.pending[key]

    def _walk(self, tree: Tree):
        """(path, rel, folder) of each candidate entry. Unknown top-level subfolders are reported, not entered."""
        try:
            top = list(os.scandir(tree.inbox))
        except OSError:
            return
        self.inotify.add(tree.inbox)
        for entry in top:
            if ignored(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name.lower() in IGNORED_DIRS:
                    continue
                if entry.name.lower() not in FOLDERS:
                    if (tree.key, entry.name) not in self.unknown_folders:
                        log.warning(
                            "inbox folder %s is not a known task folder; its files are left alone (known: %s)",
                            entry.path,
                            ", ".join(sorted(k for k in FOLDERS if k)),
                        )
                        self.unknown_folders.add((tree.key, entry.name))
                    continue
                yield from self._walk_folder(tree, Path(entry.path), entry.name)
            else:
                yield Path(entry.path), entry.name, ""

    def _walk_folder(self, tree: Tree, folder: Path, task_folder: str):
        self.inotify.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if ignored(entry.name) or entry.name.lower() in IGNORED_DIRS:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk_folder(tree, path, task_folder)
            else:
                yield path, str(path.relative_to(tree.inbox)), task_folder

    def _consider(self, tree: Tree, path: Path, rel: str, folder: str) -> None:
        key = (tree.key, rel)
        if self.db.execute("SELECT 1 FROM files WHERE tree=? AND rel=? AND state IN " + ACTIVE_SQL, key).fetchone():
            return  # a stick's file being worked on (it stays on the stick until its results are there)
        try:
            info = path.lstat()
        except OSError:
            return
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file (device, FIFO or socket)"
            self._refuse(tree, path, rel, folder, f"refused: {what}; copy the file itself into the inbox")
            return
        now = time.monotonic()
        seen = self.pending.get(key)
        if seen is None or (seen.size, seen.mtime_ns) != (info.st_size, info.st_mtime_ns):
            self.pending[key] = Pending(info.st_size, info.st_mtime_ns, now)
            return
        quiet_for = now - seen.since
        if quiet_for < self.quiet:
            return
        reason = _open_problem(path, rel)
        if reason is None:
            del self.pending[key]
            self._claim(tree, path, rel, folder, info.st_size)
        elif quiet_for >= self.give_up:
            del self.pending[key]
            row_id = self._insert(tree, path, rel, folder, "claiming", size=info.st_size)
            self.advance(row_id, claim_only=True)
            self._fail(row_id, f"{reason} (unchanged for {quiet_for:.0f} s)")
        else:
            seen.reason = f"waiting: does not open yet ({reason})"

    def _insert(
        self, tree: Tree, path: Path, rel: str, folder: str, state: str, size: int | None = None, copy: bool = True
    ) -> int:
        """One commit: the row with its work path, so a crash never leaves a row without one."""
        now = time.time()
        work = self.work_dir / f"{time.time_ns()}-{path.name[-100:]}" if copy else None
        cursor = self.db.execute(
            "INSERT INTO files (tree, rel, folder, state, source, work, size, created, updated) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (tree.key, rel, folder, state, str(path), work and str(work), size, now, now),
        )
        return cursor.lastrowid

    def _claim(self, tree: Tree, path: Path, rel: str, folder: str, size: int) -> None:
        row_id = self._insert(tree, path, rel, folder, "claiming", size=size)
        log.info("claimed %s%s", f"[{tree.label}] " if tree.stick else "", rel)
        self.advance(row_id, claim_only=True)

    def _refuse(self, tree: Tree, path: Path, rel: str, folder: str, reason: str) -> None:
        """Links and special files are never opened: the entry itself is moved to failed/ with the reason."""
        row_id = self._insert(tree, path, rel, folder, "failing", copy=False)
        log.warning("%s: %s", rel, reason)
        self._fail(row_id, reason)

    # -- the state machine --

    def row(self, row_id: int) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM files WHERE id=?", (row_id,)).fetchone()

    def set(self, row_id: int, **columns) -> None:
        columns["updated"] = time.time()
        names = ", ".join(f"{k}=?" for k in columns)
        self.db.execute(f"UPDATE files SET {names} WHERE id=?", (*columns.values(), row_id))

    def tree_of(self, row) -> Tree:
        if not row["tree"]:
            return self.local
        return self.sticks.get(row["tree"]) or Tree.usb(Path(row["tree"]))

    def advance(self, row_id: int, claim_only: bool = False) -> None:
        """Run one file's state machine from wherever it stands. Each step is safe to repeat after a crash."""
        first = True
        while True:
            row = self.row(row_id)
            state = row["state"]
            if state in ("done", "failed", "lost") or (claim_only and state not in ("claiming",)):
                return
            try:
                if state == "working" and first:
                    self._count_attempt(row)  # resuming work a previous run started (and maybe died of)
                    row = self.row(row_id)
                    if row["state"] != "working":
                        continue
                first = False
                step = getattr(self, f"_step_{state}")
                step(row)
            except EngineUnavailable:
                raise  # not the file's fault: stop, say why (systemd restarts the service)
            except OcrError as error:
                self._fail(row_id, str(error))
            except OSError as error:
                if state == "claiming":
                    self._lost(row, f"could not be copied off: {error.strerror or error}")
                    return
                raise

    def _step_claiming(self, row) -> None:
        source, work, tree = Path(row["source"]), Path(row["work"]), self.tree_of(row)
        if not work.exists():
            if not source.exists() or source.is_symlink():
                self._lost(
                    row, "disappeared before it was copied off" if tree.stick else "disappeared from the inbox"
                )
                return
            if tree.stick:
                copy_atomic(source, work)  # copy, never move: the original stays on the stick until results exist
            else:
                try:
                    os.rename(source, work)
                except OSError as error:
                    if error.errno != errno.EXDEV:
                        raise
                    copy_atomic(source, work)  # the inbox is another file system (a mounted share)
                    source.unlink()
                fsync_dir(source.parent)
            fsync_dir(work.parent)
        elif not tree.stick and source.is_file() and sha256_file(source) == sha256_file(work):
            source.unlink()  # a cross-device move cut short between the copy and the delete: finish it
        self.set(row["id"], state="queued", sha256=sha256_file(work), size=work.stat().st_size)

    def _step_queued(self, row) -> None:
        # The attempt is counted in the same commit, BEFORE the work: a file that kills us is counted.
        self.set(row["id"], state="working", attempts=row["attempts"] + 1)

    def _count_attempt(self, row) -> None:
        attempts = row["attempts"] + 1
        self.set(row["id"], attempts=attempts)
        if attempts > MAX_ATTEMPTS:
            self._fail(
                row["id"],
                f"processing stopped the watcher {MAX_ATTEMPTS} times (crash or power loss); "
                "parked here rather than tried again",
            )

    def _step_working(self, row) -> None:
        row_id, name = row["id"], Path(row["rel"]).name
        request = FOLDERS[row["folder"].lower()]
        engine_key = self.recognizer.cache_key()  # loads the engine on first use
        cached = self.db.execute(
            "SELECT result FROM results WHERE sha256=? AND request=? AND engine=?",
            (row["sha256"], request_key(request), engine_key),
        ).fetchone()
        if cached:
            result, reused = OcrResult.from_dict(json.loads(cached["result"])), 1
            result.source = name
            log.info("%s: same bytes already recognised; reusing that result", row["rel"])
        else:
            started = time.perf_counter()
            result, reused = self.recognizer.recognize(Path(row["work"]), request, name), 0
            log.info("%s: recognised in %.1f s", row["rel"], time.perf_counter() - started)
            self.db.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?)",
                (row["sha256"], request_key(request), engine_key, result.to_json()),
            )
        out_dir = self._output_dir(row)
        stem = export.free_stem(out_dir, Path(name).stem)
        self.set(
            row_id,
            state="publishing",
            out_dir=str(out_dir),
            out_stem=stem,
            reused=reused,
            engine=self.recognizer.describe(),
            result_key=engine_key,
        )

    def _step_publishing(self, row) -> None:
        tree = self.tree_of(row)
        if tree.stick and not tree.present():
            self._fallback(row, "outbox")
            row = self.row(row["id"])
        request = FOLDERS[row["folder"].lower()]
        cached = self.db.execute(
            "SELECT result FROM results WHERE sha256=? AND request=? AND engine=?",
            (row["sha256"], request_key(request), row["result_key"]),
        ).fetchone()
        result = OcrResult.from_dict(json.loads(cached["result"]))
        result.source = Path(row["rel"]).name
        try:
            export.write_outputs(result, Path(row["work"]), Path(row["out_dir"]), row["out_stem"])
        except OSError:
            if tree.stick and not tree.present():
                return  # pulled while writing: the next pass writes to the local fallback
            raise
        final = self._original_home(row, "done")
        self.set(row["id"], state="moving", final=str(final))

    def _step_moving(self, row) -> None:
        self._move_original(row)
        self.set(row["id"], state="done")
        log.info(
            "done %s -> %s/%s.{%s}%s",
            row["rel"],
            row["out_dir"],
            row["out_stem"],
            ",".join(export.FORMATS),
            " (result reused)" if row["reused"] else "",
        )

    def _step_failing(self, row) -> None:
        final = Path(row["final"])
        final.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "file": row["rel"],
            "reason": row["error"],
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "engine": self.recognizer.describe(),
            "task": FOLDERS[row["folder"].lower()].task.value if row["folder"].lower() in FOLDERS else None,
            "sha256": row["sha256"],
            "attempts": row["attempts"],
        }
        write_atomic(
            final.with_name(final.name + ".error.json"),
            (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode(),
        )
        self._move_original(row)
        self.set(row["id"], state="failed")
        log.warning("failed %s -> %s: %s", row["rel"], final, row["error"])

    # -- helpers of the steps --

    def _fail(self, row_id: int, reason: str) -> None:
        row = self.row(row_id)
        if row["state"] in ("done", "failed", "lost"):
            return
        self.set(row_id, state="failing", error=reason, final=str(self._original_home(row, "failed")))
        self._step_failing(self.row(row_id))

    def _lost(self, row, why: str) -> None:
        self.set(row["id"], state="lost", note=why)
        log.warning("%s: %s", row["rel"], why)

    def _output_dir(self, row) -> Path:
        tree = self.tree_of(row)
        if tree.stick and not tree.present():
            return self._fallback(row, "outbox")
        return tree.outbox / Path(row["rel"]).parent

    def _fallback(self, row, kind: str) -> Path:
        """Where a pulled stick's results and originals go: ROOT/outbox/<stick>/, ROOT/done/<stick>/ ..."""
        tree = self.tree_of(row)
        base = {"outbox": self.local.outbox, "done": self.local.done, "failed": self.local.failed}[kind]
        folder = base / f"usb-{tree.label}" / Path(row["rel"]).parent
        if kind == "outbox" and row["out_dir"] != str(folder):
            note = f"USB stick {tree.label} was removed before its results were written; they are in {folder}"
            log.warning("%s: %s", row["rel"], note)
            stem = export.free_stem(folder, Path(row["rel"]).stem)
            self.set(row["id"], out_dir=str(folder), out_stem=stem, note=note)
        return folder

    def _original_home(self, row, kind: str) -> Path:
        """A free name in done/ or failed/ for the original (the stick's own folders while it is present)."""
        tree = self.tree_of(row)
        if tree.stick and tree.present() and Path(row["source"]).exists():
            folder = (tree.done if kind == "done" else tree.failed) / Path(row["rel"]).parent
        elif tree.stick:
            folder = self._fallback(row, kind)
        else:
            folder = (self.local.done if kind == "done" else self.local.failed) / Path(row["rel"]).parent
        name = Path(row["rel"]).name
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = folder / name, 0
        while candidate.exists() or candidate.is_symlink() or Path(f"{candidate}.error.json").exists():
            n += 1
            candidate = folder / f"{stem}-{n}{suffix}"
        return candidate

    def _move_original(self, row) -> None:
        """Move the original to row.final. A stick's original moves on the stick and our copy is dropped; a local
        file (or a pulled stick's copy) moves from the work folder. Repeating after a crash is harmless."""
        final, tree = Path(row["final"]), self.tree_of(row)
        work = Path(row["work"]) if row["work"] else None
        source = Path(row["source"])
        on_stick = tree.stick and _inside_str(final, tree.key)
        if on_stick and not _exists(source) and not _exists(final):
            # The stick went away after the destination was chosen: keep our copy here instead.
            final = self._original_home(row, "done" if row["state"] == "moving" else "failed")
            self.set(row["id"], final=str(final))
            on_stick = False
        origin = source if on_stick or work is None else work
        if _exists(origin):
            final.parent.mkdir(parents=True, exist_ok=True)
            if _exists(final):
                raise OSError(f"{final} appeared meanwhile; not overwriting it")
            os.rename(origin, final)
            fsync_file(final)  # FAT: the new directory entry gets the file's size only now
            fsync_dir(final.parent)
        if work is not None and origin != work and _exists(final) and work.exists():
            work.unlink()  # the original is safe on the stick; this was only our copy

    def _stick_gone(self, tree: Tree) -> None:
        waiting = sorted(rel for key, rel in self.pending if key == tree.key)
        # Its files of this session that are not on the stick as they should be: still being worked on (they end
        # here), already ended here (the one in OCR when it was pulled is usually done before this is noticed), or
        # lost before they were copied off (still on the stick).
        rows = self.db.execute(
            f"SELECT id, rel, state, out_dir, final FROM files WHERE tree=? AND (updated>=? OR state IN {ACTIVE_SQL}) "
            "ORDER BY id",
            (tree.key, self.stick_since.pop(tree.key, 0)),
        ).fetchall()
        here = str(self.root)
        ids = {
            r["id"]: r["rel"]
            for r in rows
            if r["state"] in ACTIVE
            or _inside_str(Path(r["out_dir"] or "/"), here)
            or _inside_str(Path(r["final"] or "/"), here)
        }
        waiting = sorted({*waiting, *(r["rel"] for r in rows if r["state"] == "lost")})
        working = list(ids.values())
        if waiting or working:
            log.warning(
                "USB stick %s removed. Not copied off (still on the stick, not processed): %s. "
                "Finished here instead (results in %s, failures in %s): %s",
                tree.label,
                ", ".join(waiting) or "none",
                self.local.outbox / f"usb-{tree.label}",
                self.local.failed / f"usb-{tree.label}",
                ", ".join(working) or "none",
            )
            self.pulled.append(
                {
                    "stick": tree.label,
                    "path": tree.key,
                    "when": time.time(),
                    "not_copied": waiting,
                    "finished_locally": working,  # being finished here: split by outcome in write_status
                    "ids": list(ids),
                }
            )
        else:
            log.info("USB stick %s removed", tree.label)

    def _pulled_now(self, pulled: dict) -> dict:
        """A pulled stick's record with the files being finished here split by how they ended: a file that failed
        here is not "finished" (it is in ROOT/failed/usb-<STICK>/ and its stick keeps the original)."""
        ids = pulled.get("ids", [])
        failed = [
            r["rel"]
            for r in self.db.execute(
                f"SELECT rel FROM files WHERE state='failed' AND id IN ({','.join('?' * len(ids))}) ORDER BY id", ids
            )
        ]
        finished = [rel for rel in pulled["finished_locally"] if rel not in failed]
        return {**pulled, "finished_locally": finished, "failed_locally": failed}

    def _previous_status(self) -> dict:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    # -- failed files back in --

    def retry_failed(self) -> Retried:
        return retry_failed(self.root, db=self.db)

    # -- the UI's view --

    def write_status(self, stopped: bool = False) -> None:
        """What only the running watcher knows (files still settling, sticks, unknown folders), for queue_state."""
        waiting = [
            {"source": self.sticks[k].label if k in self.sticks else "inbox", "name": rel, "detail": p.reason}
            for (k, rel), p in sorted(self.pending.items())
        ]
        status = {
            "pid": os.getpid(),
            "stopped": stopped,
            "heartbeat": time.time(),
            "engine": self.recognizer.describe(),
            "waiting": waiting,
            "unknown_folders": sorted(
                f"{self.sticks[k].inbox if k in self.sticks else self.local.inbox}/{name}"
                for k, name in self.unknown_folders
            ),
            "sticks": [
                {"label": t.label, "path": t.key, "read_only": t.key in self.read_only_sticks}
                for t in (*self.sticks.values(), *self.read_only_sticks.values())
            ],
            "pulled": [self._pulled_now(p) for p in self.pulled[-20:]],
        }
        # Advisory and rewritten every pass: a rename for atomicity, no fsync (it costs more than the rest).
        tmp = self.state_dir / ".status.json.tmp"
        tmp.write_text(json.dumps(status, ensure_ascii=False))
        os.replace(tmp, self.state_dir / "status.json")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _inside_str(path: Path, folder: str) -> bool:
    return bool(folder) and (str(path) + "/").startswith(folder.rstrip("/") + "/")


def _open_problem(path: Path, name: str) -> str | None:
    """None when the file opens as an image or PDF, else why not (InputError's reason).

    Images are decoded in full (tens of ms): a half-written PNG or JPEG has a perfectly good header. A PDF is only
    opened: PDFium needs the trailer at its very end, so a half-written PDF does not open.
    """
    from appliance.ocr.errors import InputError
    from appliance.ocr.images import Document

    try:
        with Document.open(path, name=name) as document:
            if document.kind != "pdf":
                for _ in document.pages():
                    pass
            return None
    except InputError as error:
        return error.reason


# --- inotify: only to wake up early ------------------------------------------------------------------------------


class Inotify:
    """Linux inotify through ctypes: any event in a watched folder wakes `wait()`. Without it, `wait` just sleeps."""

    MASK = 0x8 | 0x80 | 0x100 | 0x40 | 0x200 | 0x4  # close-write, moved-to, create, moved-from, delete, attrib

    def __init__(self):
        self.fd, self.watched = None, set()
        try:
            import ctypes

            self.libc = ctypes.CDLL(None, use_errno=True)
            fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            self.fd = fd if fd >= 0 else None
        except (OSError, AttributeError):
            self.fd = None

    def add(self, folder: Path) -> None:
        if self.fd is None or folder in self.watched or len(self.watched) > 4096:
            return
        if self.libc.inotify_add_watch(self.fd, os.fsencode(folder), self.MASK) >= 0:
            self.watched.add(folder)

    def wait(self, timeout: float, stop=lambda: False) -> None:
        """Until an event, `timeout` seconds, or stop() (checked every second: a signal does not cut a poll short)."""
        deadline = time.monotonic() + timeout
        poller = None
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
        while not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if poller is None:
                time.sleep(min(left, 1.0))
            elif poller.poll(min(left, 1.0) * 1000):
                time.sleep(0.05)  # let a burst of events arrive, then drain them all at once
                try:
                    while os.read(self.fd, 65536):
                        pass
                except BlockingIOError:
                    pass
                break
        self.watched = {f for f in self.watched if f.exists()}  # re-added on the next scan if recreated

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- entry points ------------------------------------------------------------------------------------------------


def run(
    root,
    engine: str = "auto",
    model_dir=None,
    once: bool = False,
    retry_failed: bool = False,
    quiet: float = QUIET_SECONDS,
    give_up: float = GIVE_UP_SECONDS,
    rescan: float = RESCAN_SECONDS,
    media_dirs=MEDIA_DIRS,
    recognizer=None,
) -> int:
    """`appliance watch ROOT`: watch until SIGTERM/SIGINT (or, with once=True, until the inbox is empty)."""
    own_recognizer = recognizer is None
    recognizer = recognizer or EngineRecognizer(engine, model_dir)
    watcher = Watcher(
        Path(root), recognizer, quiet=quiet, give_up=give_up, rescan=rescan, media_dirs=tuple(media_dirs)
    )

    def stop(signum, frame):
        log.info("stopping after the current file")
        watcher.stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if retry_failed:
            watcher.retry_failed()
        log.info("watching %s (inbox folders: %s)", watcher.local.inbox, ", ".join(sorted(k for k in FOLDERS if k)))
        watcher.run(once=once)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        watcher.close()
        if own_recognizer:
            recognizer.close()
    return 0


def queue_state(root, recent: int = 200) -> dict:
    """The folder's queue for the UI: counts and per-file state (waiting, working, done, failed), newest first.

    Reads the ledger and the running watcher's status file; works whether or not a watcher is running.
    """
    root = Path(root)
    state_dir = root / ".state"
    status = {}
    try:
        status = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        pass
    fresh = time.time() - status.get("heartbeat", 0) < RESCAN_SECONDS * 2 + 60
    running = bool(status) and not status.get("stopped") and fresh
    files = (
        [
            {"name": w["name"], "source": w["source"], "state": "waiting", "detail": w["detail"]}
            for w in status.get("waiting", [])
        ]
        if running
        else []
    )
    counts = {"waiting": len(files), "working": 0, "done": 0, "failed": 0}
    if (state_dir / "ledger.sqlite").exists():
        db = open_ledger(state_dir, readonly=True)
        try:
            for row in db.execute("SELECT state, count(*) AS n FROM files GROUP BY state"):
                bucket = _ui_state(row["state"])
                if bucket:
                    counts[bucket] += row["n"]
            for row in db.execute("SELECT * FROM files ORDER BY updated DESC LIMIT ?", (recent,)):
                bucket = _ui_state(row["state"])
                if not bucket:
                    continue
                outputs = (
                    [f"{row['out_dir']}/{row['out_stem']}.{ext}" for ext in export.FORMATS]
                    if row["state"] == "done"
                    else []
                )
                # What retry_failed can do for it now: put it back, or nothing until its USB stick is inserted.
                retryable = row["state"] == "failed" and bool(row["work"])  # links and devices are never retried
                stick = Tree.usb(Path(row["tree"])) if row["tree"] else None
                stick_out = retryable and stick is not None and not stick.present()
                files.append(
                    {
                        "id": row["id"],  # for retry_failed(root, ids=[...])
                        "retry": retryable and not stick_out and Path(row["final"]).is_file(),
                        "waiting_for_stick": stick.label if stick_out else None,
                        "name": row["rel"],
                        "source": Path(row["tree"]).name if row["tree"] else "inbox",
                        "state": bucket,
                        "step": row["state"],
                        "detail": row["error"] or row["note"] or "",
                        "task": FOLDERS[row["folder"].lower()].task.value
                        if row["folder"].lower() in FOLDERS
                        else None,
                        "reused": bool(row["reused"]),
                        "outputs": outputs,
                        "original": row["final"],
                        "updated": row["updated"],
                    }
                )
        finally:
            db.close()
    return {
        "root": str(root),
        "running": running,
        "engine": status.get("engine"),
        "counts": counts,
        "files": files,
        "unknown_folders": status.get("unknown_folders", []),
        "sticks": status.get("sticks", []),
        "pulled": status.get("pulled", []),
    }


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
    db = db or open_ledger(root / ".state")
    done = Retried()
    # Not the ledger's write lock: a copy back onto a slow stick must not hold up the watcher.
    lock = open(root / ".state" / "retry.lock", "a+")  # noqa: SIM115 - closed in finally
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = db.execute("SELECT * FROM files WHERE state='failed' AND work IS NOT NULL ORDER BY id").fetchall()
        for row in rows:
            if ids is not None and row["id"] not in ids:
                continue
            tree = Tree.usb(Path(row["tree"])) if row["tree"] else Tree.local(root)
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
    if tree.stick and not _inside_str(final, tree.key):
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
    while _exists(back):
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


def ledger_rows(root) -> list[dict]:
    """Every ledger row, oldest first (for scripts, benchmarks and support)."""
    db = open_ledger(Path(root) / ".state", readonly=True)
    try:
        return [dict(row) for row in db.execute("SELECT * FROM files ORDER BY id")]
    finally:
        db.close()


def _ui_state(step: str) -> str | None:
    if step in ("claiming", "queued"):
        return "waiting"
    if step in ("working", "publishing", "moving", "failing"):
        return "working"
    if step in ("done", "failed"):
        return step
    return None  # lost (never started) and retried (a new row follows) are history, not queue


if __name__ == "__main__":  # `python3 -m appliance.watch ROOT ...` is `appliance watch ROOT ...`
    from appliance.cli import main

    sys.exit(main(["watch", *sys.argv[1:]]))
