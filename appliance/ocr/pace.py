"""How long a page takes on THIS PC, per task: measured here, never a constant of the build machine.

Two measurements, the second replacing the first as soon as it exists:
  - at start, the model server's own timings of the engine's warm-up page (llama-server reports the prompt's
    milliseconds per token, image included, and its decode rate): `from_timings` scales them to a page at the
    engine's pixel cap and a task's usual answer length. The vision encoder's cost grows a little faster than
    linearly with the image's tokens, so this is a floor; it is shown as "about".
  - after real pages, the median seconds per page of this PC's finished jobs of that task (`from_jobs`).
The start page's task cards show it (webui), and the job queue's engine status carries it (`page_seconds`).
While a job runs, `LivePage` holds its current page's answer as it streams in, and `seconds_left` turns these
figures and that answer's own decode rate into the time left (GET /jobs/<id>'s `live`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

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


# ---- the running page: its answer as it streams in, and an honest estimate of the time left ---------------------

TAIL_CHARS = 2000  # how much of the page's answer the job page shows while it is written
MIN_DECODE_SECONDS = 1.0  # a decode rate from less than this (or from fewer tokens) is noise
MIN_DECODE_TOKENS = 4


@dataclass
class LivePage:
    """The page a running job is reading, kept in memory by the job queue while its answer streams in (a model
    engine calls back with the text so far; rapidocr and blank pages never do). Times are time.monotonic()."""

    task: str
    number: int
    total: int
    started: float  # when this page began
    job_started: float  # when the job's first page began
    pages_read: int = 0  # the job's pages before this one that went to the engine (blank pages cost next to nothing)
    text: str = ""  # the answer's last TAIL_CHARS characters
    chars: int = 0  # the answer's whole length so far: with `text`, a caller can tell how much is new
    tokens: int = 0
    first_token: float | None = None  # when the first token came: what precedes it is reading the image

    def update(self, text: str, tokens: int, now: float) -> None:
        if self.first_token is None and tokens > 0:
            self.first_token = now
        self.text, self.chars, self.tokens = text[-TAIL_CHARS:], len(text), tokens

    def report(self, page_seconds: float | None, now: float) -> dict:
        """GET /jobs/<id>'s `live`. `page_seconds`: a usual page of this task on this PC (pace's figures), None
        when unknown; the pages this job already read beat it (blank pages skipped were not read: they do not
        count, or a scan with empty back sides would halve the figure)."""
        if self.pages_read:
            page_seconds = (self.started - self.job_started) / self.pages_read
        left, longer = seconds_left(
            Task(self.task),
            elapsed=now - self.started,
            tokens=self.tokens,
            decoding=None if self.first_token is None else now - self.first_token,
            page_seconds=page_seconds,
            pages_after=self.total - self.number,
        )
        return {
            "page": self.number,
            "text": self.text,
            "chars": self.chars,
            "tokens": self.tokens,
            "seconds_left": None if left is None else round(left),
            "longer_than_usual": longer,
        }


def seconds_left(
    task: Task, elapsed: float, tokens: int, decoding: float | None, page_seconds: float | None, pages_after: int
) -> tuple[float | None, bool]:
    """(seconds until the job is done, or None; whether this page is already longer than usual).

    The current page: once tokens flow, its usual answer length (ANSWER_TOKENS) at THIS answer's decode rate;
    before that, a usual page's seconds minus the time spent. Then `pages_after` usual pages. An answer already
    longer than usual, or a page already slower than usual, gets no number: nobody knows when it ends."""
    usual = ANSWER_TOKENS[task]
    if tokens > usual:
        return None, True
    if decoding is not None and decoding >= MIN_DECODE_SECONDS and tokens >= MIN_DECODE_TOKENS:
        rate = (tokens - 1) / decoding  # tokens after the first one, over the time since it came
        current = (usual - tokens) / rate
        if page_seconds is None:  # nothing better known: this page's own reading time plus a usual answer
            page_seconds = (elapsed - decoding) + usual / rate
    elif page_seconds is not None:
        current = page_seconds - elapsed
        if current < 0:
            return None, True
    else:
        return None, False
    return current + pages_after * page_seconds, False
