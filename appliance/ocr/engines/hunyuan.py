"""What both HunyuanOCR engines share: model identity, sampling, and recognize() (capping before, parsing after).

The engines (in-process transformers; a model server through the OpenAI-protocol client) differ only in how they turn
(image, prompt) into the model's answer string: `generate`. Capping the image before and parsing the answer after are
here, so every engine gives the same `Page` for the same answer. The model directory's facts (manifest, identity,
version) are appliance.model_dir's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from PIL import Image

from appliance.model_dir import DEFAULT_VERSION, check_model_dir, model_info, model_version
from appliance.ocr import images, parse
from appliance.ocr.engines.base import OnText, check_task
from appliance.ocr.result import EngineInfo, Page
from appliance.ocr.tasks import Request, Task

# Greedy decoding per model version (hunyuanocr.md, "Running it"). 1.0 is the default: it is what an unlabelled
# directory most likely holds, and a penalty on 1.0 changes its answers.
REPETITION_PENALTY = {"1.0": 1.0, "1.5": 1.08}
REPORT_EVERY = 0.25  # seconds between two on_text calls: the model writes tens of tokens a second, the page polls


class Throttled:
    """An engine's on_text, called at most every `every` seconds; at once for the first token (the estimate of the
    time left needs to know when decoding began). `text` is a function, so the answer is joined only when due."""

    def __init__(self, on_text: OnText | None, every: float | None = None):
        self.on_text = on_text
        self.every = REPORT_EVERY if every is None else every
        self.last = float("-inf")

    def __call__(self, text: Callable[[], str], tokens: int) -> None:
        now = time.monotonic()
        if self.on_text is not None and tokens > 0 and now - self.last >= self.every:
            self.last = now
            self.on_text(text(), tokens)


def repetition_penalty(version: str) -> float:
    return REPETITION_PENALTY.get(version, REPETITION_PENALTY[DEFAULT_VERSION])


class HunyuanEngine:
    """Base of both HunyuanOCR engines: every task, one prompt per request, `generate` supplied by the subclass."""

    name = "hunyuan"
    tasks = frozenset(Task)
    max_pixels = images.MODEL_MAX_PIXELS  # lowered for a GPU sized for less (appliance.gpu.sizing.TIERS)

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "cpu", gguf: bool = False):
        self.model_dir = check_model_dir(model_dir, self.name, gguf=gguf)
        model_id, revision = model_info(self.model_dir)
        self.version = model_version(self.model_dir)
        self.repetition_penalty = repetition_penalty(self.version)
        self.info = EngineInfo(name=self.name, model=model_id, revision=revision, device=device)

    def recognize(self, image: Image.Image, request: Request, on_text: OnText | None = None) -> Page:
        check_task(self, request)
        # The model's own resize has no upper bound we trust; an uncapped 300-dpi page runs out of GPU memory.
        # to_rgb first: transparent areas become white paper (a plain convert makes them black).
        capped = images.cap_pixels(images.to_rgb(image), self.max_pixels)
        raw = self.generate(capped, request.prompt(), on_text=on_text)
        # Boxes are in 0..1000 of the page, so they are scaled to the ORIGINAL size, not the capped one.
        return parse.to_page(raw, request, image.width, image.height)

    def generate(self, image: Image.Image, prompt: str, on_text: OnText | None = None) -> str:
        """The model's answer for one image and one prompt, special tokens skipped; `on_text` follows it as it is
        written (appliance.ocr.engines.base.OnText), at most every REPORT_EVERY seconds."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
