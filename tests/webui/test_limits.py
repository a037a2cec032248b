"""Fair turns in the web app (issue 14 item 3): the page limit and the turns are said on the pages, in GET /health
and the API's errors; a job waiting between turns says so on its page. Server messages in the UI's language (item 9)
for the errors the limits give."""

from __future__ import annotations

import io
import threading

import pytest
from conftest import csrf
from fake_engine import FakeEngine, page_image

from appliance.jobs import Jobs
from webui import close_app, create_app

ZH = {"Accept-Language": "zh"}
EN = {"Accept-Language": "en"}


def pdf(pages: int) -> bytes:
    images = [page_image((100, 140)) for _ in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buf.getvalue()


@pytest.fixture
def gate():
    gate = threading.Event()
    yield gate
    gate.set()


@pytest.fixture
def engine(gate):
    return FakeEngine(gate=gate)


@pytest.fixture
def limited(tmp_path, engine):
    """The app over a queue of at most 3 pages a job, whose jobs take turns after every page when others wait."""
    jobs = Jobs(tmp_path / "data", lambda report: engine, max_pages=3, turn_seconds=0)
    assert jobs.wait_engine(10)["ready"]
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True})
    yield app
    close_app(app, timeout=5)


@pytest.fixture
def client(limited):
    return limited.test_client()


def test_the_limits_are_said_on_the_pages_and_in_health(client, gate):
    gate.set()
    assert "One file may have up to 3 pages" in client.get("/", headers=EN).get_data(as_text=True)
    assert "每个文件最多 3 页" in client.get("/status", headers=ZH).get_data(as_text=True)
    queue = client.get("/health").get_json()["queue"]
    assert (queue["max_pages"], queue["turn_seconds"]) == (3, 0)
    docs = client.get("/openapi.json").get_json()
    assert (
        "Fair turns" in docs["info"]["description"]
        and "too many pages" in docs["paths"]["/jobs"]["post"]["responses"]["413"]["description"]
    )


def test_a_file_over_the_page_limit_is_refused_in_the_api_and_in_chinese_on_the_form(client, gate):
    gate.set()
    response = client.post("/jobs", data={"file": (io.BytesIO(pdf(4)), "four.pdf")})
    body = response.get_json()
    assert response.status_code == 413 and body["error"] == "too many pages"
    assert "4 pages; one job may have at most 3 pages" in body["detail"]
    assert body["message"]["code"] == "input" and body["message"]["params"]["reason"]["code"] == "job_page_limit"
    page = client.post(
        "/upload",
        data={"csrf_token": csrf(client), "task": "text", "file": (io.BytesIO(pdf(4)), "four.pdf")},
        content_type="multipart/form-data",
        headers=ZH,
    )
    assert page.status_code == 413 and "four.pdf：共 4 页；每个任务最多 3 页" in page.get_data(as_text=True)
    assert client.post("/jobs", data={"file": (io.BytesIO(pdf(3)), "three.pdf")}).status_code == 202


def test_a_job_waiting_between_its_turns_says_so_on_its_page(client, engine, gate, limited):
    jobs = limited.extensions["backend"].jobs
    long = client.post("/jobs", data={"file": (io.BytesIO(pdf(3)), "long.pdf")}).get_json()
    assert engine.started.wait(10)
    client.post("/jobs", data={"file": (io.BytesIO(page_png()), "short.png")})
    seen = {}

    def look(image, request, on_text=None, recognize=engine.recognize):  # the short job: the long job's page
        if image.width == 64 and not seen:
            seen["job"] = client.get(f"/jobs/{long['id']}").get_json()
            seen["zh"] = client.get(f"/job/{long['id']}", headers=ZH).get_data(as_text=True)
            seen["en"] = client.get(f"/job/{long['id']}", headers=EN).get_data(as_text=True)
        return recognize(image, request, on_text)

    engine.recognize = look
    gate.set()
    assert jobs.wait(long["id"], timeout=10).state == "done"
    job = seen["job"]
    assert (job["state"], job["pages_done"], job["error_code"]) == ("queued", 1, "job_took_turn")
    assert job["error_params"] == {"done": 1, "next": 2} and job["position"] == 1
    assert 'id="turn-note" hidden' not in seen["en"] and "Waiting: other jobs take a turn. 1 of 3 pages" in seen["en"]
    assert "等待中：其他任务正在轮流处理。已识别 1 / 3 页" in seen["zh"]


def page_png() -> bytes:
    buf = io.BytesIO()
    page_image((64, 32)).save(buf, format="PNG")
    return buf.getvalue()


def test_form_errors_are_said_in_chinese(client, gate):
    gate.set()
    token = csrf(client)

    def upload(**fields):
        form = {"csrf_token": token, "file": (io.BytesIO(page_png()), "a.png"), **fields}
        return client.post("/upload", data=form, content_type="multipart/form-data", headers=ZH)

    no_fields = upload(task="extract")
    assert no_fields.status_code == 400 and "字段提取任务需要字段名" in no_fields.get_data(as_text=True)
    empty = client.post(
        "/upload",
        data={"csrf_token": token, "file": (io.BytesIO(b""), "empty.png")},
        content_type="multipart/form-data",
        headers=ZH,
    )
    assert empty.status_code == 400 and "empty.png：文件是空的" in empty.get_data(as_text=True)
    gone = client.post("/upload", data={"csrf_token": token, "usb_path": "STICK/gone.png"}, headers=ZH)
    assert gone.status_code == 400 and "“STICK/gone.png”已不存在；U 盘是否已拔出？" in gone.get_data(as_text=True)


def test_an_error_page_is_said_in_chinese(client, gate):
    gate.set()
    page = client.get("/job/nosuchjob", headers=ZH)
    html = page.get_data(as_text=True)
    assert page.status_code == 404 and "404 未找到" in html and "没有任务“nosuchjob”（可能已被删除）" in html
    api = client.get("/jobs/nosuchjob").get_json()
    assert api["detail"] == "no job 'nosuchjob' (it may have been deleted)" and api["error"] == "not found"


def test_every_error_code_has_a_headline_in_both_languages():
    from webui.errors import STATUSES
    from webui.i18n import MESSAGES

    for _, _, code in STATUSES:
        english, chinese = MESSAGES["error_" + code.replace(" ", "_")]
        assert english == code and chinese != code
