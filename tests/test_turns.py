"""Fair turns (appliance.jobs): the per-job page limit, a long job letting waiting jobs go first and going on from
its next page, with the same result as a run without breaks."""

from __future__ import annotations

import io
import math
import threading

import pytest
from fake_engine import FakeEngine, page_image
from PIL import Image, ImageDraw, ImageFont

from appliance.jobs import PageLimit
from appliance.ocr.images import PDF_DPI
from appliance.ocr.pipeline import TurnOver, recognize_file
from appliance.ocr.tasks import Request

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SPOT = Request.make("spotting")
TEXT = Request.make("text")


def text_pdf(*lines: str) -> bytes:
    pages = []
    for line in lines:
        image = Image.new("RGB", (800, 200), "white")
        ImageDraw.Draw(image).text((40, 60), line, fill="black", font=ImageFont.truetype(FONT, 48))
        pages.append(image)
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=100)
    return buf.getvalue()


def sized_pdf(widths) -> bytes:
    """One page per width: the fake engine's answer names each page's size, so the order of pages shows."""
    pages = [page_image((w, 140)) for w in widths]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buf.getvalue()


def px(width_pt: int) -> int:
    """A sized_pdf page's width as rendered for the engine."""
    return math.ceil(width_pt * PDF_DPI / 72)


def png(width=64) -> bytes:
    buf = io.BytesIO()
    page_image((width, 32)).save(buf, format="PNG")
    return buf.getvalue()


def same(result) -> dict:
    """A result without its timings, which differ between any two runs."""
    body = result.to_dict()
    body.pop("timings")
    for page in body["pages"]:
        page.pop("seconds")
    return body


@pytest.fixture(scope="module")
def cpu_engine():
    from appliance.ocr.engines.cpu import CpuEngine

    engine = CpuEngine()
    yield engine
    engine.close()


def test_pipeline_goes_on_from_the_next_page_and_ends_with_the_same_result(cpu_engine):
    data = text_pdf("First page 111", "Second page 222", "Third page 333")
    whole = recognize_file(cpu_engine, data, TEXT, name="three.pdf")
    earlier, turns = None, 0
    while True:
        try:
            result = recognize_file(cpu_engine, data, TEXT, name="three.pdf", earlier=earlier, turn_over=lambda: True)
            break
        except TurnOver as turn:
            earlier, turns = turn.partial, turns + 1
            assert [p.number for p in earlier.pages] == list(range(1, turns + 1))  # one page a turn, none twice
    assert turns == 2
    assert same(result) == same(whole) and "Third page 333" in result.text
    assert result.timings["ocr"] >= earlier.timings["ocr"]  # the turns' times add up


def test_a_file_over_the_page_limit_is_refused_at_submission(make_jobs, tmp_path):
    jobs = make_jobs(FakeEngine(), max_pages=2)
    with pytest.raises(PageLimit) as refused:
        jobs.submit(sized_pdf([100, 110, 120]), "three.pdf", SPOT)
    assert "3 pages" in str(refused.value) and "at most 2 pages" in str(refused.value)
    assert (refused.value.pages, refused.value.limit) == (3, 2)
    assert not list((tmp_path / "data" / "inputs").iterdir()) and jobs.list() == []
    assert jobs.wait(jobs.submit(sized_pdf([100, 110]), "two.pdf", SPOT).id, timeout=10).state == "done"


class RecordingEngine(FakeEngine):
    """The fake engine, also noting each page's width and calling `on_page` (the test's look at the queue)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.widths: list[int] = []
        self.on_page = lambda image: None

    def recognize(self, image, request, on_text=None):
        page = super().recognize(image, request, on_text)
        self.widths.append(image.width)
        self.on_page(image)
        return page


def test_a_long_job_lets_a_waiting_job_go_first_and_goes_on_where_it_was(make_jobs, tmp_path):
    gate = threading.Event()
    engine = RecordingEngine(gate=gate)
    jobs = make_jobs(engine, turn_seconds=0)
    long = jobs.submit(sized_pdf([100, 110, 120, 130]), "long.pdf", SPOT)
    assert engine.started.wait(10)  # its first page is being read
    short = jobs.submit(png(64), "short.png", SPOT)
    seen = {}
    engine.on_page = lambda image: seen.setdefault(image.width, jobs.get(long.id))
    gate.set()
    assert jobs.wait(long.id, timeout=20).state == "done" and jobs.get(short.id).state == "done"
    # The waiting job went between the long job's first and second pages; no page was read twice.
    assert engine.widths == [px(100), 64, px(110), px(120), px(130)]
    waiting = seen[64]  # the long job while the short one was read
    assert (waiting.state, waiting.pages_done, waiting.error_code) == ("queued", 1, "job_took_turn")
    assert waiting.error_params == {"done": 1, "next": 2} and "after page 1" in waiting.error
    assert jobs.get(short.id).finished < jobs.get(long.id).finished
    # The result is the one a run without breaks gives; the pages waiting between turns are gone.
    alone = make_jobs(FakeEngine(), data_dir=tmp_path / "alone")
    uninterrupted = alone.wait(alone.submit(sized_pdf([100, 110, 120, 130]), "long.pdf", SPOT).id, timeout=10)
    assert same(jobs.result(long.id)) == same(alone.result(uninterrupted.id))
    assert not list(jobs.results.glob("*.turn.json"))
    assert jobs.get(long.id).error is None and jobs.get(long.id).error_code is None


def test_a_job_cancelled_between_turns_keeps_the_pages_it_read(make_jobs):
    gate = threading.Event()
    engine = RecordingEngine(gate=gate)
    jobs = make_jobs(engine, turn_seconds=0)
    long = jobs.submit(sized_pdf([100, 110, 120]), "long.pdf", SPOT)
    assert engine.started.wait(10)
    jobs.submit(png(64), "short.png", SPOT)
    engine.on_page = lambda image: image.width == 64 and jobs.cancel(long.id)  # while it waits for its next turn
    gate.set()
    job = jobs.wait(long.id, timeout=10)
    assert (job.state, job.error_code, job.error_params) == (
        "cancelled",
        "job_cancelled_after",
        {"done": 1, "total": 3},
    )
    assert job.has_result and [p.number for p in jobs.result(long.id).pages] == [1]
    assert engine.widths == [px(100), 64]
    assert not list(jobs.results.glob("*.turn.json"))


def test_a_job_stopped_by_a_shutdown_goes_on_from_its_next_page_after_the_restart(make_jobs, tmp_path):
    gate = threading.Event()
    engine = RecordingEngine(gate=gate)
    jobs = make_jobs(engine)
    long = jobs.submit(sized_pdf([100, 110, 120]), "long.pdf", SPOT)
    assert engine.started.wait(10)
    threading.Timer(0.5, gate.set).start()  # the page being read ends while the service stops
    jobs.close(timeout=10)
    assert engine.widths == [px(100)]
    again = RecordingEngine()
    jobs = make_jobs(again)
    job = jobs.wait(long.id, timeout=10)
    assert job.state == "done" and again.widths == [px(110), px(120)]  # page 1 was not read again
    alone = make_jobs(FakeEngine(), data_dir=tmp_path / "alone")
    uninterrupted = alone.wait(alone.submit(sized_pdf([100, 110, 120]), "long.pdf", SPOT).id, timeout=10)
    assert same(jobs.result(long.id)) == same(alone.result(uninterrupted.id))


def test_the_real_engine_gives_the_same_result_with_turns_as_without(make_jobs, cpu_engine):
    data = text_pdf("Alpha page 101", "Beta page 202", "Gamma page 303")
    jobs = make_jobs(cpu_engine, turn_seconds=0)
    long = jobs.submit(data, "long.pdf", TEXT)
    short = jobs.submit(png(200), "short.png", TEXT)  # waiting while the long job reads its first page
    long_job, short_job = jobs.wait(long.id, timeout=120), jobs.wait(short.id, timeout=120)
    assert long_job.state == short_job.state == "done"
    assert short_job.finished < long_job.finished  # it did not wait for the whole long file
    assert same(jobs.result(long.id)) == same(recognize_file(cpu_engine, data, TEXT, name="long.pdf"))
