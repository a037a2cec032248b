"""Headers every response carries, CSRF tokens for the pages' form posts, and the LAN-mode bearer token.

LAN mode: with LAN_TOKEN set, a caller on another machine must send `Authorization: Bearer <token>` to the API (or
log in once on the page to get a session). This machine itself (loopback: the kiosk browser, a local program
following the reference articles at http://127.0.0.1:8000/ocr) is trusted and needs no token.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

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
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Strict")  # no cross-site request carries the session
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
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
    if not expected or not hmac.compare_digest(sent, expected):
        abort(400, description="this form has expired or did not come from this page; reload the page and try again")


def is_loopback() -> bool:
    try:
        return ipaddress.ip_address((request.remote_addr or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def token_ok(sent: str) -> bool:
    token = current_app.config.get("LAN_TOKEN")
    return bool(token) and hmac.compare_digest(sent.encode(), token.encode())


def trusted() -> bool:
    """No LAN token configured, or a loopback caller, or a valid bearer token, or a logged-in session."""
    if not current_app.config.get("LAN_TOKEN") or is_loopback() or session.get("lan_ok"):
        return True
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_ok(sent.strip())
