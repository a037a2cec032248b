"""What both HunyuanOCR engines share: model identity, sampling, and recognize() (capping before, parsing after).

The engines (in-process transformers; a model server through the OpenAI-protocol client) differ only in how they turn
(image, prompt) into the model's answer string: `generate`. Capping the image before and parsing the answer after are
here, so every engine gives the same `Page` for the same answer. The model directory's facts (manifest, identity,
version) are appliance.model_dir's.
"""

from __future__ import annotations

import os

from PIL import Image

from appliance.model_dir import DEFAULT_VERSION, check_model_dir, model_info, model_version
from appliance.ocr import images, parse
from appliance.ocr.engines.base import check_task
from appliance.ocr.result import EngineInfo, Page
from appliance.ocr.tasks import Request, Task

# Greedy decoding per model version (hunyuanocr.md, "Running it"). 1.0 is the default: it is what an unlabelled
# directory most likely holds, and a penalty on 1.0 changes its answers.
REPETITION_PENALTY = {"1.0": 1.0, "1.5": 1.08}


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

    def recognize(self, image: Image.Image, request: Request) -> Page:
        check_task(self, request)
        # The model's own resize has no upper bound we trust; an uncapped 300-dpi page runs out of GPU memory.
        # to_rgb first: transparent areas become white paper (a plain convert makes them black).
        capped = images.cap_pixels(images.to_rgb(image), self.max_pixels)
        raw = self.generate(capped, request.prompt())
        # Boxes are in 0..1000 of the page, so they are scaled to the ORIGINAL size, not the capped one.
        return parse.to_page(raw, request, image.width, image.height)

    def generate(self, image: Image.Image, prompt: str) -> str:
        """The model's answer for one image and one prompt, special tokens skipped."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
