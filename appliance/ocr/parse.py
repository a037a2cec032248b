"""HunyuanOCR's answer (a string) -> our result (`Page`). Pure functions: no torch, no I/O.

Every HunyuanOCR engine (vLLM, transformers) ends with `to_page`, so post-processing is identical whatever ran the
model. The formats are described in shared/reference/hunyuanocr.md; the decisions taken where the model's output is
ambiguous are written next to the code that takes them:

- Spotting (`parse_spotting`): a coordinate tail `(x1,y1),(x2,y2)` (or a 4-point quad) closes a block; the block's
  text is everything since the previous tail, stripped, newlines inside kept. Blocks with empty text are dropped
  (an answer that is only coordinates gives []); text after the last tail is a block with box None.
- Repetition (`is_looping`, `clean_repetition`): one threshold policy (`needed_repeats`) for both, so whatever the
  streaming guard stops on is also cut afterwards. Short units and units without content (markup, rules, leaders,
  empty table cells) must repeat over many more characters before they count, so tables and TOCs survive.
"""

from __future__ import annotations

import ast
import json
import math
import re

from appliance.ocr.result import Block, Page
from appliance.ocr.tasks import Request, Task

# ---------------------------------------------------------------------------------------------------------------
# Spotting

_POINT = r"\(\s*\d+\s*,\s*\d+\s*\)"
# Two corners, or four (a quad); the model's spotting prompt gives two.
_POINTS = rf"{_POINT}\s*,\s*{_POINT}(?:\s*,\s*{_POINT}\s*,\s*{_POINT})?"
_BARE_TAIL = re.compile(_POINTS)
# With special tokens kept, the </quad> may be lost when generation stops: accept it missing.
_QUAD_TAIL = re.compile(rf"<quad>\s*({_POINTS})\s*(?:</quad>)?")
_POINT_VALUES = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TAGS = re.compile(r"</?(?:ref|quad)>")
# A coordinate tail cut short by the token limit, e.g. "World(5,6),(7" or "<quad>(5,6": not text.
_PARTIAL_TAIL = re.compile(r"(?:<quad>)?\s*\(\s*\d+\s*,[\d\s,()]*$|<quad>[\d\s,()]*$")

# Whole answers that mean "there is no text" (compared after lowercasing and dropping spaces and punctuation).
_NO_TEXT = re.compile(
    r"(?:(?:图片|图像|图)中?)?(?:没有|无|不含|未检测到|未识别到)(?:任何)?(?:可识别的?)?(?:文字|文本)(?:内容)?"
    r"|(?:thereis)?no(?:text|words?)(?:found|detected|intheimage|inthisimage)?"
)
_NOT_COUNTED = re.compile(r"[\s.。!！,，:：\"'“”]+")


def means_no_text(answer: str) -> bool:
    """True when the whole answer is empty or a phrase like 没有文字 / no text, not text read from the image."""
    return _NO_TEXT.fullmatch(_NOT_COUNTED.sub("", answer.lower())) is not None or not answer.strip()


def _to_pixels(value: int, size: int) -> int:
    return min(max(round(value * size / 1000), 0), size)


def _box(points_text: str, width: int, height: int) -> list[int]:
    """Points in 0..1000 units -> [x1, y1, x2, y2] in pixels; the bounding box, so corners may come in any order."""
    points = [(int(x), int(y)) for x, y in _POINT_VALUES.findall(points_text)]
    xs = [_to_pixels(x, width) for x, _ in points]
    ys = [_to_pixels(y, height) for _, y in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def parse_spotting(raw: str, width: int, height: int) -> list[Block]:
    """The spotting answer -> text lines with pixel boxes on the original `width` x `height` page.

    Both forms: `<ref>TEXT</ref><quad>(x1,y1),(x2,y2)</quad>` and, with special tokens skipped,
    `TEXT(x1,y1),(x2,y2)TEXT2(...),(...)`. We find the coordinate tails and cut the text between them, which is
    what keeps parentheses inside the text (`ATLANTA (AP)`, `金额(小写)`) intact. When `<quad>` tags are present
    only tagged coordinates count, so a coordinate-like string inside `<ref>` text stays text.
    """
    if means_no_text(raw):
        return []
    tail = _QUAD_TAIL if "<quad>" in raw else _BARE_TAIL
    blocks: list[Block] = []
    start = 0
    for match in tail.finditer(raw):
        text = _TAGS.sub("", raw[start : match.start()]).strip()
        if text:  # a box with no text before it tells the reader nothing
            blocks.append(Block(text=text, box=_box(match.group(0), width, height)))
        start = match.end()
    rest = _TAGS.sub("", _PARTIAL_TAIL.sub("", raw[start:])).strip()
    if rest:
        blocks.append(Block(text=rest, box=None))
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# Field extraction

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes text[start], skipping brackets inside strings; None if unclosed."""
    depth = 0
    quote = None
    escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _load(candidate: str):
    """Strict JSON, then JSON without trailing commas, then a Python literal (single quotes). None if none works."""
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(attempt)
        except ValueError:
            pass
    try:
        return ast.literal_eval(candidate)  # safe: literals only, never calls anything
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _as_object(value) -> dict | None:
    """A dict as is; a list of dicts merged (the first non-empty value of a key wins, as pages merge); else None."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        objects = [item for item in value if isinstance(item, dict)]
        if not objects:
            return None
        merged: dict = {}
        for item in objects:
            for key, v in item.items():
                if merged.get(str(key)) in (None, "", [], {}):
                    merged[str(key)] = v
        return merged
    return None


def extract_json(raw: str) -> dict | None:
    """The JSON object in the model's answer: inside ```json fences or surrounded by prose. None if there is none.

    Tolerates trailing commas and single quotes. A top-level list of objects is merged into one object, the first
    non-empty value of each key winning (the model sometimes answers `[{"name": ..}, {"date": ..}]`).
    """
    places = [m.group(1) for m in _FENCE.finditer(raw)] + [raw]
    for text in places:
        i = 0
        while i < len(text):
            if text[i] not in "{[":
                i += 1
                continue
            end = _balanced_end(text, i)
            if end is None:  # unclosed (cut off): give up rather than return an object nested inside it
                break
            found = _as_object(_load(text[i:end]))
            if found is not None:
                return found
            # Skip the whole bracketed span: an object inside a list/object that failed to parse is not the answer.
            i = end
    return None


# ---------------------------------------------------------------------------------------------------------------
# Document Markdown

# Exactly what the model prints for a box; "(see 1, 2)" or "f(1,2)" is not it.
_COORD_PAIR = re.compile(r"[ \t]*\(\d+,\d+\),\(\d+,\d+\)")
_QUAD = re.compile(r"<quad>[\d\s,()]*(?:</quad>)?")
_LAYOUT_TAGS = re.compile(r"</?(?:ref|quad|pFig)>")
# Math where a coordinate-looking pair is mathematics, never a box: $$..$$, \[..\], \(..\), $..$ (one line).
_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$(?!\$)[^$\n]+?\$", re.S)


def _strip_outside_math(part: str) -> str:
    return _LAYOUT_TAGS.sub("", _COORD_PAIR.sub("", _QUAD.sub("", part)))


def strip_coordinates(markdown: str) -> str:
    """Remove boxes and layout tags left in document Markdown; keep figure captions, LaTeX, HTML tables and text.

    `<pFig>caption</pFig><quad>(x1,y1),(x2,y2)</quad>` -> `caption`; a bare `(x1,y1),(x2,y2)` goes too, except
    inside math.
    """
    out = []
    start = 0
    for math_span in _MATH.finditer(markdown):
        out.append(_strip_outside_math(markdown[start : math_span.start()]))
        out.append(math_span.group(0))
        start = math_span.end()
    out.append(_strip_outside_math(markdown[start:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Repetition

MAX_UNIT = 256
# A repeated unit counts as a loop only when the run is at least this long in characters (as well as min_repeats
# units). Units with words (letters, digits, CJK): 64, so "12121212" or "哈哈哈哈" survive but a sentence repeated
# 4 times does not. Units without content (markup, "-", ".", "<td></td>", "|---"): 512, because tables with many
# empty cells, table rules and TOC leaders are legitimate; a real loop runs for thousands of characters anyway.
MIN_RUN_CHARS_WORDS = 64
MIN_RUN_CHARS_MARKUP = 512

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_WORD = re.compile(r"\w")


def _has_content(unit: str) -> bool:
    """Whether the unit holds words once HTML tags are removed. Rotated so a tag cut in two (`td></td><`) is whole."""
    if "<" in unit:
        cut = unit.index("<")
        unit = _HTML_TAG.sub("", unit[cut:] + unit[:cut])
    return _WORD.search(unit) is not None


def needed_repeats(unit: str, min_repeats: int) -> int:
    """How many consecutive copies of `unit` make a loop (the policy shared by is_looping and clean_repetition)."""
    return _needed(len(unit), _has_content(unit), min_repeats)


def _needed(size: int, has_content: bool, min_repeats: int) -> int:
    min_chars = MIN_RUN_CHARS_WORDS if has_content else MIN_RUN_CHARS_MARKUP
    return max(min_repeats, math.ceil(min_chars / size))


def is_looping(text: str, min_repeats: int = 8, max_unit: int = MAX_UNIT) -> bool:
    """True when the text ENDS with one unit (1..max_unit chars) repeated enough times in a row: stop generating.

    Called while streaming, so it only reads the tail: per unit length one O(unit) comparison, and the full
    O(repeats * unit) comparison only for lengths whose last two copies already agree.
    """
    window = text[-max(max_unit * min_repeats, MIN_RUN_CHARS_MARKUP + max_unit) :]
    if not window:
        return False
    # A tail of one repeated character ("-----", "....."): every unit made of that character repeats over exactly
    # this run, so those unit lengths are decided by arithmetic instead of comparing up to 512 chars each.
    same_run = len(window) - len(window.rstrip(window[-1]))
    same_has_content = _has_content(window[-1])
    for size in range(1, min(max_unit, len(window) // min_repeats) + 1):
        if 2 * size <= same_run:
            if same_run >= size * _needed(size, same_has_content, min_repeats):
                return True
            continue
        unit = window[-size:]
        if window[-2 * size : -size] != unit:
            continue
        span = size * needed_repeats(unit, min_repeats)
        if span > len(window):
            continue
        tail = window[-span:]
        if tail[size:] == tail[:-size]:  # period `size` over the whole span
            return True
    return False


def clean_repetition(text: str, min_repeats: int = 4) -> tuple[str, bool]:
    """Collapse every run of a unit (1..256 chars) repeated enough times in a row to one copy: (cleaned, cut?).

    "Enough" is `needed_repeats`: at least min_repeats, and longer for short or content-free units (see
    MIN_RUN_CHARS_*). Unit lengths go from short to long, so "abab..." is cut as "ab", never as "abab".
    """
    cut = False
    for size in range(1, MAX_UNIT + 1):
        if len(text) < size * min_repeats:
            break
        # Find runs with the smallest possible count; needed_repeats decides per run (runs are rare, so it's cheap).
        runs = re.compile(rf"(.{{{size}}})\1{{{min_repeats - 1},}}", re.S)

        def collapse(run: re.Match, size: int = size) -> str:
            nonlocal cut
            unit = run.group(1)
            if len(run.group(0)) // size < needed_repeats(unit, min_repeats):
                return run.group(0)
            cut = True
            return unit

        text = runs.sub(collapse, text)
    return text, cut


# ---------------------------------------------------------------------------------------------------------------
# Answer -> Page

WARN_REPEATED = "repeated output was cut"
WARN_NOT_JSON = "the model's answer was not JSON"

_MARKDOWN_TASKS = (Task.DOC, Task.TABLE, Task.FORMULA, Task.CHART)


def _fields(answer: str, request: Request) -> tuple[dict, list[str]]:
    """EXTRACT: the fields dict and any warning. One field: the prompt asks for the bare value."""
    found = extract_json(answer)
    if len(request.fields) == 1:
        key = request.fields[0]
        if found is None:
            return {key: answer.strip()}, []
        if key not in found and len(found) == 1:  # e.g. {"value": "x"}: the one value is the answer
            return {key: next(iter(found.values()))}, []
        return found, []
    if found is None:
        return {}, [WARN_NOT_JSON]
    return found, []


def to_page(raw: str, request: Request, width: int, height: int) -> Page:
    """HunyuanOCR's answer for one page image -> `Page`, per task. `raw` is kept as it came."""
    cleaned, cut = clean_repetition(raw)
    page = Page(raw=raw, width=width, height=height)
    if cut:
        page.warnings.append(WARN_REPEATED)
    task = request.task
    if task is Task.SPOTTING:
        page.blocks = parse_spotting(cleaned, width, height)
        page.text = "\n".join(block.text for block in page.blocks)
    elif task in (Task.TEXT, Task.SUBTITLES):
        page.text = "" if means_no_text(cleaned) else cleaned
    elif task in _MARKDOWN_TASKS:
        page.markdown = strip_coordinates(cleaned).strip()
        page.text = page.markdown
    elif task is Task.EXTRACT:
        page.fields, warnings = _fields(cleaned, request)
        page.warnings.extend(warnings)
        page.text = json.dumps(page.fields, ensure_ascii=False, indent=2)
    elif task is Task.TRANSLATE:
        page.translation = cleaned.strip()
        page.text = page.translation
    else:  # a new Task must be handled here, not fall through silently
        raise ValueError(f"no parser for task '{task}'")
    page.text = page.text.strip()
    return page
