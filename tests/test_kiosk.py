"""appliance.kiosk: the supervisor that keeps the kiosk's browser on the appliance's page.

The browser here is a real process (a small Python program that records the URL it was given and then waits), so
starting, killing its process group and noticing its death are real; the web app's answers and the clocks are the
test's, so hours of kiosk life take milliseconds. The browser side (app.js checking in, reconnecting) is tested in
real Chromium in tests/webui/test_browser.py.
"""

from __future__ import annotations

import sys
import time

import pytest

from appliance import kiosk
from appliance.kiosk import AppState, Kiosk

BROWSER = """
import sys, time
with open(sys.argv[1], "a") as f:
    f.write(sys.argv[-1].removeprefix("--app=") + "\\n")
time.sleep(120)
"""


class World:
    """The web app as the supervisor sees it, and the two clocks."""

    def __init__(self):
        self.state = AppState(False, None)
        self.mono = 1000.0
        self.epoch = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.epoch += seconds

    def check_in(self) -> None:
        self.state = AppState(True, self.epoch)


@pytest.fixture
def world():
    return World()


@pytest.fixture
def screen(world, tmp_path):
    """A Kiosk with a real browser process; `screen.urls()` lists what the browsers were opened on, in order."""
    urls = tmp_path / "urls.txt"
    kiosk_ = Kiosk(
        [sys.executable, "-c", BROWSER, str(urls)],
        language="zh",
        look=lambda url: world.state,
        now=lambda: world.mono,
        wall=lambda: world.epoch,
        profile_dir=tmp_path / "profile",
    )

    def opened():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the browser writes its URL as it starts
            lines = urls.read_text().split() if urls.exists() else []
            if len(lines) == kiosk_.launches:
                return lines
            time.sleep(0.02)
        raise AssertionError("a browser did not start")

    kiosk_.launches = 0
    original = kiosk_.launch

    def launch(target):
        kiosk_.launches += 1
        original(target)

    kiosk_.launch = launch
    kiosk_.urls = opened
    yield kiosk_
    kiosk_.stop()


APP = "http://127.0.0.1:8000/?kiosk=1"


def test_boot_waits_for_the_app_then_opens_the_start_page(screen, world):
    assert screen.step() is None and screen.process is None  # the web app is still starting: nothing yet
    world.advance(60)
    world.state = AppState(True, None)
    assert screen.step() == "the web app answers: showing the start page"
    assert screen.urls() == [APP]
    world.advance(5)
    world.check_in()
    for _ in range(100):  # a page that keeps checking in is left alone
        world.advance(kiosk.CHECK_EVERY)
        world.check_in()
        assert screen.step() is None


def test_an_app_that_never_comes_up_gets_the_offline_page_in_the_ui_language_then_the_app(screen, world):
    world.advance(kiosk.BOOT_WAIT - 1)
    assert screen.step() is None
    world.advance(1)
    assert screen.step() == "the web app does not answer: showing the offline page"
    [offline] = screen.urls()
    assert offline.startswith("file://") and offline.endswith("/webui/static/offline.html?lang=zh")
    assert kiosk.OFFLINE_PAGE.is_file()
    world.advance(30)
    assert screen.step() is None  # it stays there while the app is down
    world.state = AppState(True, None)
    assert screen.step() == "the web app answers: showing the start page"
    assert screen.urls()[-1] == APP


def test_a_page_that_never_shows_is_reopened_with_a_longer_wait_each_time(screen, world):
    world.state = AppState(True, None)
    screen.step()
    first = screen.process
    screen.urls()  # each browser has started before the next step may stop it
    world.advance(kiosk.FIRST_PAGE_GRACE - 1)
    assert screen.step() is None
    world.advance(1)
    assert screen.step() == "the page never showed: showing the start page"
    assert first.poll() is not None  # the old browser's whole group is gone
    screen.urls()
    world.advance(kiosk.FIRST_PAGE_GRACE + 1)
    assert screen.step() is None  # a slow machine: the second wait is twice as long
    world.advance(kiosk.FIRST_PAGE_GRACE)
    assert screen.step() == "the page never showed: showing the start page"
    assert screen.urls() == [APP] * 3


def test_a_page_that_stops_checking_in_is_reopened(screen, world):
    world.state = AppState(True, None)
    screen.step()
    screen.urls()
    world.advance(10)
    world.check_in()
    assert screen.step() is None
    world.advance(kiosk.STALE_AFTER)  # a white page: the app answers, the page says nothing
    assert screen.step() == "the page stopped answering: showing the start page"


def test_after_an_app_restart_a_live_page_reconnects_and_a_dead_one_is_reopened(screen, world):
    world.state = AppState(True, None)
    screen.step()
    world.advance(10)
    world.check_in()
    screen.step()
    world.state = AppState(False, None)  # the web app restarts
    world.advance(20)
    assert screen.step() is None  # the page says "reconnecting" meanwhile
    world.state = AppState(True, None)
    assert screen.step() is None
    world.advance(6)
    world.check_in()  # the page reloaded itself
    assert screen.step() is None
    world.advance(kiosk.RECONNECT_GRACE)
    world.check_in()
    assert screen.step() is None and screen.launches == 1

    world.state = AppState(True, None)  # restarted again, between two looks; this time the page is gone
    assert screen.step() is None
    world.advance(kiosk.RECONNECT_GRACE)
    assert screen.step() == "the web app restarted and the page did not come back: showing the start page"


def test_an_app_down_for_long_gets_the_offline_page(screen, world):
    world.state = AppState(True, None)
    screen.step()
    world.state = AppState(False, None)
    assert screen.step() is None
    world.advance(kiosk.DOWN_LIMIT)
    assert screen.step() == "the web app does not answer: showing the offline page"


def test_a_browser_that_dies_is_started_again(screen, world):
    world.state = AppState(True, None)
    screen.step()
    screen.urls()
    screen.process.kill()
    screen.process.wait()
    assert screen.step() == "the browser is not running: showing the start page"
    assert screen.urls() == [APP, APP]


def test_the_kiosk_command_line():
    command = kiosk.browser_command("1920,1080")
    assert command[0] == "chromium" and "--kiosk" in command and "--window-size=1920,1080" in command
    assert not any(flag.startswith("--app") for flag in command)  # the supervisor adds the page
