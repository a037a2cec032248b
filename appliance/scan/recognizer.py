"""How the watcher has a file recognised: the `Recognizer` protocol, and `JobsRecognizer`, which runs each file
through an `appliance.jobs.Jobs` queue. The queue's result cache (`results/<key>.json`) is the only one: the same
bytes with the same task and engine are recognised once, and the ledger only names the job a result came from.

Under `appliance serve --scan` the queue is the web app's (the scan folder's jobs show in the UI's history); the
standalone `appliance watch ROOT` runs its own, in-process, under ROOT/.state/jobs (`local_jobs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.messages import Text
from appliance.ocr.errors import EngineUnavailable, OcrError
from appliance.ocr.result import OcrResult
from appliance.ocr.tasks import Request
from appliance.scan.ledger import state_dir


@dataclass(frozen=True)
class Recognized:
    job: str  # what `Recognizer.result` takes to give the result back
    reused: bool  # the result was cached (the same bytes, task and engine before), not recognised now


class Recognizer(Protocol):
    def describe(self) -> str:
        """The engine, in words, for the status file and the failed files' reports."""
        ...

    def recognize(self, path: Path, request: Request, name: str) -> Recognized:
        """Recognise the file, or find the cached result of the same bytes. OcrError: the file's fault (it goes to
        failed/); EngineUnavailable: not the file's (the watcher stops and says why)."""
        ...

    def result(self, job: str) -> OcrResult:
        """The result of an earlier `recognize`; LookupError when it is gone (the file is then recognised again)."""
        ...


class JobsRecognizer:
    """Runs OCR through a job queue, which owns the engine and the result cache. `keep_inputs=False`: the queue's
    copy of each file is dropped once its job has finished (a queue of our own, whose history nobody views)."""

    def __init__(self, jobs, keep_inputs: bool = True):
        self.jobs, self.keep_inputs = jobs, keep_inputs

    def describe(self) -> str:
        status = self.jobs.engine_status()
        info = status["info"]
        return f"{info['name']} ({info['model']})" if info else f"engine {status['state']}"

    def recognize(self, path: Path, request: Request, name: str) -> Recognized:
        from appliance.jobs import DONE, QueueFull

        status = self.jobs.wait_engine()  # loaded first, so that a cached result is found at once
        if not status["ready"]:
            raise EngineUnavailable("the configured engine", status["error"] or status["state"])
        while True:
            try:
                job = self.jobs.submit(path, name, request)
                break
            except QueueFull as full:  # the UI's users filled the queue: the scan folder waits its turn
                time.sleep(min(full.retry_after, 30))
        job = self.jobs.wait(job.id)
        if not self.keep_inputs:
            self.jobs.drop_input(job.id)
        if job.state != DONE:
            raise OcrError(Text("input", name=name, reason=job.error_text or job.state))
        return Recognized(job.id, job.cached)

    def result(self, job: str) -> OcrResult:
        try:
            return self.jobs.result(job)
        except (OSError, ValueError) as gone:  # the job is there, its result file is not (or is torn)
            raise LookupError(f"the result of job {job} is gone: {gone}") from gone


def local_jobs(root, open_engine):
    """The queue of a watcher that runs on its own (`appliance watch ROOT`): in this process, under ROOT/.state.
    Open it only while holding the watcher's lock on ROOT: a queue has one worker."""
    from appliance.jobs import Jobs

    return Jobs(state_dir(root) / "jobs", open_engine)
