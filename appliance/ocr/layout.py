"""Reading order and plain text of a page from its text lines' boxes: columns one after the other, paragraphs joined.

The CPU engine's recogniser gives text lines with boxes and nothing about blocks, so reading its lines top to
bottom interleaves the columns of a newspaper or a report ("Elections mark start of next David.Risinger@..."), and
a box of facts beside a column lands inside a paragraph. The order is rebuilt from geometry alone, a variant of
the recursive XY-cut:

0. Lines the detector ran across a narrow gutter are cut where the next column starts (`cut_at_column_starts`,
   from the recogniser's word boxes); gutters are measured on the words' ink, not the detector's looser boxes.
1. Bands: lines whose vertical extents overlap (by more than a third of a line) form a band: one row of the page,
   or a stretch where columns with unaligned lines interleave.
2. Sections: consecutive bands are gathered while their lines together still leave a vertical strip free of
   text (a gutter) between them. A line across every strip (a title, a paragraph across the columns) ends one.
3. Columns: a section whose gutter has running text on both sides (`is_column`) is split there and each side is
   ordered again the same way (three columns, a sidebar, columns in a column). Otherwise the section is read in
   rows, top to bottom and left to right within a row: a receipt's prices and a form's labels are not running
   text, so they stay on their item's row.
4. Paragraphs: in a column 12+ line heights wide (narrower ones hold lists of facts), a row continues the row
   above when both are one line of the same size, it starts at the column's left edge, no further below than the
   column's usual spacing plus 0.4 line, and the row above was full (the new row's first word would not have
   fitted at its end) or ended in a hyphenated word. A hyphen between Latin letters at the line end is dropped
   ("infor-" + "mation"); lines with Chinese or Japanese at the join meet without a space; others with one.

Pure functions over anything with `.text` and `.box` (x1, y1, x2, y2 in pixels), so they are tested on boxes alone.
"""

from __future__ import annotations

import re
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Line:
    """One recognised text line; `words` (text, box) when the recogniser gives them."""

    text: str
    box: list[int]  # x1, y1, x2, y2
    confidence: float = 1.0
    words: list[tuple[str, list[int]]] = field(default_factory=list)


class Boxed(Protocol):
    text: str
    box: Sequence[int]


def height(line: Boxed) -> int:
    return line.box[3] - line.box[1]


def width(line: Boxed) -> int:
    return line.box[2] - line.box[0]


def ink(line: Boxed) -> tuple[int, int]:
    """The line's left and right edge: its words' where it has them (the detector's box may reach into a gutter)."""
    words = getattr(line, "words", None)
    if words:
        return min(box[0] for _, box in words), max(box[2] for _, box in words)
    return line.box[0], line.box[2]


def line_height(lines: Sequence[Boxed]) -> float:
    return statistics.median(height(line) for line in lines) if lines else 0.0


# ---- lines run across a gutter ------------------------------------------------------------------------------


def cut_at_column_starts(lines: Sequence[Line]) -> list[Line]:
    """Lines the detector ran across a narrow gutter (about an em wide) cut in two: at a word gap of 0.5+ line
    heights, 4+ line heights into the line, after which the next word starts where 3+ other lines start (a
    column's left edge). Lines without word boxes stay as they are."""
    line_px = line_height(lines)
    starts = sorted(line.box[0] for line in lines)
    return [piece for line in lines for piece in _cut(line, starts, line_px)]


def _cut(line: Line, starts: list[int], line_px: float) -> list[Line]:
    words = line.words
    for i in range(1, len(words)):
        end, start = words[i - 1][1][2], words[i][1][0]
        if start - end < 0.5 * line_px or start - line.box[0] < 4 * line_px:
            continue
        if bisect_right(starts, start + line_px / 2) - bisect_left(starts, start - line_px / 2) >= 3:
            y1, y2 = line.box[1], line.box[3]
            left = Line(_words_text(words[:i]), [line.box[0], y1, end, y2], line.confidence, words[:i])
            right = Line(_words_text(words[i:]), [start, y1, line.box[2], y2], line.confidence, words[i:])
            return [left, *_cut(right, starts, line_px)]
    return [line]


def _words_text(words: list[tuple[str, list[int]]]) -> str:
    text = ""
    for word, _ in words:
        text += _space(text, word) + word
    return text


# ---- order ---------------------------------------------------------------------------------------------------

# A gutter is at least this many line heights wide: an em-wide gutter leaves a third of a line between the boxes.
NARROWEST_GUTTER = 0.3


def same_row(a: Boxed, b: Boxed) -> bool:
    """Overlapping by half the smaller height."""
    overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    smaller = min(height(a), height(b))
    return smaller > 0 and overlap >= smaller / 2


def rows(lines: Sequence[Boxed]) -> list[list[Boxed]]:
    """Top to bottom; lines that share a row left to right (rapidocr's own sort compares only top-left corners)."""
    found: list[list[Boxed]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        if found and any(same_row(other, line) for other in found[-1]):
            found[-1].append(line)
        else:
            found.append([line])
    return [sorted(row, key=lambda ln: ln.box[0]) for row in found]


def bands(lines: Sequence[Boxed]) -> list[list[Boxed]]:
    """Runs of lines, top to bottom, each overlapping the run's extent by more than a third of its height."""
    found: list[list[Boxed]] = []
    bottom = 0
    for line in sorted(lines, key=lambda ln: ln.box[1]):
        if found and bottom - line.box[1] > height(line) / 3:
            found[-1].append(line)
        else:
            found.append([line])
            bottom = line.box[3]
        bottom = max(bottom, line.box[3])
    return found


def gutters(lines: Sequence[Boxed], narrowest: float) -> list[tuple[int, int]]:
    """The vertical strips (x from, x to) between the lines that no line crosses, at least `narrowest` wide."""
    spans = sorted(ink(line) for line in lines)
    found, reach = [], spans[0][1] if spans else 0
    for x1, x2 in spans[1:]:
        if x1 - reach >= narrowest:
            found.append((reach, x1))
        reach = max(reach, x2)
    return found


def is_column(side: Sequence[Boxed], across: Sequence[Boxed], gutter_width: int, line_px: float) -> bool:
    """Running text on one side of a gutter: two or more lines, most of them 4+ line heights wide and either twice
    the gutter or 8+ line heights wide (prose, not a table's cells); or, beside a wider gutter, lines of about one
    width (a box of facts) that do not pair up row by row with the lines across (a table's or a form's do)."""
    if len(side) < 2:
        return False
    widths = sorted(width(line) for line in side)
    typical = widths[len(widths) // 2]
    if typical < 4 * line_px:
        return False
    if typical >= 2 * gutter_width or typical >= 8 * line_px:  # lines of prose, not a table's cells
        return True
    even = sum(w >= 0.7 * widths[-1] for w in widths) >= 0.6 * len(widths)
    return even and not (paired(side, across) and paired(across, side))


def paired(lines: Sequence[Boxed], others: Sequence[Boxed]) -> bool:
    """Whether 80% of `lines` share a row with one of `others`."""
    return sum(any(same_row(line, other) for other in others) for line in lines) >= 0.8 * len(lines)


def split_columns(section: Sequence[Boxed], line_px: float) -> tuple[list[Boxed], list[Boxed]] | None:
    """The section's lines left and right of its widest gutter with running text on both sides; None if none."""
    for x1, x2 in sorted(gutters(section, NARROWEST_GUTTER * line_px), key=lambda g: g[0] - g[1]):
        left = [line for line in section if ink(line)[1] <= x1]
        right = [line for line in section if ink(line)[1] > x1]
        if is_column(left, right, x2 - x1, line_px) and is_column(right, left, x2 - x1, line_px):
            return left, right
    return None


def columns(lines: Sequence[Boxed]) -> list[list[Boxed]]:
    """The page's columns in reading order, each a list of its lines in reading order (see the module docstring).

    Stretches read as one (no columns found) that follow each other are one column, so a paragraph may go on
    across them."""
    line_px = line_height(lines)
    sections: list[list[Boxed]] = []
    for band in bands(lines):
        if sections and gutters([*sections[-1], *band], NARROWEST_GUTTER * line_px):
            sections[-1].extend(band)
        else:
            sections.append(list(band))
    found: list[list[Boxed]] = []
    whole = False  # whether found[-1] is a stretch read in rows at this level
    for section in sections:
        split = split_columns(section, line_px)
        if split:
            found.extend(columns(split[0]) + columns(split[1]))
            whole = False
        elif whole:
            found[-1].extend(section)
        else:
            found.append(list(section))
            whole = True
    return [[line for row in rows(column) for line in row] for column in found]


def reading_order(lines: Sequence[Boxed]) -> list[Boxed]:
    """Every line once, columns one after the other, rows top to bottom within a column."""
    return [line for column in columns(lines) for line in column]


# ---- plain text ----------------------------------------------------------------------------------------------

# Scripts written without spaces between words: CJK ideographs, kana, CJK and full-width punctuation.
_NO_SPACES = re.compile(r"[\u2e80-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_HYPHENATED = re.compile(r"[A-Za-z]{2}[-\u00ad\u2010]$")


def join(before: str, after: str) -> str:
    """Two lines of one paragraph as one text."""
    if _HYPHENATED.search(before) and after[:1].islower() and after[:1].isascii():
        return before[:-1] + after
    return before + _space(before, after) + after


def _space(before: str, after: str) -> str:
    """What goes between two pieces of text on one line: nothing at a CJK character or at either end."""
    if not before or not after or _NO_SPACES.match(before[-1]) or _NO_SPACES.match(after[0]):
        return ""
    return " "


def first_word_px(line: Boxed) -> float:
    """Roughly how wide the line's first word is (one character for text without spaces)."""
    text = line.text.strip()
    word = text[:1] if _NO_SPACES.match(text[:1]) else text.split(" ")[0]
    return width(line) * len(word) / max(len(text), 1)


def continues(above: list[Boxed], row: list[Boxed], column: tuple[int, int, float]) -> bool:
    """Whether `row` goes on with the paragraph of the row above it; `column` is its left and right edge and the
    usual space between its rows (see the module docstring)."""
    left, right, spacing = column
    if len(above) != 1 or len(row) != 1:  # rows of several boxes are table rows: a receipt's item and price
        return False
    a, b = above[0], row[0]
    small, big = sorted((height(a), height(b)))
    if small <= 0 or right - left < 12 * small or small < 0.75 * big:
        return False
    if b.box[1] - a.box[3] > spacing + 0.4 * small or b.box[0] - left > 0.6 * small:
        return False
    hyphenated = _HYPHENATED.search(a.text) and b.text[:1].islower()
    return bool(hyphenated) or right - a.box[2] <= first_word_px(b) + 0.5 * small


def paragraphs(lines: Sequence[Boxed]) -> list[str]:
    """The page's text, one paragraph a string, in reading order; a row of several boxes joined with spaces."""
    found: list[str] = []
    for column in columns(lines):
        column_rows = rows(column)
        tops = [min(line.box[1] for line in row) for row in column_rows]
        bottoms = [max(line.box[3] for line in row) for row in column_rows]
        gaps = [top - bottom for top, bottom in zip(tops[1:], bottoms)]
        spacing = min(max(statistics.median(gaps), 0), line_height(column)) if gaps else 0
        edges = min(ln.box[0] for ln in column), max(ln.box[2] for ln in column), spacing
        for i, row in enumerate(column_rows):
            text = " ".join(line.text for line in row)
            if i and continues(column_rows[i - 1], row, edges):
                found[-1] = join(found[-1], text)
            else:
                found.append(text)
    return found


def plain_text(lines: Sequence[Boxed]) -> str:
    return "\n".join(paragraphs(lines))
