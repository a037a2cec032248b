"""The kiosk's browser, kept on the appliance's page (`appliance kiosk`, run by the X session on tty1).

A browser left alone can end up showing nothing useful: its page was being loaded when the web app restarted (an
error page, or a white one), or the page's script stopped. So the pages the kiosk opens check in with the web app
(app.js calls GET /kiosk/alive every few seconds; GET /health says when it last did), and this supervisor restarts
the browser on the start page when:
- the browser died;
- the web app came back after being down and the page did not check in again soon (a page that is alive reloads
  itself when the app is back; a dead one never will);
- the page never checked in, or stopped (a white page); the wait doubles after each such restart, because under
  software rendering a first page can take minutes;
and it shows a local page, in the UI's language, saying the service is not running when the web app stays down
(the browser returns to the app by itself once it answers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

APP_URL = "http://127.0.0.1:8000/"
CHECK_EVERY = 5  # seconds between two looks at the web app
FIRST_PAGE_GRACE = 240  # seconds a new browser may take to show a page that checks in (doubles after each miss)
STALE_AFTER = 120  # seconds without a check-in from a page that had been checking in (a busy emulated PC lags)
RECONNECT_GRACE = 30  # seconds a live page gets to check in again after the web app came back
BOOT_WAIT = 600  # seconds the web app may take to answer at boot before the offline page is shown
DOWN_LIMIT = 90  # seconds the web app may be away (a restart) before the offline page is shown
OFFLINE_PAGE = Path(__file__).resolve().parent.parent / "webui" / "static" / "offline.html"

# Chromium as the kiosk: full screen, one app window, nothing that calls home or asks the user anything.
# --disable-gpu: the UI needs no GPU; the card's memory is the model server's (gpu image), and without a hardware
# GL driver (a VM, safe graphics) Chromium would otherwise rasterise through Mesa's software GL.
BROWSER_FLAGS = (
    "--kiosk",
    "--window-position=0,0",
    "--disable-gpu",
    "--no-first-run",
    "--noerrdialogs",
    "--disable-infobars",
    "--disable-session-crashed-bubble",
    "--disable-translate",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--password-store=basic",
    "--disable-breakpad",
    "--disable-pinch",
    "--overscroll-history-navigation=0",
    "--check-for-update-interval=31536000",
)


@dataclass
class AppState:
    up: bool
    page_seen: float | None  # epoch of the kiosk page's last check-in (None: none since the web app started)


def look(app_url: str = APP_URL, timeout: float = 3) -> AppState:
    """Whether the web app answers, and when the kiosk page last checked in. Never raises."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
    try:
        with opener.open(app_url.rstrip("/") + "/health", timeout=timeout) as response:
            data = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return AppState(False, None)
    seen = (data.get("kiosk") or {}).get("seen") if isinstance(data, dict) else None
    return AppState(True, seen if isinstance(seen, int | float) else None)


class Kiosk:
    """One browser at a time, on the web app (`showing` "app") or on the offline page ("offline").

    `step()` looks once and acts; `run()` steps forever. `browser` is the command before the URL; `language` picks
    the offline page's language. Clocks are injectable for tests: `now` (monotonic), `wall` (epoch, as the web app
    reports check-ins)."""

    def __init__(
        self,
        browser: list[str],
        app_url: str = APP_URL,
        language: str | None = None,
        look=look,
        now=time.monotonic,
        wall=time.time,
        profile_dir: Path | None = None,
        log=print,
    ):
        self.browser, self.app_url, self.language = browser, app_url, language or "en"
        self._look, self._now, self._wall, self._log = look, now, wall, log
        self.profile_dir = profile_dir or Path.home() / ".config" / "chromium"
        self.process: subprocess.Popen | None = None
        self.showing: str | None = None
        self.launched = 0.0  # monotonic time of the last launch
        self.launched_wall = 0.0
        self.grace = FIRST_PAGE_GRACE
        self.started = now()
        self.down_since: float | None = None
        self.back_since: float | None = None  # when the web app answered again after being down
        self.page_checked_in = False  # the browser's page has checked in since its launch

    # ---- decisions ----------------------------------------------------------------------------------------------

    def step(self) -> str | None:
        """Look at the web app and the browser once; returns what was done (words for the journal), or None."""
        now, state = self._now(), self._look(self.app_url)
        if state.up:
            # Back after being down, or restarted between two looks (it forgot the page's check-ins).
            if self.down_since is not None or (state.page_seen is None and self.page_checked_in):
                self.back_since, self.page_checked_in = now, False
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now
        why = self._why_restart(now, state)
        if why:
            target = "app" if state.up else "offline"
            self.stop()
            self.launch(target)
            return f"{why}: showing the {'start page' if target == 'app' else 'offline page'}"
        return None

    def _why_restart(self, now: float, state: AppState) -> str | None:
        alive = self.process is not None and self.process.poll() is None
        if not state.up:
            if self.showing == "offline":
                return None if alive else "the browser is not running"
            # At boot the web app gets BOOT_WAIT to answer; once it has, a restart gets DOWN_LIMIT. Meanwhile a live
            # page says "reconnecting" and reloads itself when the app is back.
            since, limit = (self.started, BOOT_WAIT) if self.showing is None else (self.down_since, DOWN_LIMIT)
            return "the web app does not answer" if now - since >= limit else None
        if self.showing != "app":
            return "the web app answers"
        if not alive:
            return "the browser is not running"
        seen = state.page_seen
        checked_in = seen is not None and seen >= self.launched_wall
        self.page_checked_in = self.page_checked_in or checked_in
        if self.back_since is not None:
            if seen is not None and seen >= self._wall() - (now - self.back_since):
                self.back_since = None  # the page reloaded itself after the restart
            elif now - self.back_since >= RECONNECT_GRACE:
                return "the web app restarted and the page did not come back"
            return None
        if not checked_in:
            if now - self.launched >= self.grace:
                self.grace *= 2  # a slow machine gets longer next time instead of a restart loop
                return "the page never showed"
            return None
        self.grace = FIRST_PAGE_GRACE
        if self._wall() - seen >= STALE_AFTER:
            return "the page stopped answering"
        return None

    # ---- the browser ------------------------------------------------------------------------------------------

    def url(self, target: str) -> str:
        if target == "app":
            return self.app_url.rstrip("/") + "/?kiosk=1"  # app.js checks in from pages opened this way
        return OFFLINE_PAGE.as_uri() + f"?lang={self.language}"

    def launch(self, target: str) -> None:
        for lock in self.profile_dir.glob("Singleton*"):  # a killed Chromium leaves its lock behind
            lock.unlink(missing_ok=True) if not lock.is_dir() else shutil.rmtree(lock, ignore_errors=True)
        command = [*self.browser, f"--app={self.url(target)}"]
        self.process = subprocess.Popen(command, start_new_session=True)  # its own group: stop() ends every child
        self.showing, self.launched, self.launched_wall = target, self._now(), self._wall()
        self.back_since, self.page_checked_in = None, False

    def stop(self, timeout: float = 5) -> None:
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()
        self.process = None

    def run(self) -> None:
        try:
            while True:
                done = self.step()
                if done:
                    self._log(f"kiosk: {done}", flush=True)
                time.sleep(CHECK_EVERY)
        finally:
            self.stop()


def browser_command(window_size: str | None = None, executable: str = "chromium") -> list[str]:
    return [executable, *BROWSER_FLAGS, *([f"--window-size={window_size}"] if window_size else [])]
