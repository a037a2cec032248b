"""Headers every response carries, CSRF tokens for the pages' form posts, and the LAN-mode bearer token.

LAN mode: with LAN_TOKEN set, a caller on another machine must send `Authorization: Bearer <token>` to the API (or
log in once on the page to get a session). This machine itself (loopback: the kiosk browser, a local program
following the reference articles at http://127.0.0.1:8000/ocr) is trusted and needs no token.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time

from flask import Flask, abort, current_app, request, session

# style-src-attr 'unsafe-inline': KaTeX (the result page's formulas) writes a few style="..." attributes with
# setAttribute (the SVG pieces of \vec, tall braces as in cases, \oiint), which 'self' alone blocks. Only style
# *attributes* are let in; <style> elements and stylesheets stay 'self' only, scripts stay 'self' only, and the
# model's own Markdown carries no style attribute (webui/render.py drops every attribute but colspan, rowspan, align).
CSP = (
    "default-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    # Not setdefault: Flask defines both keys already (SameSite as None). Strict: no request from another site
    # carries the session, so another page cannot make a logged-in LAN browser post to the API.
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """For the pages' POSTs: the form field (or the X-CSRF-Token header, for fetch) must match the session's."""
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):  # bytes: any text compares
        abort(400, description="this form has expired or did not come from this page; reload the page and try again")


def is_loopback() -> bool:
    try:
        return ipaddress.ip_address((request.remote_addr or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def token_ok(sent: str) -> bool:
    token = current_app.config.get("LAN_TOKEN")
    return bool(token) and hmac.compare_digest(sent.encode(), token.encode())


def token_fingerprint() -> str:
    """What a logged-in session holds: tied to the token it was given for, so a new token ends every old login."""
    token = current_app.config.get("LAN_TOKEN") or ""
    return hmac.new(current_app.secret_key.encode(), token.encode(), "sha256").hexdigest()[:32]


def log_in() -> None:
    session["lan_ok"] = token_fingerprint()


def logged_in() -> bool:
    return hmac.compare_digest(str(session.get("lan_ok", "")).encode(), token_fingerprint().encode())


def trusted() -> bool:
    """No LAN token configured, or a loopback caller, or a valid bearer token, or a session logged in with the
    current token."""
    if not current_app.config.get("LAN_TOKEN") or is_loopback() or logged_in():
        return True
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_ok(sent.strip())


class LoginLimiter:
    """At most MAX_FAILURES wrong tokens per caller address in WINDOW seconds; then 429 until the window passes."""

    MAX_FAILURES = 10
    WINDOW = 60.0

    def __init__(self):
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """0 when this caller may try; else the seconds until it may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.get(address, ()) if now - t < self.WINDOW]
            self._failures[address] = recent
            if len(recent) < self.MAX_FAILURES:
                return 0
            return max(1, int(self.WINDOW - (now - recent[0])) + 1)

    def failed(self, address: str, now: float | None = None) -> None:
        with self._lock:
            self._failures.setdefault(address, []).append(time.monotonic() if now is None else now)
