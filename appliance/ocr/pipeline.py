"""One document through one engine: open, validate, page loop with progress, timings, the result document.

This is the only place that loops over pages; the CLI, the web API and the scan folder all call `recognize_file`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.ocr.engines.base import Engine, OnText, check_task
from appliance.ocr.engines.routed import serving
from appliance.ocr.images import Document, is_blank
from appliance.ocr.result import OcrResult, Page
from appliance.ocr.tasks import Request

BLANK_PAGE = "blank page: not sent to the OCR engine"  # the page's warning when it had no ink
# progress(done_pages, total_pages); called once before the first page and after each page.
Progress = Callable[[int, int, int], None]  # (pages done, pages in all, how many of the done ones were blank)


class Cancelled(Exception):
    """The caller's `cancelled()` said stop between two pages. `partial`: the pages read until then (None: none)."""

    def __init__(self, message: str, partial: OcrResult | None = None):
        super().__init__(message)
        self.partial = partial


class TurnOver(Exception):
    """The caller's `turn_over()` said let other work go first, between two pages. `partial`: the pages read so
    far; `recognize_document(..., earlier=partial)` goes on from the next page, and the end result is the same."""

    def __init__(self, partial: OcrResult):
        super().__init__(f"{partial.source}: turn over after {len(partial.pages)} pages")
        self.partial = partial


def recognize_document(
    engine: Engine,
    document: Document,
    request: Request,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    earlier: OcrResult | None = None,
    turn_over: Callable[[], bool] | None = None,
    on_text: OnText | None = None,
) -> OcrResult:
    """`earlier`: the pages a previous turn read (a TurnOver's partial); reading goes on after them. `turn_over()`
    is asked after each page read in this turn: True raises TurnOver (at least one page is read per turn).
    `on_text` follows each page's answer as a model engine writes it (the page being read is the one after the
    last `progress` call)."""
    check_task(engine, request)  # refuse before decoding anything
    spent = (earlier.timings.get("ocr") or 0.0) if earlier else 0.0
    started = time.perf_counter() - spent  # the turns' times add up
    total = document.page_count
    pages = list(earlier.pages) if earlier else []
    first = len(pages) + 1
    blank = sum(BLANK_PAGE in page.warnings for page in pages)
    if progress:
        progress(len(pages), total, blank)

    def result() -> OcrResult:
        return OcrResult(
            source=document.name,
            task=request.task.value,
            options=request.options(),
            engine=serving(engine, request.task).info,  # a routed task: the engine that ran it
            pages=pages,
            timings={"ocr": round(time.perf_counter() - started, 3)},
        )

    for number in range(first, total + 1):
        if cancelled and cancelled():
            partial = result() if pages else None
            raise Cancelled(f"{document.name}: cancelled after {number - 1} of {total} pages", partial)
        if number > first and turn_over and turn_over():
            raise TurnOver(result())
        image = document.page(number - 1)
        page_started = time.perf_counter()
        # A blank page (separator sheets, empty back sides of duplex scans) costs a model seconds to minutes and
        # can only give noise: it is not sent to the engine.
        if is_blank(image):
            page, blank = Page(warnings=[BLANK_PAGE]), blank + 1
        else:
            page = engine.recognize(image, request, on_text)
        page.number, page.width, page.height = number, image.width, image.height
        page.seconds = round(time.perf_counter() - page_started, 3)
        pages.append(page)
        if progress:
            progress(number, total, blank)
    return result()


def recognize_file(
    engine: Engine,
    source,
    request: Request,
    name: str | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    earlier: OcrResult | None = None,
    turn_over: Callable[[], bool] | None = None,
    on_text: OnText | None = None,
) -> OcrResult:
    """`source` is a path or bytes; `name` is what errors and the result call it (defaults to the file name)."""
    with Document.open(source, name=name) as document:
        return recognize_document(engine, document, request, progress, cancelled, earlier, turn_over, on_text)
