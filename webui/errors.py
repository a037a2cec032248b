"""One mapping from what went wrong to the HTTP status and the words a person sees; the API and the pages share it."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance.jobs import CRASHED, JobNotFound, QueueFull
from appliance.ocr import images
from appliance.ocr.errors import EngineUnavailable, InputError, TaskNotSupported


class BadRequest(Exception):
    """The request itself is wrong (missing file, bad options): 400 with this message."""


class Unsupported(Exception):
    """Not an image or PDF we can read: 415 with this message."""


SUPPORTED = f"an image or PDF ({images.SUPPORTED_TEXT})"


# What went wrong -> (HTTP status, the error in a few words); the first row that matches wins.
# The API's answers, the pages' error screens and a failed job's status (by its exception's class name) all use it.
STATUSES: tuple[tuple[type[BaseException], int, str], ...] = (
    (Unsupported, 415, "unsupported file type"),
    (InputError, 422, "unreadable file"),
    (BadRequest, 400, "bad request"),
    (ValueError, 400, "bad request"),
    (TaskNotSupported, 400, "task not available"),
    (QueueFull, 503, "busy"),
    (EngineUnavailable, 503, "engine unavailable"),
    (JobNotFound, 404, "not found"),
)
# What to do about it, after the exception's own words.
ADVICE = {
    InputError: "; check the file opens on another computer, or scan it again",
    EngineUnavailable: "; see the status page or GET /health",
}


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
    for kind, status, error in STATUSES:
        if isinstance(exc, kind):
            headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else {}
            return status, error, f"{exc}{ADVICE.get(kind, '')}", headers
    if isinstance(exc, HTTPException):
        return exc.code or 500, (exc.name or "error").lower(), exc.description or "", {}
    return 500, "internal error", f"{type(exc).__name__}: {exc}; the log has the details", {}


def failed_job_status(error_kind: str | None) -> int:
    """The status for a job that failed with an exception of class `error_kind` (appliance.jobs keeps the name)."""
    if error_kind == CRASHED:  # the file itself kept killing the service: unprocessable, like an unreadable one
        return 422
    return next((status for kind, status, _ in STATUSES if kind.__name__ == error_kind), 500)


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
