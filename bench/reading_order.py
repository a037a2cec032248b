"""Reading order of the CPU engine's plain text on pages in columns: character error rate AND order, per page.

    python3 -m bench.reading_order          # `make bench`; --show prints each page's text
    python3 -m bench.reading_order --save out/    # also writes the pages as PNGs (to look at them)

The pages are drawn here with Pillow (seeded, so every run sees the same pixels), each with its true reading order:
two and three English columns under a full-width title with hyphenated line ends, two Chinese columns, a column
with a boxed sidebar (English and Chinese), and two columns / a full-width paragraph / two columns. Text flows from
the bottom of one column to the top of the next, as in print, so reading across columns mixes sentences. One
page's gutters are an em wide, narrow enough for the detector to run lines across them.

Figures:
- CER: edit distance to the true text / its length, white space runs made one space (`cer` of the boot test). The
  true text is each paragraph on one line: English lines joined with a space and a hyphenated line end joined into
  its word, Chinese lines joined with nothing, as the paragraph was written before it was set in lines.
- order: of each pair of consecutive drawn lines (of 8 or more characters), the fraction whose second line follows
  the first in the output (within a few characters), so lines read across columns count as out of order even
  when each column's lines keep their order. Each line is found by the cheapest approximate match of its
  characters (white space ignored) in the output; a line not found (over a third of it wrong) breaks its pairs.

Before appliance.ocr.layout (commit c5dfd04: one global gutter, lines kept as lines) and after, 2 shared cores:

    page          CER before / after   order before / after
    en-2col         0.014 / 0.000        1.000 / 1.000     (hyphenated line ends split)
    en-3col         0.724 / 0.000        0.021 / 1.000     (rows read across the three columns)
    zh-2col         0.044 / 0.001        1.000 / 1.000     (a space at each Chinese line break)
    en-sidebar      0.124 / 0.001        0.733 / 1.000     (the contact box inside the paragraph beside it)
    zh-sidebar      0.186 / 0.000        0.667 / 1.000     (股价：7.15元 inside the paragraph beside it)
    en-sections     0.014 / 0.002        1.000 / 1.000
    en-3col-1em     0.514 / 0.001        0.750 / 1.000     (lines run across the gutters, rows across columns)
    mean            0.231 / 0.001        0.739 / 1.000     (3-23 s a page)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.dataset import BOLD, CJK, EN_WORDS, SANS, SERIF, ZH_CHARS
from imagebuilder.boottest.checks import cer

# Long words, so that a column's line ends hyphenate as in print.
LONG_WORDS = (
    "international responsibility administration communication infrastructure organisation performance "
    "environmental documentation recommendation implementation representative transportation "
    "understanding manufacturing extraordinary independently collaboration"
).split()


@dataclass
class Line:
    text: str  # as drawn, with the hyphen a split word got
    source: str  # the paragraph's characters this line holds (no added hyphen)
    box: tuple[int, int, int, int]


@dataclass
class Layout:
    name: str
    image: Image.Image
    paragraphs: list[str] = field(default_factory=list)  # true text, in reading order
    lines: list[Line] = field(default_factory=list)  # drawn lines, in reading order

    @property
    def text(self) -> str:
        return "\n".join(self.paragraphs)


@dataclass
class Frame:
    """A rectangle text flows into: x, y, width, height in pixels."""

    x: int
    y: int
    width: int
    height: int


class Typesetter:
    """Sets paragraphs into frames one after the other, line by line, as a page layout program does."""

    def __init__(self, layout: Layout, font_path: str, px: int, cjk: bool = False, hyphenate: bool = True):
        self.layout, self.draw = layout, ImageDraw.Draw(layout.image)
        self.font, self.px, self.cjk, self.hyphenate = ImageFont.truetype(font_path, px), px, cjk, hyphenate
        self.pitch = int(px * 1.45)  # baseline to baseline

    def flow(self, paragraphs: list[str], frames: list[Frame]) -> None:
        """Set the paragraphs until they or the frames run out; the true text is what was set."""
        frames = list(frames)
        frame = frames.pop(0)
        y = frame.y
        for paragraph in paragraphs:
            tokens = list(paragraph) if self.cjk else paragraph.split(" ")
            written, hyphenated = "", False  # the paragraph as set so far; whether its last line split a word
            while tokens:
                if y + self.px * 1.2 > frame.y + frame.height:
                    if not frames:
                        break
                    frame = frames.pop(0)
                    y = frame.y
                drawn, source, tokens = self.fill(tokens, frame.width)
                self.put(frame.x, y, drawn, source)
                written += ("" if self.cjk or not written or hyphenated else " ") + source
                hyphenated = drawn != source
                y += self.pitch
            if written:
                self.layout.paragraphs.append(written)
            if tokens:  # out of frames
                return
            y += int(self.px * 0.8)

    def fill(self, tokens: list[str], width: int) -> tuple[str, str, list[str]]:
        """One line's worth of tokens: (text drawn, its source characters, the tokens left)."""
        joiner = "" if self.cjk else " "
        taken: list[str] = []
        for i, token in enumerate(tokens):
            candidate = joiner.join([*taken, token])
            if self.font.getlength(candidate) <= width or not taken:
                taken.append(token)
                continue
            if self.hyphenate and not self.cjk and len(token) >= 7 and token.isalpha():
                for cut in range(len(token) - 3, 2, -1):
                    head = joiner.join([*taken, token[:cut]])
                    if self.font.getlength(head + "-") <= width:
                        return head + "-", head, [token[cut:], *tokens[i + 1 :]]
            text = joiner.join(taken)
            return text, text, tokens[i:]
        text = joiner.join(taken)
        return text, text, []

    def put(self, x: int, y: int, text: str, source: str) -> None:
        self.draw.text((x, y), text, font=self.font, fill=(20, 20, 20))
        self.layout.lines.append(Line(text, source, self.draw.textbbox((x, y), text, font=self.font)))

    def title(self, x: int, y: int, text: str, font_path: str, px: int, centre_width: int = 0) -> None:
        fnt = ImageFont.truetype(font_path, px)
        if centre_width:
            x += int((centre_width - fnt.getlength(text)) / 2)
        self.draw.text((x, y), text, font=fnt, fill=(0, 0, 0))
        self.layout.paragraphs.append(text)
        self.layout.lines.append(Line(text, text, self.draw.textbbox((x, y), text, font=fnt)))


def en_paragraphs(rng: random.Random, count: int, sentences=(3, 6)) -> list[str]:
    def sentence():
        words = [rng.choice(LONG_WORDS if rng.random() < 0.18 else EN_WORDS) for _ in range(rng.randint(7, 15))]
        words[0] = words[0].capitalize()
        return " ".join(words) + "."

    return [" ".join(sentence() for _ in range(rng.randint(*sentences))) for _ in range(count)]


def zh_paragraphs(rng: random.Random, count: int) -> list[str]:
    def sentence():
        parts = ["".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(5, 12))) for _ in range(rng.randint(2, 4))]
        return "，".join(parts) + "。"

    return ["".join(sentence() for _ in range(rng.randint(3, 5))) for _ in range(count)]


def columns(x: int, y: int, width: int, height: int, count: int, gutter: int) -> list[Frame]:
    column = (width - gutter * (count - 1)) // count
    return [Frame(x + i * (column + gutter), y, column, height) for i in range(count)]


def page(name: str, height: int) -> Layout:
    return Layout(name, Image.new("RGB", (1240, height), (255, 255, 255)))


def english_columns(rng: random.Random, count: int, gutter: int, name: str = "") -> Layout:
    """A title across the page, a byline, then `count` columns of text with hyphenation, `gutter` px apart."""
    layout = page(name or f"en-{count}col", 1240)
    body = Typesetter(layout, SERIF if count == 2 else SANS, 22 if count == 2 else 20)
    body.title(90, 70, "Elections Mark Start Of Next Budget Year", BOLD, 44, centre_width=1060)
    body.title(90, 150, "By our staff reporter, with figures from the regional office", SANS, 22)
    body.flow(en_paragraphs(rng, 5 * count), columns(90, 220, 1060, 960, count, gutter))
    return layout


def chinese_columns(rng: random.Random) -> Layout:
    layout = page("zh-2col", 1240)
    body = Typesetter(layout, CJK, 24, cjk=True)
    body.title(90, 70, "年度报告：公司经营情况与发展计划", CJK, 44, centre_width=1060)
    body.flow(zh_paragraphs(rng, 8), columns(90, 170, 1060, 1000, 2, 60))
    return layout


def with_sidebar(rng: random.Random, chinese: bool) -> Layout:
    """A main column and, right of it, a framed box of short facts (a contact, a share price)."""
    layout = page("zh-sidebar" if chinese else "en-sidebar", 1100)
    main = Typesetter(layout, CJK if chinese else SERIF, 24 if chinese else 22, cjk=chinese)
    heading = "市场动态：本周行业新闻摘要" if chinese else "Regional News In Brief This Week"
    main.title(90, 70, heading, CJK if chinese else BOLD, 40)
    main.flow(zh_paragraphs(rng, 5) if chinese else en_paragraphs(rng, 5), [Frame(90, 160, 700, 880)])
    ImageDraw.Draw(layout.image).rectangle((830, 160, 1190, 560), outline=(60, 60, 60), width=3)
    side = Typesetter(layout, CJK if chinese else SANS, 22, cjk=chinese, hyphenate=False)
    if chinese:
        side.title(855, 185, "公司资料", CJK, 28)
        facts = ["股价：7.15元", "市盈率：12.3倍", "总市值：58亿元", "成交量：3.2万手", "所属行业：电力设备"]
    else:
        side.title(855, 185, "Contact", BOLD, 28)
        facts = ["David Risinger", "David.Risinger@news.org", "Phone 0800 555 0199", "Office hours 9 to 5"]
    for i, fact in enumerate(facts):  # the English facts sit on the main column's rows, the Chinese ones do not
        y = 245 + 40 * i if chinese else 160 + main.pitch * (i + 3)
        side.title(855, y, fact, CJK if chinese else SANS, 22)
    return layout


def sections(rng: random.Random) -> Layout:
    """Two columns, a full-width paragraph across them, then two more columns."""
    layout = page("en-sections", 1400)
    body = Typesetter(layout, SERIF, 21)
    body.title(90, 60, "Annual Review Of Services And Performance", BOLD, 40)
    body.flow(en_paragraphs(rng, 3, (2, 3)), columns(90, 140, 1060, 360, 2, 48))
    body.flow(en_paragraphs(rng, 1, (3, 3)), [Frame(90, 540, 1060, 200)])
    body.flow(en_paragraphs(rng, 4, (2, 3)), columns(90, 760, 1060, 560, 2, 48))
    return layout


def make_layouts(seed: int = 0) -> list[Layout]:
    rng = random.Random(f"reading-order-{seed}")
    return [
        english_columns(rng, 2, 50),
        english_columns(rng, 3, 36),
        chinese_columns(rng),
        with_sidebar(rng, chinese=False),
        with_sidebar(rng, chinese=True),
        sections(rng),
        english_columns(rng, 3, 20, "en-3col-1em"),  # the detector runs some lines across a gutter this narrow
    ]


def locate(fragment: str, codes: np.ndarray) -> tuple[int, int]:
    """(edits, end index) of `fragment`'s cheapest approximate match anywhere in the text whose code points are
    `codes` (the edit-distance row trick of checks.edit_distance, with a free start and end)."""
    positions = np.arange(len(codes) + 1)
    previous = np.zeros(len(codes) + 1, dtype=np.int64)
    for i, char in enumerate(fragment, start=1):
        candidate = np.empty_like(previous)
        candidate[0] = i
        candidate[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (codes != ord(char)))
        previous = np.minimum.accumulate(candidate - positions) + positions
    end = int(np.argmin(previous))
    return int(previous[end]), end


def order_score(lines: list[Line], output: str) -> float:
    """Of each pair of consecutive true lines, the fraction whose second line follows the first in the output (a
    few characters of slack). Lines under 8 characters are not looked for, but their length is allowed for."""
    squeeze = str.maketrans("", "", " \n\t\u3000")
    codes = np.array([ord(c) for c in output.translate(squeeze)] or [0])
    follows, pairs, previous_end, skipped, first = 0, 0, None, 0, True
    for line in lines:
        fragment = line.source.translate(squeeze)
        if len(fragment) < 8:
            skipped += len(fragment)
            continue
        edits, end = locate(fragment, codes)
        end = end if edits <= len(fragment) / 3 else None
        if not first:
            pairs += 1
            if previous_end is not None and end is not None:
                follows += abs(end - len(fragment) - previous_end - skipped) <= 3 + len(fragment) // 10
        previous_end, skipped, first = end, 0, False
    return follows / max(pairs, 1)


def measure(layout: Layout, output: str) -> tuple[float, float]:
    """(CER, order) of one page's output."""
    return cer(layout.text, output), order_score(layout.lines, output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.reading_order", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print each page's text as the engine read it")
    parser.add_argument("--save", type=Path, help="write the pages as PNGs into this folder")
    args = parser.parse_args(argv)

    from appliance.ocr.engines.cpu import CpuEngine
    from appliance.ocr.tasks import Request

    engine, request = CpuEngine(), Request.make("text")
    layouts = make_layouts(args.seed)
    print(f"{'page':<12} {'lines':>5} {'seconds':>7} {'CER':>6} {'order':>6}")
    figures = []
    for layout in layouts:
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            layout.image.save(args.save / f"{layout.name}.png")
        started = time.perf_counter()
        text = engine.recognize(layout.image, request).text
        seconds = time.perf_counter() - started
        figures.append(measure(layout, text))
        print(
            f"{layout.name:<12} {len(layout.lines):>5} {seconds:>7.1f} {figures[-1][0]:>6.3f} {figures[-1][1]:>6.3f}"
        )
        if args.show:
            print(text, end="\n\n")
    cers, orders = zip(*figures)
    print(f"{'mean':<12} {'':>5} {'':>7} {statistics.mean(cers):>6.3f} {statistics.mean(orders):>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
