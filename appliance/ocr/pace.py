"""How long a page takes on THIS PC, per task: measured here, never a constant of the build machine.

Two measurements, the second replacing the first as soon as it exists:
  - at start, the model server's own timings of the engine's warm-up page (llama-server reports the prompt's
    milliseconds per token, image included, and its decode rate): `from_timings` scales them to a page at the
    engine's pixel cap and a task's usual answer length. The vision encoder's cost grows a little faster than
    linearly with the image's tokens, so this is a floor; it is shown as "about".
  - after real pages, the median seconds per page of this PC's finished jobs of that task (`from_jobs`).
The start page's task cards show it (webui), and the job queue's engine status carries it (`page_seconds`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from appliance.ocr.tasks import Task

PIXELS_PER_TOKEN = 32 * 32  # HunyuanOCR's ViT: 16 px patches, 2x2 merged into one token
# The usual answer of each task in tokens (a full A4 page of Markdown is ~1000): what a page's decode costs.
ANSWER_TOKENS = {
    Task.SPOTTING: 1200,
    Task.TEXT: 800,
    Task.DOC: 1000,
    Task.TABLE: 800,
    Task.FORMULA: 150,
    Task.CHART: 400,
    Task.EXTRACT: 100,
    Task.SUBTITLES: 60,
    Task.TRANSLATE: 1000,
}
RECENT_JOBS = 20  # per task: the median of the last few, so one odd page does not set the figure


def from_timings(timings: dict, max_pixels: int, tasks=tuple(Task)) -> dict[str, float]:
    """{task: seconds for a page at the pixel cap} from a model server's timings of one answer; {} if unusable."""
    try:
        per_token_ms = float(timings["prompt_per_token_ms"])
        decode_per_second = float(timings["predicted_per_second"])
    except (KeyError, TypeError, ValueError):
        return {}
    if per_token_ms <= 0 or decode_per_second <= 0:
        return {}
    prompt = max_pixels / PIXELS_PER_TOKEN * per_token_ms / 1000
    return {Task(t).value: round(prompt + ANSWER_TOKENS[Task(t)] / decode_per_second, 1) for t in tasks}


def from_jobs(rows) -> dict[str, float]:
    """{task: median seconds per page} from finished jobs, newest first: (task, seconds, pages) rows of ONE engine
    (the caller picks them)."""
    seen: dict[str, list[float]] = defaultdict(list)
    for task, seconds, pages in rows:
        if pages and seconds and seconds > 0 and len(seen[task]) < RECENT_JOBS:
            seen[task].append(seconds / pages)
    return {task: round(statistics.median(values), 1) for task, values in seen.items()}
