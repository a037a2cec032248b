"""The CPU engine: rapidocr's PP-OCRv6 detector and recogniser on onnxruntime, for spotting and plain text.

The models ship inside the rapidocr wheel and are loaded by explicit path, so nothing is ever fetched. Lines come
back in reading order: rows top to bottom, left to right within a row, and the columns of a multi-column page one
after the other (see `reading_order`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from PIL import Image

from appliance.ocr.engines.base import OnText, check_task
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.result import Block, EngineInfo, Page
from appliance.ocr.tasks import Request, Task


def cpu_count() -> int:
    """Cores this process may use (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# rapidocr settings that differ from its defaults. Figures: bench/dataset.py pages, 2 cores, CPU seconds per page
# (the host was shared, so CPU time was steadier than wall time), CER = character error rate.
SETTINGS = {
    # Its INFO lines would interleave with the CLI's own progress on stderr.
    "Global.log_level": "error",
    # The line angle classifier (a 48x192 input) squeezes long lines and "turns" upright ones: it flipped 12 of 36
    # lines of an A4 page, 26 of 54 on small print. Off: CER 0.050 -> 0.006 over the set, dense pages 0.124 -> 0.007.
    # Upside-down pages are then misread; EXIF orientation is fixed by the pipeline before we get the image.
    "Global.use_cls": False,
    # Detector input: at most 1280 px on the long side, never upscaled (the default scales the SHORT side up to
    # 736, so a receipt grows and a phone photo stays at 2000 px). 7.4 -> 6.7 s/page, CER 0.0058 -> 0.0037; 960 was
    # faster still (5.9 s) but leaves 8 pt print on a 300 dpi page or a long receipt under 10 px high.
    "Det.limit_type": "max",
    "Det.limit_side_len": 1280,
    # onnxruntime threads = the cores this process may use (its default may count the host's cores instead).
    # Recognition batch size stays 6: 1, 16 and 32 were each within noise (+-15%) of it.
    "EngineConfig.onnxruntime.intra_op_num_threads": cpu_count(),
}


@dataclass
class Line:
    text: str
    box: list[int]  # x1, y1, x2, y2
    confidence: float


class CpuEngine:
    """rapidocr behind the Engine protocol. Loads its models once, in the constructor."""

    tasks = frozenset({Task.SPOTTING, Task.TEXT})

    def __init__(self, settings: dict | None = None):
        try:
            import rapidocr
        except ImportError as exc:
            raise EngineUnavailable("cpu", f"rapidocr is not installed ({exc}); pip install '.[cpu]'") from exc

        models = Path(rapidocr.__file__).parent / "models"
        # Explicit paths: rapidocr would otherwise look the files up by name and download any it does not find.
        paths = {
            "Det.model_path": models / "PP-OCRv6_det_small.onnx",
            "Rec.model_path": models / "PP-OCRv6_rec_small.onnx",
            "Cls.model_path": models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        }
        params = {**SETTINGS, **(settings or {})}
        uses_cls = params.get("Global.use_cls", True)
        if not uses_cls:
            del paths["Cls.model_path"]
        for key, path in paths.items():
            if not path.is_file():
                raise EngineUnavailable("cpu", f"rapidocr model file missing: {path} (reinstall rapidocr)")
            params[key] = str(path)
        quiet(params["Global.log_level"])
        self._ocr = rapidocr.RapidOCR(params=params)
        # rapidocr loads each model on first use; load them now so the first page is not charged for it.
        self._ocr._load_det_model()
        self._ocr._load_rec_model()
        if uses_cls:
            self._ocr._load_cls_model()
        names = ", ".join(Path(p).name for p in paths.values())
        self.info = EngineInfo(
            name="cpu", model="rapidocr/PP-OCRv6", revision=f"rapidocr {version('rapidocr')}: {names}", device="cpu"
        )

    def recognize(self, image: Image.Image, request: Request, on_text: OnText | None = None) -> Page:
        """`on_text` is never called: a page takes seconds and its lines come all at once."""
        check_task(self, request)
        image = image.convert("RGB")
        lines = self.read_lines(image)
        blocks = [Block(text=line.text, box=line.box, confidence=line.confidence) for line in lines]
        if request.task is Task.TEXT:
            text = "\n".join(" ".join(line.text for line in row) for row in group_rows(lines))
        else:
            text = "\n".join(line.text for line in lines)
        return Page(text=text, blocks=blocks, width=image.width, height=image.height)

    def read_lines(self, image: Image.Image) -> list[Line]:
        """Every text line rapidocr finds, as an upright rectangle clamped to the image, in reading order."""
        result = self._ocr(image)
        if not result.txts:
            return []
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores):
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            box = [
                clamp(min(xs), image.width),
                clamp(min(ys), image.height),
                clamp(max(xs), image.width),
                clamp(max(ys), image.height),
            ]
            lines.append(Line(text.strip(), box, min(1.0, max(0.0, float(score)))))
        return reading_order(lines, image.width)

    def close(self) -> None:
        self._ocr = None


def quiet(level: str) -> None:
    """rapidocr logs through its own 'RapidOCR' logger with its own stderr handler; raise both to `level`."""
    logger = logging.getLogger("RapidOCR")
    logger.setLevel(level.upper())
    for handler in logger.handlers:
        handler.setLevel(level.upper())


def clamp(value, limit: int) -> int:
    return int(min(max(round(float(value)), 0), limit))


def group_rows(lines: list[Line]) -> list[list[Line]]:
    """Consecutive lines (already in reading order) that share a row: they overlap by half the smaller height."""
    rows: list[list[Line]] = []
    for line in lines:
        if rows and same_row(rows[-1][-1], line) and line.box[0] >= rows[-1][-1].box[0]:
            rows[-1].append(line)
        else:
            rows.append([line])
    return rows


def same_row(a: Line, b: Line) -> bool:
    overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    smaller = min(a.box[3] - a.box[1], b.box[3] - b.box[1])
    return smaller > 0 and overlap >= smaller / 2


def by_rows(lines: list[Line]) -> list[Line]:
    """Top to bottom; lines that share a row left to right (rapidocr's own sort compares only top-left corners)."""
    rows: list[list[Line]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        row = rows[-1] if rows else None
        if row and any(same_row(other, line) for other in row):
            row.append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda ln: ln.box[0])]


def reading_order(lines: list[Line], page_width: int) -> list[Line]:
    """Rows top to bottom; but a page in columns is read column by column.

    A column gutter is a vertical strip no line crosses, with at least 3 lines of running text on each side
    (their median width at least 30% of the text's width, which keeps a receipt's price column on its item's row).
    Lines wider than half the text (titles across columns) cut the page into sections that are read in turn.
    """
    if len(lines) < 6:
        return by_rows(lines)
    left = min(ln.box[0] for ln in lines)
    right = max(ln.box[2] for ln in lines)
    span = max(right - left, 1)
    narrow = [ln for ln in lines if ln.box[2] - ln.box[0] <= span / 2]
    gutter = find_gutter(narrow, span)
    if gutter is None:
        return by_rows(lines)
    ordered: list[Line] = []
    section: list[Line] = []

    def flush():
        west = [ln for ln in section if ln.box[2] <= gutter]
        east = [ln for ln in section if ln.box[2] > gutter]
        ordered.extend(reading_order(west, page_width) + reading_order(east, page_width))
        section.clear()

    for line in by_rows(lines):
        if line.box[2] - line.box[0] > span / 2 or (line.box[0] < gutter < line.box[2]):
            flush()
            ordered.append(line)
        else:
            section.append(line)
    flush()
    return ordered


def find_gutter(lines: list[Line], span: int) -> float | None:
    """The middle of the widest vertical strip that no line crosses and that has running text on both sides."""
    best, best_width = None, 0
    edges = sorted(lines, key=lambda ln: ln.box[0])
    reach = edges[0].box[2] if edges else 0
    for line in edges[1:]:
        if line.box[0] > reach:  # a strip from `reach` to this line's left edge that nothing crosses
            x = (reach + line.box[0]) / 2
            west = [ln.box[2] - ln.box[0] for ln in lines if ln.box[2] <= x]
            east = [ln.box[2] - ln.box[0] for ln in lines if ln.box[0] >= x]
            width = line.box[0] - reach
            if is_text_column(west, span) and is_text_column(east, span) and width > best_width:
                best, best_width = x, width
        reach = max(reach, line.box[2])
    return best


def is_text_column(widths: list[int], span: int) -> bool:
    return len(widths) >= 3 and sorted(widths)[len(widths) // 2] >= 0.3 * span
