"""Fixtures for the web UI and API: the app over a fake engine (instant), and sample files made with Pillow."""

from __future__ import annotations

import io
import re

import pytest
from fake_engine import FakeEngine
from PIL import Image

from appliance.jobs import Jobs
from webui import create_app


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def app_config(tmp_path):
    """Extra config for the `app` fixture; tests change it before asking for `app`."""
    usb = tmp_path / "media"
    usb.mkdir()
    return {"USB_ROOT": str(usb)}


@pytest.fixture
def app(tmp_path, engine, app_config):
    jobs = Jobs(tmp_path / "data", lambda: engine, max_queue=app_config.pop("MAX_QUEUE", 32))
    assert jobs.wait_engine(10)["ready"]
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True,
                      **app_config})
    yield app
    jobs.close(timeout=5)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def png_bytes():
    return image_bytes("PNG")


def image_bytes(fmt="PNG", size=(120, 60), color="white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def csrf(client, path="/") -> str:
    """The CSRF token a page hands out (it lives in the client's session cookie)."""
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
