"""The Engine protocol every OCR engine follows, and the engines' names.

An engine turns one page image into a `Page`: boxes in pixels of the image it was given, text, and whatever the task
adds (markdown, fields, translation). Loading, capping and post-processing are the engine's business; reading files,
page loops, timings and the result document are the pipeline's (`appliance.ocr.pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from appliance.ocr.errors import TaskNotSupported
from appliance.ocr.result import EngineInfo, Page
from appliance.ocr.tasks import Request, Task

ENGINE_NAMES = ("auto", "hunyuan-vllm", "hunyuan-llamacpp", "hunyuan-transformers", "cpu")
# What a person reads on the start screen ("loading the CPU engine").
ENGINE_TITLES = {
    "hunyuan-vllm": "HunyuanOCR (vLLM)",
    "hunyuan-llamacpp": "HunyuanOCR (llama.cpp)",
    "hunyuan-transformers": "HunyuanOCR (transformers)",
    "cpu": "CPU",
}
# on_text(text_so_far, tokens_so_far): a model engine calls it a few times a second while the answer streams in
# (the job page shows it); engines that do not stream accept it and never call it.
OnText = Callable[[str, int], None]


class Engine(Protocol):
    info: EngineInfo
    tasks: frozenset[Task]

    def recognize(self, image: Image.Image, request: Request, on_text: OnText | None = None) -> Page: ...

    def close(self) -> None: ...


def check_task(engine: Engine, request: Request) -> None:
    """Refuse a task the engine cannot do, before any work, with a message that says what is needed."""
    if request.task not in engine.tasks:
        raise TaskNotSupported(request.task.value, engine.info.name, {t.value for t in engine.tasks})
