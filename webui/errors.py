"""One mapping from what went wrong to the HTTP status and the words a person sees; the API and the pages share it."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance.jobs import JobNotFound, QueueFull
from appliance.ocr import images
from appliance.ocr.errors import EngineUnavailable, InputError, TaskNotSupported


class BadRequest(Exception):
    """The request itself is wrong (missing file, bad options): 400 with this message."""


class Unsupported(Exception):
    """Not an image or PDF we can read: 415 with this message."""


SUPPORTED = f"an image or PDF ({images.SUPPORTED_TEXT})"


def describe(exc: BaseException, max_bytes: int | None = None) -> tuple[int, str, str, dict]:
    """(status, error, detail, extra headers) for an exception; `detail` says what to do about it."""
    if isinstance(exc, RequestEntityTooLarge):
        limit = f" ({_size(max_bytes)})" if max_bytes else ""
        return (
            413,
            "file too large",
            f"the upload is over the size limit{limit}; send a smaller file or fewer pages",
            {},
        )
    if isinstance(exc, Unsupported):
        return 415, "unsupported file type", str(exc), {}
    if isinstance(exc, InputError):
        return 422, "unreadable file", f"{exc}; check the file opens on another computer, or scan it again", {}
    if isinstance(exc, (BadRequest, ValueError)):
        return 400, "bad request", str(exc), {}
    if isinstance(exc, TaskNotSupported):
        return 400, "task not available", str(exc), {}
    if isinstance(exc, QueueFull):
        return 503, "busy", str(exc), {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, EngineUnavailable):
        return 503, "engine unavailable", f"{exc}; see the status page or GET /health", {}
    if isinstance(exc, JobNotFound):
        return 404, "not found", str(exc), {}
    if isinstance(exc, HTTPException):
        return exc.code or 500, (exc.name or "error").lower(), exc.description or "", {}
    return 500, "internal error", f"{type(exc).__name__}: {exc}; the log has the details", {}


def check_type(data: bytes, name: str) -> None:
    """Refuse what is not an image or PDF at all (415) before decoding; a broken image or PDF is a 422 later."""
    kind, looks_like = images.sniff(data)
    if kind is None:
        raise Unsupported(
            f"{name} is not {SUPPORTED}; it looks like: {looks_like}. Save or convert it as one of these"
        )


def _size(n: int) -> str:
    return (
        f"{n / 1024 / 1024:.0f} MB"
        if n >= 10 * 1024 * 1024
        else f"{n / 1024 / 1024:.1f} MB"
        if n >= 1024 * 1024
        else f"{n / 1024:.0f} KB"
    )
