"""Fixtures for the web UI and API: the app over a fake engine (instant), and sample files made with Pillow."""

from __future__ import annotations

import io
import re

import pytest
from fake_engine import FakeEngine, page_image
from PIL import Image

from appliance.jobs import Jobs
from webui import close_app, create_app


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
    jobs = Jobs(tmp_path / "data", lambda report: engine, max_queue=app_config.pop("MAX_QUEUE", 32))
    assert jobs.wait_engine(10)["ready"]
    app = create_app(
        {"DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "JOBS": jobs, "TESTING": True, **app_config}
    )
    yield app
    close_app(app, timeout=5)  # the queue's worker (and a scan folder's watcher) end with the test


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def png_bytes():
    return image_bytes("PNG")


def image_bytes(fmt="PNG", size=(120, 60), color="white") -> bytes:
    buf = io.BytesIO()
    page_image(size, color).save(buf, format=fmt)
    return buf.getvalue()


def csrf(client, path="/") -> str:
    """The CSRF token a page hands out (it lives in the client's session cookie)."""
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


# ---- the app served by the real WSGI server (waitress) on loopback -----------------------------------------------

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def text_image(lines: list[str], fmt: str = "JPEG", size=(900, 260)) -> bytes:
    """A white page with black DejaVu Sans text, one line per entry: what the real CPU engine must read back."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 48)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 80 * i), line, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95)
    return buf.getvalue()


class LiveServer:
    def __init__(self, app, server):
        self.app = app
        self.url = f"http://127.0.0.1:{server.effective_port}"
        self.jobs = app.extensions["backend"].jobs


def serve_in_thread(app, port: int = 0):
    """Start waitress on loopback (port 0: a free one); returns (LiveServer, stop)."""
    import threading

    from webui.server import make_server
    from webui.server import stop as stop_server

    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop():
        stop_server(server)
        thread.join(10)
        close_app(app, timeout=10)

    return LiveServer(app, server), stop


@pytest.fixture(scope="session")
def cpu_server(tmp_path_factory):
    """The whole product path: waitress -> Flask -> jobs -> the real CPU engine (rapidocr)."""
    base = tmp_path_factory.mktemp("cpu-server")
    (base / "media").mkdir()
    app = create_app({"DATA_DIR": str(base / "data"), "ENGINE": "cpu", "USB_ROOT": str(base / "media")})
    live, stop = serve_in_thread(app)
    status = live.jobs.wait_engine(120)
    assert status["ready"], status
    live.media = base / "media"
    yield live
    stop()
