"""Helpers of the scan-folder tests: images with known text, a run of the watcher until its inbox is empty, and
engine test doubles. The watcher always runs through its job queue (the product path); the doubles stand for the
engine behind it."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from appliance import scan
from appliance.ocr.images import Document
from appliance.ocr.result import Block, EngineInfo, Page
from appliance.ocr.tasks import Task

SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CJK = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
REPO = Path(__file__).resolve().parents[2]
FAST = {"quiet": 0.3, "give_up": 1.5, "rescan": 1.0}
ALL_OUTPUTS = ("txt", "md", "json", "pdf")


def text_image(lines, font=SANS, size=34, width=720) -> Image.Image:
    image = Image.new("RGB", (width, 40 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    face = ImageFont.truetype(font, size)
    for i, line in enumerate(lines):
        draw.text((24, 20 + 60 * i), line, font=face, fill="black")
    return image


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def squash(text: str) -> str:
    return "".join(text.split()).lower()


def run_once(root, engine, **kwargs):
    """`appliance watch ROOT --once` with its own job queue, whose worker gets `engine` (already open)."""
    options = {**FAST, "media_dirs": [], **kwargs}
    return scan.run(root, open_engine=lambda report: engine, once=True, **options)


def outputs(root, rel_dir="") -> list[str]:
    folder = root / "outbox" / rel_dir
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _rows(path: Path, query: str) -> list[dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(query)]
    finally:
        db.close()


def ledger(root) -> list[dict]:
    return _rows(root / ".state" / "ledger.sqlite", "SELECT * FROM files ORDER BY id")


def queue_jobs(root) -> list[dict]:
    """The rows of the job queue `appliance watch ROOT` runs its files through."""
    return _rows(root / ".state" / "jobs" / "jobs.sqlite", "SELECT * FROM jobs ORDER BY seq")


def assert_no_leftovers(root):
    """No temporary or half-written files anywhere, nothing left in the work folder or the inbox."""
    leftovers = [
        p
        for p in root.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith(".")) and p.parent.name != ".state"
    ]
    assert leftovers == []
    assert list((root / ".state" / "work").iterdir()) == []


class Counting:
    """A real engine, opened once for many runs: counts the pages it recognises; closing is left to its owner."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.info, self.tasks = inner.info, inner.tasks

    def recognize(self, image, request, on_text=None):
        self.calls += 1
        return self.inner.recognize(image, request, on_text)

    def close(self):
        pass


class FakeEngine:
    """A fast engine double: one line per page, "text of <file name>" for the files it was shown with `learn`
    (so outputs differ per file), else "text of a page"."""

    def __init__(self):
        self.info = EngineInfo("fake", "test", revision="1")
        self.tasks = frozenset(Task)
        self.calls = 0
        self.names: dict[str, str] = {}

    def learn(self, *paths: Path) -> None:
        for path in paths:
            with Document.open(path) as document:
                for page in document.pages():
                    self.names[_fingerprint(page)] = path.name

    def recognize(self, image, request, on_text=None) -> Page:
        self.calls += 1
        text = f"text of {self.names.get(_fingerprint(image), 'a page')}"
        return Page(text=text, blocks=[Block(text, [2, 2, image.width - 2, image.height - 2], 0.9)])

    def close(self):
        pass


def _fingerprint(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
