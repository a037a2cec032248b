"""The HTTP API with Flask's test client: both article request shapes, async jobs, every error, health, OpenAPI."""

from __future__ import annotations

import base64
import io
import re
import threading

import pytest
from conftest import image_bytes
from fake_engine import FakeEngine
from PIL import Image

from appliance.messages import Text
from appliance.ocr.tasks import Task


@pytest.fixture
def gate():
    """Open by default; a test closes it to hold a job in "running"."""
    event = threading.Event()
    event.set()
    return event


@pytest.fixture
def engine(gate):
    return FakeEngine(gate=gate)


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    # `message` (the detail's id and values) and `text` (its words in the UI's language) come where the detail has
    # an id; the client here asks in no language, so `text` is the English detail.
    assert set(body) - {"message", "text"} == {"error", "detail"} and body["detail"]
    assert ("message" in body) == ("text" in body)
    if "message" in body:
        assert Text.from_dict(body["message"]) == body["detail"] == body["text"]
    for word in words:
        assert word.lower() in (body["error"] + " " + body["detail"]).lower()
    return body


def test_ocr_multipart_as_in_the_first_article(client, png_bytes):
    response = client.post("/ocr", data={"file": (io.BytesIO(png_bytes), "image.jpg", "image/jpeg")})
    assert response.status_code == 200
    result = response.get_json()
    assert result["text"] == "HELLO 120x60" and result["task"] == "spotting"
    assert result["pages"][0]["blocks"][0] == {"text": "HELLO 120x60", "box": [2, 3, 60, 30], "confidence": 0.9}
    assert result["schema"] == "appliance.ocr.result" and result["job_id"] and result["cached"] is False


def test_ocr_base64_json_as_in_the_second_article(client, png_bytes):
    payload = {"image": base64.b64encode(png_bytes).decode(), "task_type": "doc_parser"}
    response = client.post("/ocr", json=payload)
    assert response.status_code == 200
    result = response.get_json()
    assert result["task"] == "doc" and result["text"] == "HELLO 120x60" and result["markdown"].startswith("# Title")
    again = client.post("/ocr", json=payload).get_json()
    assert again["cached"] is True and again["text"] == result["text"]


def test_ocr_own_fields_extract_and_translate(client, png_bytes):
    extract = client.post(
        "/ocr", data={"file": (io.BytesIO(png_bytes), "card.png"), "task": "extract", "fields": "姓名, 出生"}
    ).get_json()
    assert extract["fields"] == {"姓名": "value of 姓名", "出生": "value of 出生"}
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
    translate = client.post("/ocr", json={"image": data_url, "task": "translate", "target_lang": "de"}).get_json()
    assert translate["translation"] == "[de] HELLO 120x60" and translate["options"] == {"target_lang": "de"}
    listed = client.post("/ocr", json={"image": data_url, "task": "extract", "fields": ["a", "b"]}).get_json()
    assert list(listed["fields"]) == ["a", "b"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"data": {}}, ["multipart form field 'file'"]),
        ({"json": ["not", "an", "object"]}, ["JSON object"]),
        ({"json": {"task": "text"}}, ['"image"']),
        ({"json": {"image": "%%% not base64 %%%"}}, ["base64"]),
        ({"json": {"image": "iVBO", "task": "poetry"}}, ["unknown task 'poetry'", "doc_parser"]),
        ({"json": {"image": "iVBO", "task": "extract"}}, ["needs field names"]),
        ({"json": {"image": "iVBO", "task": "translate", "target_lang": "xx"}}, ["unknown target language"]),
        ({"data": {"file": (io.BytesIO(b""), "empty.png")}}, ["empty"]),
    ],
)
def test_bad_requests_are_400_with_a_reason(client, kwargs, words):
    assert_error(client.post("/ocr", **kwargs), 400, *words)


def test_not_an_image_is_415(client):
    body = assert_error(
        client.post("/ocr", data={"file": (io.BytesIO(b"hello, plain text\n"), "notes.txt")}),
        415,
        "notes.txt",
        "text file",
        "PDF",
    )
    assert "JPEG" in body["detail"]


def test_image_broken_after_its_header_is_422_when_read(client):
    jpeg = image_bytes("JPEG", size=(400, 300), color="red")
    response = client.post("/ocr", data={"file": (io.BytesIO(jpeg[: len(jpeg) // 3]), "half.jpg")})
    assert_error(response, 422, "half.jpg", "truncated")


def test_corrupt_image_is_422(client, png_bytes):
    assert_error(
        client.post("/ocr", data={"file": (io.BytesIO(png_bytes[:50]), "cut.png")}),
        422,
        "cut.png",
        "corrupt or truncated",
    )
    assert_error(client.post("/jobs", data={"file": (io.BytesIO(b"%PDF-1.4 garbage"), "x.pdf")}), 422, "PDF")


@pytest.mark.parametrize("app_config", [{"MAX_CONTENT_LENGTH": 10_000}])
def test_over_size_limit_is_413(client):
    big = image_bytes("BMP", size=(200, 200))  # 120 KB
    assert_error(client.post("/ocr", data={"file": (io.BytesIO(big), "big.bmp")}), 413, "size limit")
    assert_error(client.post("/ocr", json={"image": base64.b64encode(big).decode()}), 413, "smaller file")


@pytest.mark.parametrize("app_config", [{"MAX_QUEUE": 1}])
def test_queue_full_is_503_with_retry_after(client, engine, gate):
    gate.clear()
    running = client.post("/jobs", data={"file": (io.BytesIO(image_bytes(color="red")), "a.png")})
    assert running.status_code == 202 and engine.started.wait(10)
    assert client.post("/jobs", data={"file": (io.BytesIO(image_bytes(color="blue")), "b.png")}).status_code == 202
    response = client.post("/ocr", data={"file": (io.BytesIO(image_bytes(color="green")), "c.png")})
    assert_error(response, 503, "queue is full", "try again")
    assert int(response.headers["Retry-After"]) >= 1
    gate.set()


def test_async_job_lifecycle(client, engine, gate):
    gate.set()
    created = client.post("/jobs", data={"file": (io.BytesIO(image_bytes()), "scan.png"), "task": "text"})
    assert created.status_code == 202
    job_id = created.get_json()["id"]
    assert created.headers["Location"] == f"/jobs/{job_id}"
    client.application.extensions["backend"].jobs.wait(job_id, timeout=10)
    status = client.get(f"/jobs/{job_id}").get_json()
    assert (status["state"], status["pages_done"], status["pages_total"]) == ("done", 1, 1)
    assert status["links"]["txt"] == f"/jobs/{job_id}/result?format=txt" and "cache_key" not in status

    as_json = client.get(status["links"]["json"])
    assert as_json.mimetype == "application/json" and as_json.get_json()["text"] == "HELLO 120x60"
    as_txt = client.get(f"/jobs/{job_id}/result?format=txt&download=1")
    assert as_txt.get_data(as_text=True) == "HELLO 120x60\n" and as_txt.mimetype == "text/plain"
    assert 'filename="scan.txt"' in as_txt.headers["Content-Disposition"]
    assert client.get(f"/jobs/{job_id}/result?format=md").get_data(as_text=True).strip() == "HELLO 120x60"
    pdf = client.get(f"/jobs/{job_id}/result?format=pdf")
    assert pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF")
    assert_error(client.get(f"/jobs/{job_id}/result?format=docx"), 400, "unknown format")

    page = client.get(f"/jobs/{job_id}/pages/1")
    assert page.mimetype == "image/jpeg" and Image.open(io.BytesIO(page.data)).size == (120, 60)
    assert_error(client.get(f"/jobs/{job_id}/pages/2"), 404, "no page 2")

    listed = client.get("/jobs").get_json()
    assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["counts"] == {"done": 1}

    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert_error(client.get(f"/jobs/{job_id}"), 404, job_id)
    assert_error(client.delete(f"/jobs/{job_id}"), 404)


def test_cancel_and_result_of_an_unfinished_job(client, engine, gate):
    gate.clear()
    first = client.post("/jobs", data={"file": (io.BytesIO(image_bytes(color="red")), "a.png")}).get_json()
    assert engine.started.wait(10)
    second = client.post("/jobs", data={"file": (io.BytesIO(image_bytes(color="blue")), "b.png")}).get_json()
    assert second["state"] == "queued" and second["position"] == 1
    assert_error(client.get(f"/jobs/{second['id']}/result"), 409, "queued")
    cancelled = client.post(f"/jobs/{second['id']}/cancel").get_json()
    assert cancelled["state"] == "cancelled"
    gate.set()
    assert client.application.extensions["backend"].jobs.wait(first["id"], 10).state == "done"


def test_a_running_job_shows_its_page_as_it_is_written(client, engine, gate):
    """GET /jobs/<id>'s `live` (the OpenAPI Job schema's), only while the job runs; no time figure is invented
    without anything measured."""
    gate.clear()
    engine.stream = [("Tit", 1), ("Title: a", 3)]
    job = client.post("/jobs", data={"file": (io.BytesIO(image_bytes()), "scan.png"), "task": "doc"}).get_json()
    assert "live" not in job or job["state"] == "running"
    assert engine.started.wait(10)
    live = client.get(f"/jobs/{job['id']}").get_json()["live"]
    assert live == {
        "page": 1,
        "text": "Title: a",
        "chars": 8,
        "tokens": 3,
        "seconds_left": None,
        "longer_than_usual": False,
    }
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["Job"]["properties"]["live"]
    assert set(schema["properties"]) == set(live)
    gate.set()
    client.application.extensions["backend"].jobs.wait(job["id"], timeout=10)
    assert "live" not in client.get(f"/jobs/{job['id']}").get_json()


@pytest.mark.parametrize("engine", [FakeEngine(tasks={Task.SPOTTING, Task.TEXT})])
def test_task_the_engine_cannot_do_is_400(client, png_bytes):
    body = assert_error(
        client.post("/ocr", json={"image": base64.b64encode(png_bytes).decode(), "task_type": "doc_parser"}),
        400,
        "HunyuanOCR model",
    )
    assert "spotting, text" in body["detail"]


def test_health_reports_web_and_engine_separately(client):
    health = client.get("/health").get_json()
    assert health["web"] == {"ready": True}
    assert health["engine"]["ready"] is True and health["engine"]["state"] == "ready"
    assert health["engine"]["info"]["name"] == "fake" and health["engine"]["reason"]
    assert health["queue"] == {"waiting": 0, "limit": 32, "max_pages": 300, "turn_seconds": 60.0}


def test_openapi_describes_every_api_route(client, app):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method.lower()) in documented, (path, method)
    for status in ("400", "413", "415", "422", "503"):
        assert status in spec["paths"]["/ocr"]["post"]["responses"]


@pytest.mark.parametrize("app_config", [{"LAN_TOKEN": "s3cret"}])
def test_lan_mode_needs_the_bearer_token_from_other_machines(client, png_bytes):
    lan = {"REMOTE_ADDR": "192.168.1.20"}
    body = assert_error(client.get("/health", environ_base=lan), 401, "Bearer")
    response = client.post("/ocr", data={"file": (io.BytesIO(png_bytes), "a.png")}, environ_base=lan)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/jobs", environ_base=lan, headers=wrong).status_code == 401
    right = {"Authorization": "Bearer s3cret"}
    assert client.get("/health", environ_base=lan, headers=right).status_code == 200
    ok = client.post("/ocr", data={"file": (io.BytesIO(png_bytes), "a.png")}, environ_base=lan, headers=right)
    assert ok.status_code == 200 and ok.get_json()["text"]
    # This machine itself (the kiosk, local programs) needs no token.
    assert client.get("/health").status_code == 200
    assert body["error"] == "token required"


def test_security_headers_on_every_response(client):
    for path in ("/health", "/openapi.json", "/nope"):
        response = client.get(path)
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_failed_jobs_status_comes_from_the_one_error_table():
    from appliance.ocr.errors import EngineUnavailable, InputError, TaskNotSupported
    from webui import errors

    for exc in (InputError("a.png", "x"), TaskNotSupported("doc", "cpu", ["text"]), EngineUnavailable("cpu", "x")):
        assert errors.failed_job_status(type(exc).__name__) == errors.describe(exc)[0]
    assert [errors.failed_job_status(k) for k in ("InputError", "TaskNotSupported", "EngineUnavailable")] == [
        422,
        400,
        503,
    ]
    assert errors.failed_job_status("internal") == errors.failed_job_status(None) == 500


def test_a_file_set_aside_for_crashing_the_service_says_so_in_the_pages_language(tmp_path, png_bytes):
    import sqlite3
    import threading

    from fake_engine import FakeEngine

    from appliance.jobs import MAX_RETRIES, Jobs
    from appliance.ocr.tasks import Request
    from webui import close_app, create_app, errors

    data = tmp_path / "data"
    never = threading.Event()  # the first service never gets its engine: the job stays queued until it "dies"
    jobs = Jobs(data, lambda report: never.wait())
    job = jobs.submit(png_bytes, "poison.png", Request.make("spotting"))
    jobs.close(timeout=0.1)
    with sqlite3.connect(data / "jobs.sqlite") as db:  # as the process left it when it died for the last time allowed
        db.execute("UPDATE jobs SET state='running', retries=? WHERE id=?", (MAX_RETRIES, job.id))
    app = create_app(
        {"DATA_DIR": str(data), "ENGINE": "cpu", "JOBS": Jobs(data, lambda r: FakeEngine()), "TESTING": True}
    )
    try:
        client = app.test_client()
        response = client.get(f"/jobs/{job.id}/result")
        assert response.status_code == 409 and "stopped the OCR service 3 times" in response.get_json()["detail"]
        assert errors.failed_job_status("Crashed") == 422  # what POST /ocr answers for it: the file is the cause
        client.set_cookie("lang", "zh")
        page = client.get(f"/job/{job.id}").get_data(as_text=True)
        assert "此文件已 3 次导致 OCR 服务中断" in page
    finally:
        close_app(app, timeout=5)


def test_only_this_machines_kiosk_checks_in(client):
    assert client.get("/health").get_json()["kiosk"] == {"seen": None}
    refused = client.get("/kiosk/alive", environ_base={"REMOTE_ADDR": "192.0.2.5"})
    assert refused.status_code == 403 and client.get("/health").get_json()["kiosk"]["seen"] is None
    assert client.get("/kiosk/alive").status_code == 204  # the test client is loopback, as the kiosk is
    assert client.get("/health").get_json()["kiosk"]["seen"] > 0


@pytest.mark.parametrize(
    "options",
    [
        {"task": "extract", "fields": [1, 2, 3]},
        {"task": "extract", "fields": 5},
        {"task": "translate", "target_lang": 5},
        {"task": "translate", "target_lang": ["en"]},
        {"task": 7},
    ],
)
@pytest.mark.parametrize("path", ["/ocr", "/jobs"])
def test_options_of_the_wrong_type_are_a_400_that_says_which(client, png_bytes, path, options):
    body = {"image": base64.b64encode(png_bytes).decode(), **options}
    response = client.post(path, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    detail = response.get_json()["detail"]
    assert "Traceback" not in detail and "TypeError" not in detail
    assert any(word in detail for word in ("fields", "target_lang", "task"))


def test_odd_listing_and_paging_requests_are_answered_in_json(client):
    response = client.get("/usb/list?path=" + "a" * 5000)
    assert response.status_code == 400 and response.is_json
    response = client.get("/usb/list?path=" + "b" * 300)  # one name longer than any filesystem allows
    assert response.status_code == 400 and response.is_json
    response = client.get(f"/jobs?offset={2**70}")
    assert response.status_code == 200 and response.get_json()["jobs"] == []
