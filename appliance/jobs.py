"""The one job queue: every use (kiosk, HTTP API, scan folder) submits here, one worker thread owns the engine.

Why one worker: the GPU holds one model and runs one document at a time; a second thread would only queue inside the
engine, invisibly. Here the queue is visible (position, progress, cancel) and bounded (`QueueFull`).

Storage under `data_dir`:
  jobs.sqlite          job rows (WAL), the only record of job state; this module is its only writer
  inputs/<sha256>      the uploaded bytes, kept so a restart can resume queued jobs and the UI can show the page
  results/<key>.json   the result document, named by its cache key (input + task + options + engine revision)
  results/<key>.turn.json   the pages a long job read in its earlier turns (fair turns, below)
Files are written to a temporary name and renamed, so a crash never leaves a half-written file under a real name.

It is one module (about 740 lines) on purpose: the queue, the store, the result cache, restart recovery, fair
turns and pruning change together under one lock, and keeping their only writer in one place is what makes crash
recovery easy to check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.files import write_atomic
from appliance.messages import Text, message_of
from appliance.ocr import pace, steps
from appliance.ocr.engines.base import Engine, check_task
from appliance.ocr.engines.routed import serving
from appliance.ocr.errors import EngineLost, EngineUnavailable, InputError, OcrError
from appliance.ocr.images import Document
from appliance.ocr.pipeline import Cancelled, TurnOver, recognize_file
from appliance.ocr.result import SCHEMA_VERSION, OcrResult
from appliance.ocr.tasks import Request

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
# History: finished jobs (their inputs and results) are kept this long and at most this many (newest first);
# `prune()` runs at every start and after every job.
KEEP_DAYS = 30
KEEP_JOBS = 2000
MAX_RETRIES = 2  # a job interrupted this often (restarts, a lost engine) is probably what crashes it: stop retrying
PARTIAL = ".partial"  # suffix of a cancelled job's result key: the pages it read before the cancel
# Fair turns: one worker reads one page at a time, so one long file must not hold everyone else for its whole length.
# A job has at most MAX_JOB_PAGES pages (refused at submission), and a job that has run TURN_SECONDS while another
# waits lets it go first after its current page: the pages read so far wait in results/<key>.turn.json, the job goes
# to the end of the queue, and it goes on from its next page when its turn comes again (the same result in the end).
MAX_JOB_PAGES = 300
TURN_SECONDS = 60.0
TURN = ".turn"  # suffix of the key of a job's pages read in its earlier turns
# error_kind of a job set aside because the process died under it MAX_RETRIES + 1 times (the UI says it in words).
CRASHED = "Crashed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    task TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    pages_done INTEGER NOT NULL DEFAULT 0,
    pages_total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_kind TEXT,  -- the exception class, so the API can answer a failed job with the right status
    error_code TEXT,  -- `error`'s appliance.messages id and values (JSON), so the UI can say it in its language
    error_params TEXT,
    cache_key TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    engine TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""
ADDED_COLUMNS = {"error_code": "TEXT", "error_params": "TEXT"}  # columns a store made by an older version lacks


class QueueFull(Exception):
    """The queue holds `limit` jobs already; try again after `retry_after` seconds."""

    def __init__(self, limit: int, retry_after: int):
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(Text("queue_full", limit=limit, seconds=retry_after))


class PageLimit(InputError):
    """The file has more pages than one job may have (`Jobs.max_pages`)."""

    def __init__(self, name: str, pages: int, limit: int):
        self.pages, self.limit = pages, limit
        super().__init__(name, Text("job_page_limit", pages=pages, limit=limit))


class JobNotFound(KeyError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.message = Text("job_not_found", id=job_id)
        super().__init__(job_id)

    def __str__(self) -> str:
        return str(self.message)


@dataclass
class Job:
    id: str
    name: str
    size: int
    sha256: str
    task: str
    options: dict
    state: str
    pages_done: int
    pages_total: int
    error: str | None
    error_kind: str | None
    cache_key: str | None
    cached: bool
    retries: int
    engine: str | None
    created: float
    started: float | None
    finished: float | None
    error_code: str | None = None  # `error` as an appliance.messages id + values (None: words without an id)
    error_params: dict | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = {k: row[k] for k in row.keys() if k != "seq"}
        data["options"] = json.loads(data["options"])
        data["cached"] = bool(data["cached"])
        data["error_params"] = json.loads(data["error_params"]) if data.get("error_params") else None
        return cls(**data)

    @property
    def error_text(self) -> str | None:
        """`error` as an appliance.messages.Text (for `messages.say`), or its words when it has no known id."""
        known = self.error_code and Text.from_dict({"code": self.error_code, "params": self.error_params})
        return known or self.error

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED

    @property
    def has_result(self) -> bool:
        """Done, or cancelled while running after reading some pages (a partial result)."""
        return self.state == DONE or (self.state == CANCELLED and (self.cache_key or "").endswith(PARTIAL))

    def request(self) -> Request:
        return Request.make(self.task, fields=self.options.get("fields"), target_lang=self.options.get("target_lang"))

    def to_dict(self) -> dict:
        return asdict(self)


def cache_key(sha256: str, request: Request, info) -> str:
    """Same input bytes + task + options + engine/model/revision (+ result schema) -> same result."""
    material = json.dumps(
        [SCHEMA_VERSION, sha256, request.task.value, request.options(), info.name, info.model, info.revision],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


class Jobs:
    """The queue, the store and the worker. `open_engine` is called once, in the worker thread, which then owns it.

    `open_engine(report)` gets `report(words, **extra)`, which sets what `engine_status()` says while the engine
    loads (`progress`, and any extra keys such as `percent`), so the kiosk shows what is happening, not a frozen
    page."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        open_engine: Callable[..., Engine],
        max_queue: int = 32,
        max_pages: int = MAX_JOB_PAGES,
        turn_seconds: float = TURN_SECONDS,
    ):
        self.data_dir = Path(data_dir)
        self.inputs = self.data_dir / "inputs"
        self.results = self.data_dir / "results"
        for d in (self.inputs, self.results):
            d.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.max_pages, self.turn_seconds = max_pages, turn_seconds
        self._open_engine = open_engine
        self._engine: Engine | None = None
        self._engine_state = "loading"  # loading | ready | failed | stopped
        self._engine_error: str | None = None
        self._engine_progress: dict = {"progress": "starting the OCR engine"}  # words (+ extras) while loading
        self._engine_since = time.time()  # when the current engine state began
        self._lock = threading.RLock()  # guards the connection and the in-memory state below
        self._changed = threading.Condition(self._lock)  # notified on every job state/progress change
        self._pending: list[str] = []  # queued job ids in order; the DB is the truth, this is the worker's to-do list
        self._cancel: set[str] = set()
        self._live: dict[str, pace.LivePage] = {}  # the running job's page as its answer streams in (memory only)
        self._seconds_per_job = 5.0  # running estimate for Retry-After
        self._stopping = False
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._recover()
        self.prune()
        self._worker = threading.Thread(target=self._run, name="ocr-worker", daemon=True)
        self._worker.start()

    # ---- state after a restart -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Jobs that were running when the process died go back in the queue, queued ones resume.

        A job under which the process died is probably what kills it (a decoder's native crash, the OOM killer):
        the first time it resumes in its place (a power cut is nobody's fault), after that it waits behind every
        other queued job, and the (MAX_RETRIES + 1)th death sets it aside as failed, its input kept."""
        with self._lock:
            crashed = _error_columns(Text("job_crashed", n=MAX_RETRIES + 1))
            self._db.execute(
                "UPDATE jobs SET state=?, error=?, error_code=?, error_params=?, error_kind=?, finished=?"
                " WHERE state=? AND retries>=?",
                (FAILED, *crashed.values(), CRASHED, time.time(), RUNNING, MAX_RETRIES),
            )
            self._db.execute(
                "UPDATE jobs SET state=?, retries=retries+1, pages_done=0, started=NULL, error=?, error_code=?,"
                " error_params=? WHERE state=?",
                (QUEUED, *_error_columns(Text("job_interrupted")).values(), RUNNING),
            )
            rows = self._db.execute("SELECT id, retries FROM jobs WHERE state=? ORDER BY seq", (QUEUED,)).fetchall()
            suspects = [r["id"] for r in rows if r["retries"] > 1]  # interrupted twice now: the others go first
            self._pending = [r["id"] for r in rows if r["retries"] <= 1] + suspects

    # ---- what callers use ------------------------------------------------------------------------------------

    def submit(self, source: bytes | str | os.PathLike, name: str, request: Request) -> Job:
        """Validate the file, then return a cached result at once or queue the job. Raises InputError,
        TaskNotSupported, EngineUnavailable or QueueFull, each before anything is stored."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Document.open(data, name=name) as document:  # refuses unreadable files before they are queued
            sha256, pages = document.sha256, document.page_count
        if pages > self.max_pages:
            raise PageLimit(name, pages, self.max_pages)
        with self._lock:
            if self._engine_state == "failed":
                raise EngineUnavailable("the configured engine", self._engine_error or Text("engine_failed_to_start"))
            key = None
            if self._engine is not None:
                check_task(self._engine, request)
                key = cache_key(sha256, request, serving(self._engine, request.task).info)
            if key is None or not (self.results / f"{key}.json").exists():
                waiting = len(self._pending)
                if waiting >= self.max_queue:
                    raise QueueFull(self.max_queue, self._retry_after(waiting))
            path = self.inputs / sha256
            if not path.exists():
                write_atomic(path, data)
            job_id = uuid.uuid4().hex[:16]
            self._db.execute(
                "INSERT INTO jobs (id, name, size, sha256, task, options, state, pages_total, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    name,
                    len(data),
                    sha256,
                    request.task.value,
                    json.dumps(request.options()),
                    QUEUED,
                    pages,
                    time.time(),
                ),
            )
            if key is not None and (self.results / f"{key}.json").exists():
                self._finish_cached(job_id, key)
            else:
                self._pending.append(job_id)
            self._changed.notify_all()
            return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    def list(self, limit: int = 100, offset: int = 0) -> list[Job]:
        """Newest first, for the history page and GET /jobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def position(self, job_id: str) -> int | None:
        """1 = next to run; None when not waiting."""
        with self._lock:
            return self._pending.index(job_id) + 1 if job_id in self._pending else None

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job has finished (or `timeout` seconds passed); returns its latest state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.get(job_id)
                left = None if deadline is None else deadline - time.monotonic()
                if job.finished_state or (left is not None and left <= 0):
                    return job
                self._changed.wait(left)

    def result(self, job_id: str) -> OcrResult:
        result = OcrResult.from_dict(json.loads(self.result_path(job_id).read_text(encoding="utf-8")))
        result.source = self.get(job_id).name  # a cached result was first made for another upload's name
        return result

    def prune(self, keep_days: float = KEEP_DAYS, keep_jobs: int = KEEP_JOBS) -> int:
        """Forget finished jobs older than `keep_days`, and the oldest beyond the newest `keep_jobs`; their inputs
        and results go when no remaining job uses them. Returns how many were forgotten."""
        with self._lock:
            finished = ", ".join("?" * len(FINISHED))
            rows = self._db.execute(
                f"SELECT id, sha256, cache_key FROM jobs WHERE state IN ({finished}) AND (finished < ? OR seq <= "
                f"(SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?))",
                (*FINISHED, time.time() - keep_days * 86400, keep_jobs),
            ).fetchall()
            for row in rows:
                self._db.execute("DELETE FROM jobs WHERE id=?", (row["id"],))
                self._collect(row["sha256"], row["cache_key"])
            if rows:
                self._changed.notify_all()
            return len(rows)

    def result_path(self, job_id: str) -> Path:
        """The job's result; a job cancelled while running has the pages it read (a partial result) when any."""
        job = self.get(job_id)
        if not job.has_result:
            raise LookupError(
                f"job '{job_id}' has no result: it is {job.state}" + (f" ({job.error})" if job.error else "")
            )
        return self.results / f"{job.cache_key}.json"

    def input_path(self, job_id: str) -> Path:
        return self.inputs / self.get(job_id).sha256

    def drop_input(self, job_id: str) -> None:
        """Remove a finished job's input bytes unless a job still waiting or running needs them; the job and its
        result stay, so the cache still answers. For a queue whose history nobody views (`appliance watch ROOT`,
        which keeps the original in done/ itself)."""
        with self._lock:
            job = self.get(job_id)
            busy = self._db.execute(
                "SELECT 1 FROM jobs WHERE sha256=? AND state IN (?, ?) LIMIT 1", (job.sha256, QUEUED, RUNNING)
            ).fetchone()
            if job.finished_state and not busy:
                (self.inputs / job.sha256).unlink(missing_ok=True)

    def cancelling(self, job_id: str) -> bool:
        """A cancel was asked for this running job; it stops before its next page."""
        with self._lock:
            return job_id in self._cancel

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one stops before its next page."""
        with self._lock:
            job = self.get(job_id)
            turn = self._turn_path(job.cache_key) if job.cache_key else None
            if job.state == QUEUED and turn and turn.exists():  # between two turns: its pages read are kept
                self._pending.remove(job_id)
                partial_key = f"{job.cache_key}{PARTIAL}"
                os.replace(turn, self.results / f"{partial_key}.json")
                done = Text("job_cancelled_after", done=job.pages_done, total=job.pages_total)
                self._set(job_id, state=CANCELLED, finished=time.time(), cache_key=partial_key, error=done)
            elif job.state == QUEUED:
                self._pending.remove(job_id)
                self._set(job_id, state=CANCELLED, finished=time.time(), error=Text("job_cancelled_queued"))
            elif job.state == RUNNING:
                self._cancel.add(job_id)
            return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Forget the job and remove its input and result files unless another job still uses them."""
        with self._lock:
            job = self.get(job_id)
            if job_id in self._pending:
                self._pending.remove(job_id)
            if job.state == RUNNING:
                self._cancel.add(job_id)  # the worker drops what it produces for a job that no longer exists
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            self._collect(job.sha256, job.cache_key)
            self._changed.notify_all()

    def live(self, job_id: str) -> dict | None:
        """A running job's page as it is read (pace.LivePage.report: page, text so far, seconds left); None when
        the job is not running."""
        with self._lock:
            page = self._live.get(job_id)
            if page is None:
                return None
            figure = self._page_seconds(self._engine).get(page.task) if self._engine else None
            return page.report(figure and figure["seconds"], time.monotonic())

    def engine_status(self) -> dict:
        """state (loading | ready | failed | stopped), ready, error, info, tasks, since (epoch of the current state),
        and while loading the opener's `progress` words (plus whatever extra keys it reported). Callers must ignore
        keys they do not know: engines may report more."""
        with self._lock:
            engine = self._engine
            status = {
                "state": self._engine_state,
                "ready": self._engine_state == "ready",
                "error": self._engine_error,
                "info": asdict(engine.info) if engine else None,
                "tasks": sorted(t.value for t in engine.tasks) if engine else None,
                "since": self._engine_since,
                "progress": None,
                "page_seconds": self._page_seconds(engine) if engine else {},
            }
            if self._engine_state == "loading":
                status.update(self._engine_progress)
            return status

    def _page_seconds(self, engine: Engine) -> dict[str, dict]:
        """{task: {"seconds", "measured"}}: this PC's median seconds per page of each task's engine from finished
        jobs, else that engine's own estimate from its warm-up (appliance.ocr.pace); tasks with neither are left
        out."""
        rows = self._db.execute(
            "SELECT task, engine, finished - started, pages_total FROM jobs WHERE state=? AND cached=0 AND started "
            "IS NOT NULL ORDER BY seq DESC LIMIT 500",
            (DONE,),
        ).fetchall()
        figures = {}
        for task in sorted(engine.tasks):
            worker = serving(engine, task)
            measured = pace.from_jobs(
                (r[0], r[2], r[3]) for r in rows if r[0] == task.value and r[1] == worker.info.name
            )
            estimate = (getattr(worker, "page_seconds", None) or {}).get(task.value)
            if task.value in measured:
                figures[task.value] = {"seconds": measured[task.value], "measured": True}
            elif estimate:
                figures[task.value] = {"seconds": estimate, "measured": False}
        return figures

    def report_engine_progress(self, progress: str, **extra) -> None:
        """What the engine is doing while it loads, in words for a person (e.g. "loading the model: 3 of 8 files")."""
        with self._lock:
            self._engine_progress = {**extra, "progress": progress}
            self._changed.notify_all()

    def wait_engine(self, timeout: float | None = None) -> dict:
        """Block until the engine has loaded or failed (or `timeout` passed); returns `engine_status()`."""
        with self._changed:
            self._changed.wait_for(lambda: self._engine_state != "loading", timeout)
            return self.engine_status()

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by its current length (for Retry-After)."""
        with self._lock:
            return self._retry_after(max(1, len(self._pending)))

    def counts(self) -> dict:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def close(self, timeout: float = 30) -> None:
        """Stop after the current page; queued jobs stay queued for the next start."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._cancel.update(self._running_ids())
            self._changed.notify_all()
        self._worker.join(timeout)
        with self._lock:
            self._db.close()

    # ---- the worker --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        engine = self._load_engine()
        try:
            while engine is not None:
                with self._changed:
                    while not self._pending and not self._stopping:
                        self._changed.wait()
                    if self._stopping:
                        return
                    job_id = self._pending.pop(0)
                lost = self._process(engine, job_id)
                self.prune()
                if lost:
                    # The model server crashed or restarted: open the engine again the way it was opened at start
                    # (which waits while systemd restarts the server, or falls back to the CPU engine).
                    engine.close()
                    engine = self._load_engine(lost)
        finally:
            with self._lock:
                if self._engine_state != "failed":
                    self._engine_state = "stopped"
            if engine is not None:
                engine.close()

    def _load_engine(self, lost: str | None = None) -> Engine | None:
        """Open the engine (at start, or again after it was `lost`: why); None, with every queued job failed, if it
        cannot."""
        with self._lock:
            self._engine, self._engine_state, self._engine_since = None, "loading", time.time()
            self._engine_progress = {}
        steps.report(self.report_engine_progress, "reopening" if lost else "starting", lost or "")
        try:
            engine = self._open_engine(self.report_engine_progress)
        except Exception as e:
            log.exception("engine failed to start")
            with self._lock:
                self._engine_state, self._engine_error, self._engine_since = "failed", message_of(e), time.time()
                for job_id in self._pending:
                    self._set(
                        job_id,
                        state=FAILED,
                        finished=time.time(),
                        error=Text("engine_not_started", error=message_of(e)),
                        error_kind="EngineUnavailable",
                    )
                self._pending.clear()
                self._changed.notify_all()
            return None
        with self._lock:
            self._engine, self._engine_state, self._engine_since = engine, "ready", time.time()
            self._changed.notify_all()
        return engine

    def _process(self, engine: Engine, job_id: str) -> str | None:
        """Run one job to its end; returns why the engine was lost when it was (the job is then queued again)."""
        with self._lock:
            try:
                job = self.get(job_id)
            except JobNotFound:
                return None
            request = job.request()
            worker = serving(engine, request.task)  # a routed task: the engine that runs it
            key = cache_key(job.sha256, request, worker.info)
            if (self.results / f"{key}.json").exists():  # an identical job finished while this one waited
                self._finish_cached(job_id, key)
                self._changed.notify_all()
                return None
            earlier = self._earlier_turns(key)
            spent = earlier.timings.get("ocr", 0.0) if earlier else 0.0
            self._set(
                job_id,
                state=RUNNING,
                started=time.time() - spent,  # its turns' time, not the other jobs' in between
                engine=worker.info.name,
                cache_key=key,
                error=None,
                error_kind=None,
            )
            self._changed.notify_all()

        def progress(done: int, total: int, blank: int) -> None:
            now = time.monotonic()
            with self._lock:
                self._set(job_id, pages_done=done, pages_total=total)
                if done < total:  # the next page begins
                    live = self._live.get(job_id)  # none yet: the job's first page, or its first in this turn
                    began = live.job_started if live else now - spent  # earlier turns' time counts
                    self._live[job_id] = pace.LivePage(request.task.value, done + 1, total, now, began, done - blank)
                self._changed.notify_all()

        def on_text(text: str, tokens: int) -> None:
            with self._lock:
                if job_id in self._live:
                    self._live[job_id].update(text, tokens, time.monotonic())

        started = time.monotonic()

        def turn_over() -> bool:  # someone is waiting and this job has had its turn
            return bool(self._pending) and time.monotonic() - started >= self.turn_seconds

        outcome: dict
        try:
            result = recognize_file(
                engine,
                self.inputs / job.sha256,
                request,
                name=job.name,
                progress=progress,
                cancelled=lambda: job_id in self._cancel,
                earlier=earlier,
                turn_over=turn_over,
                on_text=on_text,
            )
            write_atomic(self.results / f"{key}.json", result.to_json().encode("utf-8"))
            outcome = {"state": DONE}
        except TurnOver as e:
            write_atomic(self._turn_path(key), e.partial.to_json().encode("utf-8"))
            outcome = {"state": QUEUED, "turn": len(e.partial.pages)}
        except Cancelled as e:
            outcome = {"state": CANCELLED, "error": Text("job_cancelled_running")}
            if e.partial is not None and self._stopping:  # shutting down: the next start goes on from here
                write_atomic(self._turn_path(key), e.partial.to_json().encode("utf-8"))
            if e.partial is not None and not self._stopping:  # the pages read so far stay, as a partial result
                partial_key = f"{key}{PARTIAL}"  # never the full result's key: the cache must not serve it
                write_atomic(self.results / f"{partial_key}.json", e.partial.to_json().encode("utf-8"))
                outcome.update(
                    cache_key=partial_key,
                    error=Text("job_cancelled_after", done=len(e.partial.pages), total=job.pages_total),
                )
        except EngineLost as e:
            outcome = {"state": QUEUED, "lost": e.reason}
        except OcrError as e:
            outcome = {"state": FAILED, "error": message_of(e), "error_kind": type(e).__name__}
        except Exception as e:
            log.exception("job %s failed", job_id)
            error = Text("job_internal", kind=type(e).__name__, error=str(e))
            outcome = {"state": FAILED, "error": error, "error_kind": "internal"}
        with self._lock:
            self._live.pop(job_id, None)
            cancelled = job_id in self._cancel
            self._cancel.discard(job_id)
            lost = outcome.pop("lost", None)
            turn = outcome.pop("turn", None)
            if turn and cancelled and not self._stopping:  # the cancel came during its turn's last page
                outcome = self._cancelled_between_turns(key, turn, job)
            if lost and cancelled and not self._stopping:
                outcome = {"state": CANCELLED, "error": Text("job_cancelled_running")}
            elif lost and job.retries >= MAX_RETRIES:
                outcome = {
                    "state": FAILED,
                    "error": Text("engine_lost_gave_up", n=job.retries + 1, why=lost),
                    "error_kind": "EngineUnavailable",
                }
            if outcome["state"] == QUEUED and lost:  # the engine was lost mid-job: first in line once it is back
                self._set(
                    job_id,
                    state=QUEUED,
                    retries=job.retries + 1,
                    pages_done=0,
                    started=None,
                    error=Text("engine_lost_requeued", why=lost),
                )
                self._pending.insert(0, job_id)
            elif turn and outcome["state"] == QUEUED and not self._stopping:
                # behind the jobs waiting now; on from its next page when its turn comes again
                if self._set(job_id, state=QUEUED, error=Text("job_took_turn", done=turn, next=turn + 1)):
                    self._pending.append(job_id)
                else:
                    self._collect(job.sha256, key)  # deleted while running
            elif self._stopping and outcome["state"] in (CANCELLED, QUEUED):
                # shutting down, not a user's cancel: leave it for the next start to resume
                self._set(job_id, state=QUEUED, pages_done=0, started=None, error=None)
            elif self._set(job_id, finished=time.time(), **outcome) == 0:
                self._collect(job.sha256, key)  # deleted while running
            if outcome["state"] in FINISHED and not (self._stopping and outcome["state"] == CANCELLED):
                self._turn_path(key).unlink(missing_ok=True)  # ended: its earlier turns' pages are not needed
            if outcome["state"] == DONE:
                self._seconds_per_job = 0.7 * self._seconds_per_job + 0.3 * (time.monotonic() - started)
            self._changed.notify_all()
        return lost

    # ---- helpers (callers hold the lock) ------------------------------------------------------------------------

    def _set(self, job_id: str, **columns) -> int:
        if "error" in columns:  # its id and values go beside the words
            columns.update(_error_columns(columns["error"]))
        names = ", ".join(f"{k}=?" for k in columns)
        cur = self._db.execute(f"UPDATE jobs SET {names} WHERE id=?", (*columns.values(), job_id))
        return cur.rowcount

    def _finish_cached(self, job_id: str, key: str) -> None:
        cached = json.loads((self.results / f"{key}.json").read_text(encoding="utf-8"))
        now, pages = time.time(), len(cached["pages"])
        self._set(
            job_id,
            state=DONE,
            cache_key=key,
            cached=1,
            pages_done=pages,
            pages_total=pages,
            engine=cached["engine"]["name"],
            started=now,
            finished=now,
        )

    def _collect(self, sha256: str, key: str | None) -> None:
        """Remove an input or result file that no remaining job refers to."""
        if not self._db.execute("SELECT 1 FROM jobs WHERE sha256=? LIMIT 1", (sha256,)).fetchone():
            (self.inputs / sha256).unlink(missing_ok=True)
        if key and not self._db.execute("SELECT 1 FROM jobs WHERE cache_key=? LIMIT 1", (key,)).fetchone():
            (self.results / f"{key}.json").unlink(missing_ok=True)
            self._turn_path(key).unlink(missing_ok=True)

    def _turn_path(self, key: str) -> Path:
        return self.results / f"{key}{TURN}.json"

    def _earlier_turns(self, key: str) -> OcrResult | None:
        """The pages a job with this key read in its earlier turns (None: none, or a file torn by a crash)."""
        try:
            return OcrResult.from_dict(json.loads(self._turn_path(key).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _cancelled_between_turns(self, key: str, pages: int, job: Job) -> dict:
        """The outcome of a job cancelled during the last page of its turn: the pages read, as a partial result."""
        partial_key = f"{key}{PARTIAL}"
        os.replace(self._turn_path(key), self.results / f"{partial_key}.json")
        error = Text("job_cancelled_after", done=pages, total=job.pages_total)
        return {"state": CANCELLED, "cache_key": partial_key, "error": error}

    def _running_ids(self) -> list[str]:
        return [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE state=?", (RUNNING,)).fetchall()]

    def _retry_after(self, waiting: int) -> int:
        return max(1, min(600, round(waiting * self._seconds_per_job)))


def _error_columns(error: str | None) -> dict:
    """A job's error as its columns: the English words, and an appliance.messages.Text's id and values."""
    stored = error.to_dict() if isinstance(error, Text) else {"code": None, "params": None}
    params = json.dumps(stored["params"], ensure_ascii=False) if stored["params"] is not None else None
    return {"error": None if error is None else str(error), "error_code": stored["code"], "error_params": params}
