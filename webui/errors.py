"""One mapping from what went wrong to the HTTP status and the words a person sees; the API and the pages share it."""

from __future__ import annotations

from flask import has_request_context, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance.jobs import CRASHED, JobNotFound, PageLimit, QueueFull
from appliance.messages import Text, message_of
from appliance.ocr import images
from appliance.ocr.errors import EngineUnavailable, InputError, TaskNotSupported
from appliance.scanner import ScannerBusy, ScannerError, ScanNotFound


class BadRequest(Exception):
    """The request itself is wrong (missing file, bad options): 400 with this message."""


class Unsupported(Exception):
    """Not an image or PDF we can read: 415 with this message."""


class Busy(Exception):
    """Every synchronous slot is taken (POST /ocr waiting for results): 503, try again or use POST /jobs."""

    def __init__(self, slots: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(Text("sync_busy", slots=slots, seconds=retry_after))


# What went wrong -> (HTTP status, the error in a few words); the first row that matches wins.
# The API's answers, the pages' error screens and a failed job's status (by its exception's class name) all use it.
STATUSES: tuple[tuple[type[BaseException], int, str], ...] = (
    (Unsupported, 415, "unsupported file type"),
    (PageLimit, 413, "too many pages"),  # a readable file, more pages than one job may have: split it
    (InputError, 422, "unreadable file"),
    (BadRequest, 400, "bad request"),
    (ValueError, 400, "bad request"),
    (TaskNotSupported, 400, "task not available"),
    (QueueFull, 503, "busy"),
    (Busy, 503, "busy"),
    (EngineUnavailable, 503, "engine unavailable"),
    (JobNotFound, 404, "not found"),
    (ScanNotFound, 404, "not found"),
    (ScannerBusy, 409, "scanner busy"),
    (ScannerError, 502, "scanner error"),  # the scanner, not the request, failed: jam, cover open, gone
)
# What to do about it, after the exception's own words (appliance.messages ids).
ADVICE = {
    InputError: "advice_damaged",
    EngineUnavailable: "advice_engine",
}


def describe(exc: BaseException, max_bytes: int | None = None) -> tuple[int, str, str, dict]:
    """(status, error, detail, extra headers) for an exception; `detail` says what to do about it. It is an
    appliance.messages.Text where its words have an id: the pages say it in their language (`i18n.say`), the API
    in English with the id and values beside it."""
    if isinstance(exc, RequestEntityTooLarge):
        if has_request_context() and max_bytes and (request.content_length or 0) <= max_bytes:
            # Werkzeug says "too large" for a form of too many parts too (its max_form_parts): not the file.
            return 413, "too many form parts", Text("too_many_form_parts"), {}
        return 413, "file too large", Text("upload_too_large", limit=_size(max_bytes) if max_bytes else "?"), {}
    for kind, status, error in STATUSES:
        if isinstance(exc, kind):
            retry_after = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after else {}
            advice = ADVICE.get(kind)
            if kind is InputError and "the limit is" in str(exc):  # too big or too many pages, not damaged
                advice = "advice_limit"
            message = message_of(exc)
            detail = Text("with_advice", message=message, advice=Text(advice)) if advice else message
            return status, error, detail, headers
    if isinstance(exc, HTTPException):
        return exc.code or 500, (exc.name or "error").lower(), exc.description or "", {}
    return 500, "internal error", Text("internal_error", kind=type(exc).__name__, error=str(exc)), {}


def failed_job_status(error_kind: str | None) -> int:
    """The status for a job that failed with an exception of class `error_kind` (appliance.jobs keeps the name)."""
    if error_kind == CRASHED:  # the file itself kept killing the service: unprocessable, like an unreadable one
        return 422
    return next((status for kind, status, _ in STATUSES if kind.__name__ == error_kind), 500)


def check_type(data: bytes, name: str) -> None:
    """Refuse what is not an image or PDF at all (415) before decoding; a broken image or PDF is a 422 later."""
    kind, looks_like = images.sniff(data)
    if kind is None:
        raise Unsupported(Text("not_supported_type", name=name, formats=images.SUPPORTED_TEXT, looks_like=looks_like))


def _size(n: int) -> str:
    return (
        f"{n / 1024 / 1024:.0f} MB"
        if n >= 10 * 1024 * 1024
        else f"{n / 1024 / 1024:.1f} MB"
        if n >= 1024 * 1024
        else f"{n / 1024:.0f} KB"
    )
