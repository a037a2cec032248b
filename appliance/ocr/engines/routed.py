"""Two engines behind one: each task goes to the engine that runs it best on this PC.

On a PC without a usable NVIDIA card, HunyuanOCR runs on the CPU (llama.cpp) at tens of seconds to minutes a page,
while rapidocr reads a page in seconds: so `spotting` and `text` stay with rapidocr and every other task goes to
HunyuanOCR. Which tasks go where is decided once, in appliance.ocr.engines.select (FAST_CPU_TASKS); this class only
follows it. The job queue and the pipeline ask `serving(engine, task)` for the engine that runs a task, so results,
cache keys and job records name the engine that really did the work.
"""

from __future__ import annotations

from PIL import Image

from appliance.ocr.engines.base import Engine, OnText, check_task
from appliance.ocr.result import Page
from appliance.ocr.tasks import Request, Task


class RoutedEngine:
    """`routes` {task: engine} for the tasks that leave the main engine; the main engine does the rest."""

    def __init__(self, main: Engine, routes: dict[Task, Engine]):
        self.main = main
        self.routes = dict(routes)
        self.info = main.info  # the model engine: what status pages and the start screen name
        self.tasks = frozenset(main.tasks) | frozenset(self.routes)

    def engine_for(self, task: Task) -> Engine:
        return self.routes.get(task, self.main)

    def recognize(self, image: Image.Image, request: Request, on_text: OnText | None = None) -> Page:
        check_task(self, request)
        return self.engine_for(request.task).recognize(image, request, on_text)

    def close(self) -> None:
        for engine in {id(e): e for e in [self.main, *self.routes.values()]}.values():
            engine.close()

    def __getattr__(self, name: str):
        if name == "main":  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        return getattr(self.main, name)  # the main engine's extras (page_seconds, max_pixels, ...)


def serving(engine: Engine, task: Task) -> Engine:
    """The engine that runs `task`: the routed one for a RoutedEngine, else the engine itself."""
    return engine.engine_for(task) if isinstance(engine, RoutedEngine) else engine
