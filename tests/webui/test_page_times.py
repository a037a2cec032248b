"""The start page's task cards with HunyuanOCR on the CPU: no "needs the HunyuanOCR model", and how long a page
takes on this PC (the engine's warm-up estimate, then this PC's finished pages), in the page's language."""

from __future__ import annotations

import time

import pytest
from fake_engine import FakeEngine, page_image

from appliance.jobs import Jobs
from appliance.ocr.result import EngineInfo
from appliance.ocr.tasks import Request, Task
from webui import create_app

EN, ZH = {"Accept-Language": "en"}, {"Accept-Language": "zh"}


def card(html: str, task: str) -> str:
    return html.split(f'value="{task}"', 1)[1].split("</label>", 1)[0]


class SlowEngine(FakeEngine):
    """A page takes 1.2 s: long enough to be measured."""

    def recognize(self, image, request, on_text=None):
        time.sleep(1.2)
        return super().recognize(image, request, on_text)


@pytest.fixture
def llama_like(tmp_path):
    """An app whose engine does every task and says its pages take 75 s (doc) and 130 s (table) here."""
    engine = SlowEngine()
    engine.info = EngineInfo("hunyuan-llamacpp", "tencent/HunyuanOCR")
    engine.page_seconds = {"doc": 75.0, "table": 130.0}
    jobs = Jobs(tmp_path / "data", lambda report: engine)
    assert jobs.wait_engine(20)["ready"]
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "auto", "JOBS": jobs, "TESTING": True})
    yield app, jobs, tmp_path
    jobs.close(timeout=5)


def test_cards_say_the_time_a_page_takes_here(llama_like):
    app, jobs, tmp_path = llama_like
    client = app.test_client()
    html = client.get("/", headers=EN).get_data(as_text=True)
    assert "needs the HunyuanOCR model" not in html
    assert 'id="page-time-doc">about 75 s a page on this PC</small>' in card(html, "doc")
    assert 'id="page-time-table">about 2.2 min a page on this PC</small>' in card(html, "table")
    assert "page-time" not in card(html, "formula")  # no figure yet: only the task's hint
    assert "本机每页预计约 75 秒" in client.get("/", headers=ZH).get_data(as_text=True)
    # a finished page replaces the estimate by what it took
    image = tmp_path / "page.png"
    page_image((64, 64)).save(image)  # with ink: a blank page is not sent to the engine
    job = jobs.submit(image, "page.png", Request.make(Task.DOC))
    assert jobs.wait(job.id, 20).state == "done"
    html = client.get("/", headers=EN).get_data(as_text=True)
    assert 'id="page-time-doc">1 s a page on this PC</small>' in card(html, "doc")


def test_without_the_model_the_cards_still_say_what_is_missing(tmp_path):
    jobs = Jobs(tmp_path / "data", lambda report: FakeEngine(tasks={Task.SPOTTING, Task.TEXT}))
    try:
        assert jobs.wait_engine(20)["ready"]
        app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True})
        html = app.test_client().get("/", headers=EN).get_data(as_text=True)
        assert "needs the HunyuanOCR model" in card(html, "doc") and "page-time" not in html
    finally:
        jobs.close(timeout=5)
