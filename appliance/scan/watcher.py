"""The watcher: finds ready files in ROOT's inbox and on USB sticks, claims them into the ledger, and drives each
through the state machine (`steps`); after a crash it first finishes what the previous run left (`recover`).

A file is ready when its size and mtime have not changed for `quiet` seconds, no process has it open for writing
(`open_for_writing`: a scanner writing through the SMB share pauses between pages) and it opens as an image or PDF;
one that still does not open after `give_up` quiet seconds goes to failed/. An empty file only waits: scanners
create the file first and write it later. Claiming moves the file out of the inbox at once, so a scanner reusing a
name (SCN_0001.pdf) makes a new file, with outputs of its own. inotify only wakes the loop early; a full rescan runs
every `rescan` seconds anyway (network and FAT file systems send no events).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance import export
from appliance.messages import Text
from appliance.ocr.errors import EngineUnavailable
from appliance.scan.folders import FOLDERS, IGNORED_DIRS, ignored
from appliance.scan.inotify import Inotify
from appliance.scan.ledger import ACTIVE, ACTIVE_SQL, Ledger, state_dir
from appliance.scan.retry import Retried, retry_failed
from appliance.scan.steps import Steps
from appliance.scan.trees import MEDIA_DIRS, STICK_INBOX, Tree, find_sticks, inside, overlap

log = logging.getLogger("appliance.scan")

QUIET_SECONDS = 3.0  # unchanged this long before a file is looked at: scanners open and close files repeatedly
GIVE_UP_SECONDS = 60.0  # unchanged this long and still not an image/PDF: it is broken, not half-written
RESCAN_SECONDS = 30.0  # full rescan even without inotify events


class WatchError(Exception):
    """The folder cannot be watched (layout, lock, settings): a message for a person."""


def check_outputs(outputs) -> tuple[str, ...]:
    """The outbox formats asked for, in `export.FORMATS` order; WatchError for an unknown or empty choice."""
    unknown = [fmt for fmt in outputs if fmt not in export.FORMATS]
    if unknown or not outputs:
        raise WatchError(
            f"output formats {', '.join(unknown) or '(none)'}: choose one or more of {', '.join(export.FORMATS)}"
        )
    return tuple(fmt for fmt in export.FORMATS if fmt in outputs)


@dataclass
class Pending:
    """A file seen in an inbox and not yet claimed: how long it has been unchanged, and why it is still waiting."""

    size: int
    mtime_ns: int
    since: float
    reason: str = Text("scan_settling")


@dataclass
class Watcher(Steps):
    root: Path
    recognizer: object  # a Recognizer (appliance.scan.recognizer); None until run() has opened its queue
    quiet: float = QUIET_SECONDS
    give_up: float = GIVE_UP_SECONDS
    rescan: float = RESCAN_SECONDS
    media_dirs: tuple = MEDIA_DIRS
    outputs: tuple = export.FORMATS  # which files each input gets in the outbox
    pending: dict = field(default_factory=dict)  # (tree key, rel) -> Pending
    unknown_folders: set = field(default_factory=set)
    stopping: bool = False

    def __post_init__(self):
        self.outputs = check_outputs(self.outputs)
        self.root = Path(self.root).absolute()
        self.local = Tree.local(self.root)
        self.state_dir = state_dir(self.root)
        self.work_dir = self.state_dir / "work"
        for folder in (self.local.inbox, self.local.outbox, self.local.done, self.local.failed, self.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for name in ("outbox", "done", "failed", self.state_dir.name):
            if overlap(self.root / name, self.local.inbox) or overlap(self.local.inbox, self.root / name):
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
        self.ledger = Ledger(self.state_dir)
        self.sticks: dict[str, Tree] = {}
        self.read_only_sticks: dict[str, Tree] = {}
        self.stick_since: dict[str, float] = {}  # when each stick was found: what happened since is its session
        # Sticks that went away with files not finished, for the UI and the log. Kept over a restart (the files are
        # still on the stick) until the stick is back.
        self.pulled: list[dict] = self._previous_status().get("pulled", [])
        self.inotify = Inotify()

    def close(self) -> None:
        self.write_status(stopped=True)
        self.ledger.close()
        self.inotify.close()
        self._lock.close()  # releases the flock

    # -- the loop --

    def run(self, once: bool = False) -> None:
        self.recover()
        while not self.stopping:
            self.scan()
            self.process_queue()
            self.write_status()
            if once and not self.pending and not self.ledger.active():
                return
            # Settling files are polled; otherwise sleep until an event or the next full rescan.
            wait = min(max(self.quiet / 4, 0.1), 1.0) if self.pending or self.ledger.active() else self.rescan
            self.inotify.wait(wait, lambda: self.stopping)

    def recover(self) -> None:
        """Finish what a previous run left half-done (after kill -9 or a power cut), from the step it was in."""
        rows = self.ledger.active()
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
            row = next((r for r in self.ledger.active() if r["id"] not in stuck), None)
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
            log.warning(
                "USB stick %s is read-only: its %s is not watched (open its files in the UI instead)",
                read_only[key].label,
                STICK_INBOX,
            )
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
                # too, from the queue's cache, without a second OCR): the "not finished" notice is over.
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
        if self.ledger.active_at(*key):
            return  # a stick's file being worked on (it stays on the stick until its results are there)
        try:
            info = path.lstat()
        except OSError:
            return
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            refused = Text("scan_refused_link" if stat.S_ISLNK(info.st_mode) else "scan_refused_special")
            self._refuse(tree, path, rel, folder, refused)
            return
        now = time.monotonic()
        seen = self.pending.get(key)
        if seen is None or (seen.size, seen.mtime_ns) != (info.st_size, info.st_mtime_ns):
            self.pending[key] = Pending(info.st_size, info.st_mtime_ns, now)
            return
        quiet_for = now - seen.since
        if quiet_for < self.quiet:
            return
        if info.st_size == 0:  # created, not yet written (scanners do that): waits, never a failure for being empty
            seen.reason = Text("scan_empty_waiting")
            return
        if open_for_writing(path):  # a writer pausing between pages: the quiet period starts again once it closes
            seen.since, seen.reason = now, Text("scan_still_open")
            return
        reason = _open_problem(path, rel)
        if reason is None:
            del self.pending[key]
            self._claim(tree, path, rel, folder, info.st_size)
        elif quiet_for >= self.give_up:
            del self.pending[key]
            row_id = self._insert(tree, path, rel, folder, "claiming", size=info.st_size)
            self.advance(row_id, claim_only=True)
            self.fail(row_id, Text("scan_gave_up", reason=reason, seconds=f"{quiet_for:.0f}"))
        else:
            seen.reason = Text("scan_not_open_yet", reason=reason)

    def _insert(
        self, tree: Tree, path: Path, rel: str, folder: str, state: str, size: int | None = None, copy: bool = True
    ) -> int:
        """One commit: the row with its work path, so a crash never leaves a row without one."""
        work = self.work_dir / f"{time.time_ns()}-{path.name[-100:]}" if copy else None
        return self.ledger.insert(
            tree=tree.key, rel=rel, folder=folder, state=state, source=str(path), work=work and str(work), size=size
        )

    def _claim(self, tree: Tree, path: Path, rel: str, folder: str, size: int) -> None:
        row_id = self._insert(tree, path, rel, folder, "claiming", size=size)
        log.info("claimed %s%s", f"[{tree.label}] " if tree.stick else "", rel)
        self.advance(row_id, claim_only=True)

    def _refuse(self, tree: Tree, path: Path, rel: str, folder: str, reason: str) -> None:
        """Links and special files are never opened: the entry itself is moved to failed/ with the reason."""
        row_id = self._insert(tree, path, rel, folder, "failing", copy=False)
        log.warning("%s: %s", rel, reason)
        self.fail(row_id, reason)

    # -- sticks pulled --

    def _stick_gone(self, tree: Tree) -> None:
        waiting = sorted(rel for key, rel in self.pending if key == tree.key)
        # Its files of this session that are not on the stick as they should be: still being worked on (they end
        # here), already ended here (the one in OCR when it was pulled is usually done before this is noticed), or
        # lost before they were copied off (still on the stick).
        rows = self.ledger.db.execute(
            "SELECT id, rel, state, out_dir, final FROM files "
            f"WHERE tree=? AND (updated>=? OR state IN {ACTIVE_SQL}) "
            "ORDER BY id",
            (tree.key, self.stick_since.pop(tree.key, 0)),
        ).fetchall()
        here = str(self.root)
        ids = {
            r["id"]: r["rel"]
            for r in rows
            if r["state"] in ACTIVE
            or inside(Path(r["out_dir"] or "/"), here)
            or inside(Path(r["final"] or "/"), here)
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
            for r in self.ledger.db.execute(
                f"SELECT rel FROM files WHERE state='failed' AND id IN ({','.join('?' * len(ids))}) ORDER BY id", ids
            )
        ]
        finished = [rel for rel in pulled["finished_locally"] if rel not in failed]
        return {**pulled, "finished_locally": finished, "failed_locally": failed}

    # -- failed files back in; the UI's view --

    def retry_failed(self) -> Retried:
        return retry_failed(self.root, db=self.ledger.db)

    def _previous_status(self) -> dict:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def write_status(self, stopped: bool = False) -> None:
        """What only the running watcher knows (files still settling, sticks, unknown folders), for queue_state."""
        waiting = [
            {
                "source": self.sticks[k].label if k in self.sticks else "inbox",
                "name": rel,
                "detail": p.reason,
                "message": p.reason.to_dict() if isinstance(p.reason, Text) else None,
            }
            for (k, rel), p in sorted(self.pending.items())
        ]
        status = {
            "pid": os.getpid(),
            "stopped": stopped,
            "heartbeat": time.time(),
            "engine": self.recognizer.describe() if self.recognizer else None,
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


F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)  # Linux (constants of <fcntl.h>, absent from some Pythons)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)


def open_for_writing(path: Path) -> bool:
    """Whether some process (Samba writing a scanner's file, a copy in progress) has `path` open for writing.

    Asked the kernel with a read lease, taken and given back at once: Linux refuses one (EAGAIN) while the file is
    open for writing anywhere. Only the file's owner (or CAP_LEASE) may take one, and not every file system offers
    them (FUSE, network mounts): where it cannot be told, False, and the quiet period alone decides.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        # Should a writer open the file in the instant the lease is held, the kernel signals its holder: SIGIO by
        # default, which would end this process. SIGURG instead, which is ignored unless handled.
        fcntl.fcntl(fd, F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
        return False
    except OSError as error:
        return error.errno == errno.EAGAIN
    finally:
        os.close(fd)


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
