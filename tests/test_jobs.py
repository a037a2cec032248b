"""appliance.jobs: the queue, the SQLite store, the result cache, restart recovery, cancel and delete."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_engine import FakeEngine, page_image

from appliance.jobs import MAX_RETRIES, JobNotFound, Jobs, QueueFull
from appliance.ocr import pace
from appliance.ocr.errors import EngineLost, EngineUnavailable, InputError, TaskNotSupported
from appliance.ocr.tasks import Request, Task

ROOT = Path(__file__).resolve().parent.parent


def png(width=64, height=32, color="white") -> bytes:
    buf = io.BytesIO()
    page_image((width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def pdf(pages=3) -> bytes:
    images = [page_image((100, 140)) for _ in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buf.getvalue()


SPOT = Request.make("spotting")


def test_job_runs_and_writes_result_atomically(make_jobs, tmp_path):
    jobs = make_jobs()
    job = jobs.wait(jobs.submit(png(), "a.png", SPOT).id, timeout=10)
    assert (job.state, job.pages_done, job.pages_total, job.cached, job.engine) == ("done", 1, 1, False, "fake")
    result = jobs.result(job.id)
    assert result.text == "HELLO 64x32" and result.pages[0].blocks[0].box == [2, 3, 32, 16]
    results = list((tmp_path / "data" / "results").iterdir())
    assert [p.name for p in results] == [f"{job.cache_key}.json"]  # no temporary file left behind
    assert json.loads(results[0].read_text())["source"] == "a.png"
    assert (tmp_path / "data" / "inputs" / job.sha256).read_bytes() == png()


def test_pdf_pages_reported_as_progress(make_jobs):
    engine = FakeEngine()
    jobs = make_jobs(engine)
    job = jobs.wait(jobs.submit(pdf(3), "three.pdf", SPOT).id, timeout=10)
    assert (job.state, job.pages_done, job.pages_total) == ("done", 3, 3)
    assert [p.number for p in jobs.result(job.id).pages] == [1, 2, 3]
    assert engine.calls == 3


def test_the_running_pages_answer_is_kept_in_memory_while_it_is_written(make_jobs):
    """Jobs.live: the page being read, its answer's tail and tokens as the engine streams them, without a database
    write per token; gone once the job has ended."""
    engine = FakeEngine(gate=threading.Event())
    engine.stream = [("H" * n, n) for n in range(1, 3001)]  # 3000 tokens, one character each
    jobs = make_jobs(engine)
    job = jobs.submit(pdf(3), "long.pdf", Request.make("doc"))
    assert engine.started.wait(10)
    writes = jobs._db.total_changes
    live = _wait_for_value(lambda: (jobs.live(job.id) or {}).get("tokens") == 3000 and jobs.live(job.id))
    assert jobs._db.total_changes == writes  # 3000 tokens, no write
    assert live == {
        "page": 1,
        "text": "H" * pace.TAIL_CHARS,
        "chars": 3000,
        "tokens": 3000,
        "seconds_left": None,  # 3000 tokens is more than a usual page of Markdown: no number
        "longer_than_usual": True,
    }
    engine.gate.set()
    assert jobs.wait(job.id, 10).state == "done"
    assert jobs.live(job.id) is None


class SlowFirstPage(FakeEngine):
    """Page 1 takes PAGE_SECONDS; page 2 writes one token and waits for `hold`."""

    PAGE_SECONDS = 3.0

    def __init__(self):
        super().__init__()
        self.hold, self.on_page_2 = threading.Event(), threading.Event()

    def recognize(self, image, request, on_text=None):
        if self.calls == 0:
            time.sleep(self.PAGE_SECONDS)
        elif self.calls == 1:
            on_text("# Ti", 1)
            self.on_page_2.set()
            assert self.hold.wait(30)
        return super().recognize(image, request, on_text)


def test_time_left_counts_the_pages_this_job_already_read(make_jobs):
    engine = SlowFirstPage()
    jobs = make_jobs(engine)
    job = jobs.submit(pdf(3), "long.pdf", Request.make("doc"))
    assert engine.on_page_2.wait(20)
    live = jobs.live(job.id)
    # page 2 of 3, before any decode rate: its PAGE_SECONDS minus the moment it has run, then one more page
    assert live["page"] == 2 and not live["longer_than_usual"]
    assert 2 * SlowFirstPage.PAGE_SECONDS - 1 <= live["seconds_left"] <= 2 * SlowFirstPage.PAGE_SECONDS
    engine.hold.set()
    assert jobs.wait(job.id, 30).state == "done"


def _wait_for_value(get, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (value := get()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_identical_request_is_served_from_cache(make_jobs, tmp_path):
    engine = FakeEngine()
    jobs = make_jobs(engine)
    first = jobs.wait(jobs.submit(png(), "a.png", SPOT).id, timeout=10)
    again = jobs.submit(png(), "copy.png", SPOT)  # same bytes, other name: still the same work
    assert again.state == "done" and again.cached and again.cache_key == first.cache_key
    assert engine.calls == 1
    # Another task, other options, other bytes: computed again.
    jobs.wait(jobs.submit(png(), "a.png", Request.make("text")).id, timeout=10)
    jobs.wait(jobs.submit(png(), "a.png", Request.make("extract", fields="a,b")).id, timeout=10)
    jobs.wait(jobs.submit(png(), "a.png", Request.make("extract", fields="a,c")).id, timeout=10)
    jobs.wait(jobs.submit(png(color="gray"), "b.png", SPOT).id, timeout=10)
    assert engine.calls == 5
    jobs.close()
    # A new model revision over the same data directory does not reuse the old result.
    newer = FakeEngine(revision="r2")
    jobs2 = make_jobs(newer, data_dir=tmp_path / "data")
    job = jobs2.wait(jobs2.submit(png(), "a.png", SPOT).id, timeout=10)
    assert not job.cached and newer.calls == 1


def test_unreadable_input_is_refused_before_anything_is_stored(make_jobs, tmp_path):
    jobs = make_jobs()
    with pytest.raises(InputError, match="broken.png"):
        jobs.submit(png()[:40], "broken.png", SPOT)
    assert jobs.list() == [] and not any((tmp_path / "data" / "inputs").iterdir())


def test_task_the_engine_cannot_do_is_refused(make_jobs):
    jobs = make_jobs(FakeEngine(tasks={Task.SPOTTING, Task.TEXT}))
    with pytest.raises(TaskNotSupported, match="HunyuanOCR model"):
        jobs.submit(png(), "a.png", Request.make("doc"))


def test_queue_full_says_when_to_retry(make_jobs):
    gate = threading.Event()
    gate.set()
    engine = FakeEngine(gate=gate)
    jobs = make_jobs(engine, max_queue=2)
    earlier = jobs.wait(jobs.submit(png(color="white"), "w.png", SPOT).id, timeout=10)
    gate.clear()
    engine.started.clear()
    running = jobs.submit(png(color="red"), "r.png", SPOT)
    assert engine.started.wait(10)
    waiting = [jobs.submit(png(color=c), f"{c}.png", SPOT) for c in ("green", "blue")]
    assert [jobs.position(j.id) for j in waiting] == [1, 2]
    with pytest.raises(QueueFull) as caught:
        jobs.submit(png(color="black"), "k.png", SPOT)
    assert caught.value.retry_after >= 1 and "full" in str(caught.value)
    # A result already in the cache needs no place in the queue, so it is answered even now.
    assert jobs.submit(png(color="white"), "w.png", SPOT).cache_key == earlier.cache_key
    gate.set()
    for job in [running, *waiting]:
        assert jobs.wait(job.id, timeout=10).state == "done"


def test_cancel_queued_and_running(make_jobs, tmp_path):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    jobs = make_jobs(engine)
    running = jobs.submit(pdf(3), "long.pdf", SPOT)
    queued = jobs.submit(png(), "next.png", SPOT)
    assert engine.started.wait(10)
    assert jobs.cancel(queued.id).state == "cancelled"
    jobs.cancel(running.id)
    assert jobs.cancelling(running.id) and jobs.get(running.id).state == "running"  # says so at once
    gate.set()
    job = jobs.wait(running.id, timeout=10)
    assert job.state == "cancelled" and job.pages_done == 1  # stopped before the second page
    assert engine.calls == 1 and not jobs.cancelling(running.id)
    # The page it read is kept as a partial result, never as the cached result of the whole file.
    assert job.has_result and "1 of 3 pages" in job.error
    partial = jobs.result(running.id)
    assert [page.number for page in partial.pages] == [1] and partial.pages[0].text.startswith("HELLO ")
    assert [p.name for p in (tmp_path / "data" / "results").iterdir()] == [f"{job.cache_key}.json"]
    again = jobs.wait(jobs.submit(pdf(3), "long again.pdf", SPOT).id, timeout=10)
    assert (again.state, again.cached, len(jobs.result(again.id).pages)) == ("done", False, 3)
    with pytest.raises(LookupError, match="cancelled"):
        jobs.result(queued.id)  # cancelled before it started: nothing to show


def test_delete_removes_files_no_other_job_uses(make_jobs, tmp_path):
    jobs = make_jobs()
    a = jobs.wait(jobs.submit(png(), "a.png", SPOT).id, timeout=10)
    b = jobs.submit(png(), "b.png", SPOT)  # cached: shares a's input and result files
    data = tmp_path / "data"
    jobs.delete(a.id)
    with pytest.raises(JobNotFound):
        jobs.get(a.id)
    assert (data / "inputs" / a.sha256).exists() and (data / "results" / f"{a.cache_key}.json").exists()
    jobs.delete(b.id)
    assert not any((data / "inputs").iterdir()) and not any((data / "results").iterdir())
    assert jobs.list() == []


def test_list_is_newest_first_with_counts(make_jobs):
    jobs = make_jobs()
    ids = [jobs.wait(jobs.submit(png(color=c), f"{c}.png", SPOT).id, 10).id for c in ("red", "green", "blue")]
    assert [j.id for j in jobs.list()] == ids[::-1]
    assert jobs.counts() == {"done": 3}


def test_engine_that_cannot_start_fails_jobs_with_its_reason(tmp_path):
    def broken(report):
        raise EngineUnavailable("hunyuan-vllm", "no NVIDIA GPU")

    jobs = Jobs(tmp_path / "data", broken)
    try:
        status = jobs.wait_engine(10)
        assert status["state"] == "failed" and "no NVIDIA GPU" in status["error"]
        with pytest.raises(EngineUnavailable, match="no NVIDIA GPU"):
            jobs.submit(png(), "a.png", SPOT)
    finally:
        jobs.close()


def test_engine_loading_reports_progress_words(tmp_path):
    """An opener that takes `progress` says what it does; engine_status() carries it (and extras) while loading."""
    gate, reported = threading.Event(), threading.Event()

    def slow(progress):
        progress("loading the model: 3 of 8 files", percent=37)
        reported.set()
        assert gate.wait(10)
        return FakeEngine()

    jobs = Jobs(tmp_path / "data", slow)
    try:
        assert reported.wait(10)
        status = jobs.engine_status()
        assert status["state"] == "loading" and status["progress"] == "loading the model: 3 of 8 files"
        assert status["percent"] == 37 and status["since"] > 0
        gate.set()
        status = jobs.wait_engine(10)
        assert status["state"] == "ready" and status["progress"] is None and "percent" not in status
    finally:
        gate.set()
        jobs.close()


def test_close_keeps_queued_jobs_for_the_next_start(make_jobs, tmp_path):
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    jobs = make_jobs(engine)
    first = jobs.submit(png(color="red"), "r.png", SPOT)
    second = jobs.submit(png(color="blue"), "b.png", SPOT)
    assert engine.started.wait(10)
    threading.Timer(0.2, gate.set).start()  # the page in progress finishes, then the worker stops
    jobs.close()
    again = make_jobs(FakeEngine(), data_dir=tmp_path / "data")
    for job in (first, second):
        assert again.wait(job.id, timeout=10).state == "done"


# ---- a real crash: kill -9 while a job runs, then start again ----------------------------------------------------

CRASHING_SERVICE = """
import io, sys, threading, time
from PIL import Image
from fake_engine import FakeEngine, page_image
from appliance.jobs import Jobs
from appliance.ocr.tasks import Request

engine = FakeEngine(gate=threading.Event())  # never opened: the job is running when we are killed
jobs = Jobs(sys.argv[1], lambda report: engine)
jobs.wait_engine(10)
if sys.argv[2] == "submit":
    for color in ("red", "blue"):
        buf = io.BytesIO(); page_image((40, 20), color).save(buf, format="PNG")
        jobs.submit(buf.getvalue(), color + ".png", Request.make("spotting"))
engine.started.wait(10)
print("RUNNING", flush=True)
time.sleep(60)
"""


def crash_once(data_dir: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVICE, str(data_dir), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def rows(data_dir: Path) -> dict:
    with sqlite3.connect(data_dir / "jobs.sqlite") as db:
        return {
            name: (state, retries) for name, state, retries in db.execute("SELECT name, state, retries FROM jobs")
        }


def test_restart_after_kill_resumes_queued_and_retries_interrupted(make_jobs, tmp_path):
    data = tmp_path / "data"
    crash_once(data, "submit")
    assert rows(data) == {"red.png": ("running", 0), "blue.png": ("queued", 0)}
    jobs = make_jobs(FakeEngine(), data_dir=data)
    done = {job.name: jobs.wait(job.id, timeout=10) for job in jobs.list()}
    assert {name: (j.state, j.retries) for name, j in done.items()} == {
        "red.png": ("done", 1),
        "blue.png": ("done", 0),
    }
    assert jobs.result(done["red.png"].id).text == "HELLO 40x20"


# A poison file: the engine dies (a native crash, as a decoder or onnxruntime can) on any page whose first pixel is
# red. The service runs until its queue is empty; the test restarts it after each death, as systemd does.
POISONED_SERVICE = """
import io, os, sys, threading, time
from PIL import Image
from fake_engine import FakeEngine, page_image
from appliance.jobs import Jobs
from appliance.ocr.tasks import Request

class PoisonedEngine(FakeEngine):
    def recognize(self, image, request, on_text=None):
        color = {(255, 0, 0): "red", (0, 0, 255): "blue", (0, 128, 0): "green"}[image.getpixel((0, 0))]
        with open(sys.argv[2], "a") as ran:
            ran.write(color + "\\n")
        if color == "red":
            os.abort()
        return super().recognize(image, request, on_text)

submitted = threading.Event()  # the engine opens once all three are queued
jobs = Jobs(sys.argv[1], lambda report: submitted.wait(10) and PoisonedEngine())
if sys.argv[3] == "submit":
    for color in ("red", "blue", "green"):
        buf = io.BytesIO(); page_image((40, 20), color).save(buf, format="PNG")
        jobs.submit(buf.getvalue(), color + ".png", Request.make("spotting"))
submitted.set()
while any(job.state in ("queued", "running") for job in jobs.list()):
    time.sleep(0.05)
jobs.close()
"""


def test_a_file_that_keeps_killing_the_service_is_set_aside_after_the_others(make_jobs, tmp_path):
    data, ran = tmp_path / "data", tmp_path / "ran.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    deaths = 0
    for run in range(MAX_RETRIES + 3):
        mode = "submit" if run == 0 else "resume"
        service = subprocess.run(
            [sys.executable, "-c", POISONED_SERVICE, str(data), str(ran), mode], env=env, timeout=60
        )
        if service.returncode == 0:
            break
        assert service.returncode == -signal.SIGABRT
        deaths += 1
    assert deaths == MAX_RETRIES + 1  # then it was set aside and the service ran to an empty queue
    # Its first retry resumes in place (a power cut is nobody's fault); after that the others have their turn.
    assert ran.read_text().split() == ["red", "red", "blue", "green", "red"]
    jobs = make_jobs(FakeEngine(), data_dir=data)
    states = {job.name: (job.state, job.error_kind) for job in jobs.list()}
    assert states == {"red.png": ("failed", "Crashed"), "blue.png": ("done", None), "green.png": ("done", None)}
    red = next(job for job in jobs.list() if job.name == "red.png")
    assert f"stopped the OCR service {MAX_RETRIES + 1} times" in red.error
    assert jobs.input_path(red.id).read_bytes()[:4] == b"\x89PNG"  # kept for inspection


class LosingEngine(FakeEngine):
    """Loses its model server on the pages `loses(image)` picks, as VllmEngine does when vLLM crashes mid-answer."""

    def __init__(self, loses):
        super().__init__()
        self.loses = loses

    def recognize(self, image, request, on_text=None):
        if self.loses(image):
            raise EngineLost("hunyuan-vllm", "lost the vLLM server at http://127.0.0.1:8001/v1: Connection reset")
        return super().recognize(image, request, on_text)


def opener_of(*engines):
    """An opener handing out these engines in turn, as open_engine would after each restart of the server."""
    handed = iter(engines)
    calls = []

    def open_engine(report):
        calls.append(report)
        return next(handed)

    return open_engine, calls


def test_lost_engine_is_opened_again_and_the_interrupted_job_runs_first(tmp_path):
    crashing, restarted = LosingEngine(lambda image: True), FakeEngine()
    opener, calls = opener_of(crashing, restarted)
    jobs = Jobs(tmp_path / "data", opener)
    try:
        assert jobs.wait_engine(10)["ready"]
        first = jobs.submit(png(color="red"), "red.png", SPOT)
        second = jobs.submit(png(color="blue"), "blue.png", SPOT)
        first, second = jobs.wait(first.id, 10), jobs.wait(second.id, 10)
        assert (first.state, first.retries, second.state, second.retries) == ("done", 1, "done", 0)
        assert first.finished <= second.started  # the interrupted job went back to the head of the queue
        assert len(calls) == 2 and crashing.closed and jobs.engine_status()["ready"]
        assert jobs.result(first.id).text == "HELLO 64x32"
    finally:
        jobs.close()


def test_a_job_that_keeps_losing_the_engine_is_given_up_and_the_rest_run(tmp_path):
    def loses_on_red(image):
        return image.getpixel((0, 0)) == (255, 0, 0)

    engines = [LosingEngine(loses_on_red) for _ in range(MAX_RETRIES + 2)]
    opener, calls = opener_of(*engines)
    jobs = Jobs(tmp_path / "data", opener)
    try:
        red = jobs.submit(png(color="red"), "red.png", SPOT)
        blue = jobs.submit(png(color="blue"), "blue.png", SPOT)
        red, blue = jobs.wait(red.id, 10), jobs.wait(blue.id, 10)
        assert red.state == "failed" and red.error_kind == "EngineUnavailable"
        assert f"stopped answering on this file {MAX_RETRIES + 1} times" in red.error
        assert blue.state == "done" and len(calls) == MAX_RETRIES + 2
    finally:
        jobs.close()


def test_engine_that_cannot_be_opened_again_fails_the_queue_with_its_reason(tmp_path):
    opened = []

    def opener(report):
        if opened:
            raise EngineUnavailable("hunyuan-vllm", "the model server did not come back")
        opened.append(1)
        return LosingEngine(lambda image: True)

    jobs = Jobs(tmp_path / "data", opener)
    try:
        job = jobs.wait(jobs.submit(png(), "a.png", SPOT).id, 10)
        assert job.state == "failed" and "did not come back" in job.error
        assert jobs.engine_status()["state"] == "failed"
    finally:
        jobs.close()


def test_drop_input_keeps_the_result_and_spares_a_waiting_job(tmp_path):
    """A finished job's input goes, its result stays (the cache answers the same bytes at once); bytes that a
    waiting job still needs stay."""
    engine = FakeEngine()
    jobs = Jobs(tmp_path, lambda report: engine)
    try:
        first = jobs.wait(jobs.submit(png(), "a.png", Request.make("text")).id, timeout=10)
        engine.gate, engine.started = threading.Event(), threading.Event()
        jobs.submit(png(color="black"), "blocker.png", Request.make("text"))
        assert engine.started.wait(10)  # the worker is busy: the next job waits
        second = jobs.submit(png(), "a again.png", Request.make("spotting"))  # the same bytes, not cached
        jobs.drop_input(first.id)
        assert jobs.input_path(first.id).exists()  # the waiting job needs them
        engine.gate.set()
        assert jobs.wait(second.id, timeout=10).state == "done"
        jobs.drop_input(second.id)
        assert not jobs.input_path(first.id).exists()
        third = jobs.submit(png(), "a third time.png", Request.make("text"))
        assert (third.state, third.cached, engine.calls) == ("done", True, 3)
    finally:
        if engine.gate:
            engine.gate.set()
        jobs.close()


def test_history_is_pruned_by_age_and_count_and_files_go_with_it(make_jobs, tmp_path):
    jobs = make_jobs()
    done = [jobs.wait(jobs.submit(png(color=c), f"{c}.png", SPOT).id, timeout=10) for c in ("red", "green", "blue")]
    again = jobs.wait(jobs.submit(png(color="blue"), "blue again.png", SPOT).id, timeout=10)
    assert again.cached and jobs.result(again.id).source == "blue again.png"  # its own name, not the first's
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET finished=finished-40*86400 WHERE name='red.png'")
    assert jobs.prune() == 1  # older than 30 days
    assert {j.name for j in jobs.list()} == {"green.png", "blue.png", "blue again.png"}
    assert not (tmp_path / "data" / "inputs" / done[0].sha256).exists()
    assert not (tmp_path / "data" / "results" / f"{done[0].cache_key}.json").exists()
    assert jobs.prune(keep_jobs=1) == 2  # only the newest stays; the blue result it shares stays with it
    assert [j.name for j in jobs.list()] == ["blue again.png"]
    assert jobs.result(again.id).pages[0].text.startswith("HELLO")
