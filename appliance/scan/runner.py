"""Running a watcher: `run` is `appliance watch ROOT` (its own job queue, in this process, until SIGTERM/SIGINT);
`WatcherThread` runs one on a thread of a process that does other work (the web app, the benchmark)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from appliance import export
from appliance.scan.folders import FOLDERS
from appliance.scan.recognizer import JobsRecognizer, local_jobs
from appliance.scan.trees import MEDIA_DIRS
from appliance.scan.watcher import GIVE_UP_SECONDS, QUIET_SECONDS, RESCAN_SECONDS, Watcher

log = logging.getLogger("appliance.scan")


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
    outputs=export.FORMATS,
    open_engine=None,
) -> int:
    """`appliance watch ROOT`: watch until SIGTERM/SIGINT (or, with once=True, until the inbox is empty).

    Files go through a job queue of this process under ROOT/.state/jobs, whose worker opens the engine (`engine`,
    `model_dir`; or `open_engine(report)`, as `appliance.jobs.Jobs` takes it).
    """
    watcher = Watcher(
        Path(root),
        None,  # its recognizer comes once the watcher holds ROOT's lock: one queue, one worker
        quiet=quiet,
        give_up=give_up,
        rescan=rescan,
        media_dirs=tuple(media_dirs),
        outputs=tuple(outputs),
    )
    jobs, previous = None, {}

    def stop(signum, frame):
        log.info("stopping after the current file")
        watcher.stopping = True

    try:
        jobs = local_jobs(watcher.root, open_engine or _engine_opener(engine, model_dir))
        watcher.recognizer = JobsRecognizer(jobs, keep_inputs=False)  # the original is kept in done/
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        if retry_failed:
            watcher.retry_failed()
        log.info("watching %s (inbox folders: %s)", watcher.local.inbox, ", ".join(sorted(k for k in FOLDERS if k)))
        watcher.run(once=once)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        watcher.close()
        if jobs is not None:
            jobs.close()
    return 0


def _engine_opener(engine: str, model_dir):
    def opener(report):
        from appliance.ocr.engines.select import open_engine

        return open_engine(engine, model_dir=model_dir, progress=report)

    return opener


class WatcherThread:
    """A watcher on its own thread, inside a process that does other work (the web app, the benchmark).
    The ledger's SQLite connection is made on that thread, which is the only one that uses it."""

    def __init__(
        self,
        root,
        recognizer,
        *,
        quiet: float = QUIET_SECONDS,
        give_up: float = GIVE_UP_SECONDS,
        rescan: float = RESCAN_SECONDS,
        media_dirs=MEDIA_DIRS,
        outputs=export.FORMATS,
    ):
        options = {
            "quiet": quiet,
            "give_up": give_up,
            "rescan": rescan,
            "media_dirs": tuple(media_dirs),
            "outputs": tuple(outputs),
        }
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
