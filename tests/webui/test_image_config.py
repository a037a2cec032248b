"""What the web app takes from the image: the site's defaults from /etc/appliance/config.json (written by the image
builder) and the LAN token from the environment (a command-line token would show in `ps`)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import csrf, image_bytes

import webui.server
from appliance.runtime import Runtime, load


@pytest.fixture
def site_config(tmp_path, app_config):
    path = tmp_path / "config.json"
    app_config["APPLIANCE_CONFIG"] = str(path)
    return path


def checked_task(html: str) -> str:
    import re

    return re.search(r'name="task" value="(\w+)" checked', html).group(1)


def test_missing_file_gives_the_built_in_defaults(tmp_path):
    assert load(tmp_path / "absent.json") == Runtime()


def test_broken_file_gives_the_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert load(tmp_path / "config.json") == Runtime()


def test_without_a_config_the_browser_language_and_spotting_apply(client):
    page = client.get("/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and checked_task(page) == "spotting"


def test_image_config_sets_language_and_default_task(site_config, app):
    site_config.write_text(json.dumps({"language": "zh", "default_task": "text", "engine": "cpu", "lan": False}))
    from webui import create_app

    app = create_app({**app.config, "JOBS": app.extensions["backend"].jobs})
    client = app.test_client()
    page = client.get("/", headers={"Accept-Language": "en-US"}).get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and checked_task(page) == "text"
    # The user's own choice (cookie) still wins over the site default.
    client.get("/lang/en")
    assert '<html lang="en">' in client.get("/").get_data(as_text=True)


def test_serve_takes_the_lan_token_from_the_environment(tmp_path, monkeypatch):
    seen = {}

    def fake_create_app(config):
        seen.update(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(webui.server, "create_app", fake_create_app)
    monkeypatch.setenv("APPLIANCE_LAN_TOKEN", "from-env")
    with pytest.raises(RuntimeError, match="stop here"):
        webui.server.serve("0.0.0.0", 8000, engine="cpu", model_dir=None, data_dir=str(tmp_path))
    assert seen["LAN_TOKEN"] == "from-env"
    with pytest.raises(RuntimeError):  # an explicit --lan-token wins
        webui.server.serve("0.0.0.0", 8000, engine="cpu", model_dir=None, data_dir=str(tmp_path), lan_token="arg")
    assert seen["LAN_TOKEN"] == "arg"
    monkeypatch.delenv("APPLIANCE_LAN_TOKEN")
    with pytest.raises(SystemExit, match="APPLIANCE_LAN_TOKEN"):
        webui.server.serve("0.0.0.0", 8000, engine="cpu", model_dir=None, data_dir=str(tmp_path))


# ---- each field of the runtime config changes what the app does (tests/test_runtime.py names these) --------------


def client_with(app, site_config, values: dict):
    """A client of an app started on an image whose config.json holds `values` (the `app` fixture's queue)."""
    from webui import create_app

    site_config.write_text(json.dumps(values))
    return create_app({**app.config, "JOBS": app.extensions["backend"].jobs}).test_client()


def done_job(client, data: dict | None = None) -> str:
    response = client.post("/jobs", data={"file": (io.BytesIO(image_bytes()), "scan.png"), **(data or {})})
    job_id = response.get_json()["id"]
    assert client.application.extensions["backend"].jobs.wait(job_id, 10).state == "done"
    return job_id


def test_configured_default_task_is_the_apis_default(site_config, app):
    client = client_with(app, site_config, {"default_task": "text"})
    ocr = client.post("/ocr", data={"file": (io.BytesIO(image_bytes()), "image.jpg", "image/jpeg")})
    assert ocr.status_code == 200 and ocr.get_json()["task"] == "text"
    token = csrf(client)
    page = client.post("/upload", data={"csrf_token": token, "file": (io.BytesIO(image_bytes()), "a.png")})
    job_id = page.headers["Location"].rsplit("/", 1)[1]
    assert client.get(f"/jobs/{job_id}").get_json()["task"] == "text"  # the page's form sent no task
    openapi = client.get("/openapi.json").get_json()
    assert (
        openapi["paths"]["/ocr"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"][
            "task"
        ]["default"]
        == "text"
    )


def test_without_a_config_every_format_is_offered_and_json_is_the_default(client):
    job_id = done_job(client, {"task": "doc"})
    html = client.get(f"/job/{job_id}").get_data(as_text=True)
    assert re.findall(r'data-format="(\w+)"', html) == ["txt", "md", "json", "pdf"]
    assert client.get(f"/jobs/{job_id}/result").mimetype == "application/json"
    # A task without Markdown offers no .md: it would only repeat the .txt.
    html = client.get(f"/job/{done_job(client)}").get_data(as_text=True)
    assert re.findall(r'data-format="(\w+)"', html) == ["txt", "json", "pdf"]


def test_configured_outputs_are_the_job_pages_downloads_and_the_apis_default(site_config, app):
    client = client_with(app, site_config, {"outputs": ["pdf", "txt"]})
    job_id = done_job(client)
    html = client.get(f"/job/{job_id}").get_data(as_text=True)
    assert re.findall(r'data-format="(\w+)"', html) == ["pdf", "txt"]
    assert client.get(f"/jobs/{job_id}/result").mimetype == "application/pdf"  # json is not offered: the first
    for fmt, mimetype in (("json", "application/json"), ("md", "text/markdown")):  # programs still get any format
        assert client.get(f"/jobs/{job_id}/result?format={fmt}").mimetype == mimetype
    assert set(client.get(f"/jobs/{job_id}").get_json()["links"]) == {"self", "txt", "md", "json", "pdf"}
    result = client.get("/openapi.json").get_json()["paths"]["/jobs/{job_id}/result"]["get"]
    assert next(p for p in result["parameters"] if p["name"] == "format")["schema"]["default"] == "pdf"


def test_configured_outputs_are_what_save_to_usb_writes(site_config, app_config, app):
    client = client_with(app, site_config, {"outputs": ["txt", "json"]})
    folder = Path(app_config["USB_ROOT"]) / "KINGSTON"
    folder.mkdir()
    job_id = done_job(client)
    response = client.post(f"/job/{job_id}/save-usb", data={"csrf_token": csrf(client), "folder": "KINGSTON"})
    assert response.status_code == 303
    assert sorted(p.name for p in folder.iterdir()) == ["scan.json", "scan.txt"]


def test_configured_outputs_are_what_the_scan_folder_writes(site_config, app_config, monkeypatch, tmp_path):
    """The scan folder's watcher gets the outputs (appliance.scan writes only those; its own tests show that)."""
    from appliance import scan
    from webui import close_app, create_app

    started = {}

    class Watcher:
        def __init__(self, root, recognizer, **options):
            started.update(options, root=root)

        def stop(self, timeout=None):
            started["stopped"] = True

    monkeypatch.setattr(scan, "WatcherThread", Watcher)
    site_config.write_text(json.dumps({"outputs": ["md"]}))
    app = create_app(
        {
            **app_config,
            "DATA_DIR": str(tmp_path / "data"),
            "ENGINE": "cpu",
            "SCAN_DIR": str(tmp_path / "scan"),
            "SCAN_OPTIONS": {"quiet": 0.2},
        }
    )
    close_app(app, timeout=5)
    assert started == {"root": str(tmp_path / "scan"), "outputs": ("md",), "quiet": 0.2, "stopped": True}


def test_configured_engine_is_the_apps_and_asked_only_when_needed(
    site_config, app_config, engine, monkeypatch, tmp_path
):
    from appliance.jobs import Jobs
    from appliance.ocr.engines import select
    from webui import close_app, create_app

    asked = []
    real_choose = select.choose

    def choose(name, *args):
        asked.append(name)
        return real_choose(name, *args)

    monkeypatch.setattr(select, "choose", choose)
    site_config.write_text(json.dumps({"engine": "hunyuan-transformers"}))
    jobs = Jobs(tmp_path / "data", lambda report: engine)
    app = create_app({**app_config, "DATA_DIR": str(tmp_path / "data"), "JOBS": jobs})  # no ENGINE: the image's
    try:
        assert app.extensions["backend"].engine == "hunyuan-transformers" and asked == []  # no GPU probe at start
        client = app.test_client()
        for _ in range(2):
            assert client.get("/health").get_json()["engine"]["choice"] == "hunyuan-transformers"
        assert asked == ["hunyuan-transformers"]
    finally:
        close_app(app, timeout=5)
