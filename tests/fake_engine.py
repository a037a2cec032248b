"""A test double for the Engine protocol: instant, deterministic, and holdable (a gate) so tests can catch a job
while it is running. Tests only; product code always runs a real engine."""

from __future__ import annotations

import threading

from appliance.ocr.result import Block, EngineInfo, Page
from appliance.ocr.tasks import Request, Task


class FakeEngine:
    def __init__(self, tasks=frozenset(Task), revision: str = "r1", gate: threading.Event | None = None):
        self.info = EngineInfo(name="fake", model="test/fake", revision=revision, device="cpu")
        self.tasks = frozenset(tasks)
        self.gate = gate  # when set, each page waits for it: the job stays "running" until the test opens it
        self.calls = 0
        self.started = threading.Event()  # set when a page begins
        self.closed = False
        self.markdown: str | None = None  # the doc task's answer when a test sets one (formulas, tables)
        self.stream: list[tuple[str, int]] = []  # (text so far, tokens) given to on_text before the gate: a model

    def recognize(self, image, request: Request, on_text=None) -> Page:
        self.calls += 1
        self.started.set()
        for text_so_far, tokens in self.stream if on_text else ():
            on_text(text_so_far, tokens)
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        text = f"HELLO {image.width}x{image.height}"
        page = Page(
            text=text, blocks=[Block(text=text, box=[2, 3, image.width // 2, image.height // 2], confidence=0.9)]
        )
        if request.task is Task.DOC:
            page.markdown = self.markdown or f"# Title\n\n{text}\n\n<table><tr><td>a</td><td>b</td></tr></table>"
        if request.task is Task.EXTRACT:
            page.fields = {name: f"value of {name}" for name in request.fields}
        if request.task is Task.TRANSLATE:
            page.translation = f"[{request.target_lang}] {text}"
        return page

    def close(self) -> None:
        self.closed = True


def page_image(size=(64, 32), color="white", mode="RGB"):
    """A page for FakeEngine tests: `color` paper with a mark in the middle that stands out from it (the corners
    keep the paper's colour), so the pipeline does not skip it as blank."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, color)
    width, height = size
    box = (
        width * 3 // 8,
        height * 3 // 8,
        max(width * 5 // 8, width * 3 // 8 + 2),
        max(height * 5 // 8, height * 3 // 8 + 2),
    )
    dark = image.convert("L").getpixel((0, 0)) < 128
    ink = (255 if dark else 0) if mode in ("1", "L") else ("white" if dark else "black")
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    return image
