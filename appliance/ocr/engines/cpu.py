"""The CPU engine: rapidocr's PP-OCRv6 detector and recogniser on onnxruntime, for spotting and plain text.

The models ship inside the rapidocr wheel and are loaded by explicit path, so nothing is ever fetched. Lines come
back in reading order, the columns of a page one after the other; the text task's plain text joins each paragraph's
lines (appliance.ocr.layout says how).
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import version
from pathlib import Path

from PIL import Image

from appliance.ocr.engines.base import OnText, check_task
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.layout import Line, cut_at_column_starts, plain_text, reading_order
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
            text = plain_text(lines)
        else:
            text = "\n".join(line.text for line in lines)
        return Page(text=text, blocks=blocks, width=image.width, height=image.height)

    def read_lines(self, image: Image.Image) -> list[Line]:
        """Every text line rapidocr finds, as an upright rectangle clamped to the image, in reading order."""
        result = self._ocr(image, return_word_box=True)  # word boxes cost nothing: the recogniser's own alignment
        if not result.txts:
            return []
        lines = []
        for quad, text, score, words in zip(result.boxes, result.txts, result.scores, result.word_results):
            boxes = [upright(word_quad, image) for _, _, word_quad in words or ()]
            lines.append(
                Line(
                    text.strip(),
                    upright(quad, image),
                    min(1.0, max(0.0, float(score))),
                    [(word, box) for (word, _, _), box in zip(words or (), boxes)],
                )
            )
        return reading_order(cut_at_column_starts(lines))

    def close(self) -> None:
        self._ocr = None


def quiet(level: str) -> None:
    """rapidocr logs through its own 'RapidOCR' logger with its own stderr handler; raise both to `level`."""
    logger = logging.getLogger("RapidOCR")
    logger.setLevel(level.upper())
    for handler in logger.handlers:
        handler.setLevel(level.upper())


def upright(quad, image: Image.Image) -> list[int]:
    """The rectangle around a quadrilateral, clamped to the image: x1, y1, x2, y2."""
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    return [
        clamp(min(xs), image.width),
        clamp(min(ys), image.height),
        clamp(max(xs), image.width),
        clamp(max(ys), image.height),
    ]


def clamp(value, limit: int) -> int:
    return int(min(max(round(float(value)), 0), limit))
