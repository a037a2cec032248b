"""What the web app takes from the image: the site's defaults from /etc/appliance/config.json (written by the image
builder) and the LAN token from the environment (a command-line token would show in `ps`)."""

from __future__ import annotations

import json

import pytest

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
