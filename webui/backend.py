"""The web app's backend as a Flask extension: the one job queue, the engine it runs, the scanners' scans and the
scan folder's thread.

`Backend(app)` (or `init_app`) makes them from the app's config and the image's runtime config and stores itself in
`app.extensions["backend"]`; `close()` stops the scan folder (after its current file) and the queue's worker.
`appliance serve` calls it on shutdown and the tests' fixtures call it, so no thread outlives its app.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

from flask import Flask

from appliance import runtime
from appliance.jobs import Jobs
from appliance.scanner import Scans

KEY = "backend"


class Backend:
    def __init__(self, app: Flask | None = None):
        self.jobs: Jobs | None = None
        self.scanner = None  # appliance.scan.WatcherThread when the app runs the scan folder
        self.kiosk_seen: float | None = None  # epoch of the kiosk page's last check-in (GET /kiosk/alive)
        self.sync_slots: threading.BoundedSemaphore | None = None  # POST /ocr requests waiting (SYNC_SLOTS)
        self.scans: Scans | None = None  # scans from the scanners (SANE), each on its way to one job
        self.scanners_seen: set[str] = set()  # device names a scanner listing returned: the only ones scanned
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = app.config
        self.runtime: runtime.Runtime = config["RUNTIME"] or runtime.load(config["APPLIANCE_CONFIG"])
        self.engine: str = config["ENGINE"] or self.runtime.engine
        self.sync_slots = threading.BoundedSemaphore(config["SYNC_SLOTS"])
        self.model_dir: str | None = config["MODEL_DIR"] or self.runtime.model_dir
        self.vllm_url: str | None = config["VLLM_URL"]
        self.jobs = config["JOBS"] or Jobs(
            Path(config["DATA_DIR"]), self._open_engine, config["MAX_QUEUE"], config["MAX_JOB_PAGES"]
        )
        self.scans = Scans(Path(config["DATA_DIR"]) / "scanner", config["MAX_JOB_PAGES"])
        if config["SCAN_DIR"]:
            from appliance.scan import JobsRecognizer, WatcherThread

            self.scanner = WatcherThread(
                config["SCAN_DIR"], JobsRecognizer(self.jobs), outputs=self.runtime.outputs, **config["SCAN_OPTIONS"]
            )
        app.extensions[KEY] = self

    def _open_engine(self, progress):
        """Runs in the queue's worker; the words show on the kiosk's start screen while the engine loads."""
        from appliance.ocr.engines.select import open_engine

        return open_engine(self.engine, model_dir=self.model_dir, vllm_url=self.vllm_url, progress=progress)

    @cached_property
    def engine_choice(self):
        """Which engine `auto` picks and why (GPU found or not, model given or not), for the status page and
        GET /health. Asked when first needed, not at start-up: it probes the GPU."""
        from appliance.ocr.engines.select import choose

        return choose(self.engine, self.model_dir, self.vllm_url)

    def close(self, timeout: float = 30) -> None:
        """Stop the scanners' runs and the scan folder, then the queue (queued jobs stay queued for the next start).
        Safe to call twice."""
        if self.scans is not None:
            self.scans.close()  # their finished pages stay on disk
        if self.scanner is not None:
            self.scanner.stop(timeout)  # finishes its current file first
        if self.jobs is not None:
            self.jobs.close(timeout)
