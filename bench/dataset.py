"""A small, reproducible OCR test set drawn with Pillow: pages that look like real documents, with their true text.

Public OCR data sets cannot be downloaded here, so we draw our own, seeded so every run sees the same pixels:

- receipt: narrow till slips, many short lines, prices in $ or ¥, English or Chinese;
- doc_en / doc_zh: A4 pages at 150 dpi with a heading and paragraphs;
- photo: a document photographed: perspective, uneven light, blur, noise, JPEG artefacts;
- dense: an A4 page of small print.

`make_set(seed)` returns `Sample`s; each keeps the drawn lines and their boxes (in page pixels, None for photos,
whose warp moves them) so tests can reuse the pages. Text is random words, not prose: recognisers must read the
pixels, not guess from context.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = "/usr/share/fonts/truetype"
SANS = f"{FONT_DIR}/dejavu/DejaVuSans.ttf"
SERIF = f"{FONT_DIR}/dejavu/DejaVuSerif.ttf"
MONO = f"{FONT_DIR}/dejavu/DejaVuSansMono.ttf"
BOLD = f"{FONT_DIR}/dejavu/DejaVuSans-Bold.ttf"
CJK = f"{FONT_DIR}/wqy/wqy-microhei.ttc"

A4_150DPI = (1240, 1754)

EN_VOCABULARY = """
the of and to in is for on that with as by this from are be at or an which it not have has was were will
invoice order payment account customer service contract report quarter annual total amount balance due
date number reference delivery address office company limited department section page table figure
results analysis system data value process review policy request approval budget project schedule
meeting summary management information document agreement terms conditions shipping product quality
market sales revenue cost price tax discount credit bank transfer receipt signature manager director
board member public national research program development support network security software hardware
equipment maintenance
"""
EN_WORDS = EN_VOCABULARY.split()

# Common simplified characters; random runs of them are as hard to read as prose and need no corpus.
ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
    "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其"
    "些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建"
    "月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接"
    "知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器"
    "压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议"
    "声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复"
    "容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标"
    "写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严发票金额合计"
)
ZH_PUNCT = "，。、：；"

SHOP_ITEMS_EN = [
    "Coffee",
    "Bagel",
    "Orange juice",
    "Milk 1L",
    "Bread",
    "Eggs x12",
    "Apples",
    "Cheese",
    "Tea",
    "Water 500ml",
    "Yogurt",
    "Butter",
    "Rice 2kg",
    "Pasta",
    "Tomatoes",
    "Chicken",
    "Soap",
    "Batteries",
]
SHOP_ITEMS_ZH = [
    "矿泉水",
    "牛奶",
    "面包",
    "鸡蛋",
    "苹果",
    "大米",
    "酱油",
    "绿茶",
    "酸奶",
    "香蕉",
    "毛巾",
    "电池",
    "洗发水",
    "饼干",
    "咖啡",
    "白糖",
    "食用油",
    "纸巾",
]


@dataclass
class Line:
    text: str
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 where it was drawn; None when a warp moved it


@dataclass
class Sample:
    name: str  # e.g. receipt-1
    kind: str  # receipt | doc_en | doc_zh | photo | dense
    image: Image.Image
    lines: list[Line] = field(default_factory=list)
    paragraphs: list[str] | None = None  # when the page has paragraphs: each as written, before it was set in lines

    @property
    def text(self) -> str:
        """The true text in reading order: a paragraph a line where the page has them, else one drawn line a line."""
        return "\n".join(self.paragraphs if self.paragraphs is not None else (line.text for line in self.lines))


def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def draw_line(draw: ImageDraw.ImageDraw, xy, text: str, fnt, fill=(20, 20, 20)) -> Line:
    """Draw one line and record its ink box."""
    draw.text(xy, text, font=fnt, fill=fill)
    x1, y1, x2, y2 = draw.textbbox(xy, text, font=fnt)
    return Line(text, (int(x1), int(y1), int(x2), int(y2)))


def en_sentence(rng: random.Random) -> str:
    words = [rng.choice(EN_WORDS) for _ in range(rng.randint(6, 14))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words)), str(rng.choice([rng.randint(2, 999), rng.randint(1990, 2030)])))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", ",", ";"])


def zh_sentence(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(2, 4)):
        parts.append("".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(4, 10))))
    text = rng.choice(ZH_PUNCT[:1] + ZH_PUNCT[2:]).join(parts)
    if rng.random() < 0.3:
        text += str(rng.randint(10, 2030))
    return text + "。"


def wrap(text: str, fnt, width: int, cjk: bool) -> list[str]:
    """Greedy wrap to a pixel width: by word for English, by character for Chinese."""
    tokens = list(text) if cjk else text.split(" ")
    joiner = "" if cjk else " "
    lines, current = [], ""
    for token in tokens:
        candidate = current + joiner + token if current else token
        if fnt.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = token
    if current:
        lines.append(current)
    return lines


def text_page(rng: random.Random, size, font_path: str, font_px: int, cjk: bool, paragraphs: int, margin: int):
    """A page with a heading and paragraphs of wrapped text; returns (image, lines, paragraphs as set)."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    lines = []
    heading = zh_sentence(rng)[:12].rstrip("。，、") if cjk else " ".join(en_sentence(rng).split()[:5]).rstrip(".,;")
    y = margin
    head_font = font(CJK if cjk else BOLD, int(font_px * 1.6))
    heading = wrap(heading, head_font, size[0] - 2 * margin, cjk)[0]
    lines.append(draw_line(draw, (margin, y), heading, head_font))
    written = [heading]
    y += int(font_px * 1.6 * 2)
    body = font(font_path, font_px)
    width = size[0] - 2 * margin
    joiner = "" if cjk else " "
    for _ in range(paragraphs):
        sentences = [zh_sentence(rng) if cjk else en_sentence(rng) for _ in range(rng.randint(2, 5))]
        set_lines = []
        for text in wrap(joiner.join(sentences), body, width, cjk):
            if y + font_px * 2 > size[1] - margin:
                return image, lines, [*written, joiner.join(set_lines)] if set_lines else written
            lines.append(draw_line(draw, (margin, y), text, body))
            set_lines.append(text)
            y += int(font_px * 1.5)
        written.append(joiner.join(set_lines))
        y += font_px
    return image, lines, written


def receipt(rng: random.Random, chinese: bool):
    """A thermal till slip, 576 px wide (80 mm at 180 dpi): shop, date, items with right-aligned prices, totals."""
    width, px = 576, 24
    body = font(CJK if chinese else MONO, px)
    currency = "¥" if chinese else "$"
    items = rng.sample(SHOP_ITEMS_ZH if chinese else SHOP_ITEMS_EN, rng.randint(6, 12))
    height = 60 + (len(items) + 9) * int(px * 1.6)
    image = Image.new("RGB", (width, height), (250, 250, 247))
    draw = ImageDraw.Draw(image)
    lines = []
    y = 30

    def row(left: str, right: str | None = None):
        nonlocal y
        lines.append(draw_line(draw, (24, y), left, body))
        if right is not None:
            x = width - 24 - int(body.getlength(right))
            lines.append(draw_line(draw, (x, y), right, body))
        y += int(px * 1.6)

    shop = (
        rng.choice(["便利店", "超市", "百货商店"])
        if chinese
        else rng.choice(["CORNER MARKET", "FRESH FOODS", "CITY STORE"])
    )
    row(("华联" if chinese else "") + shop + (f" {rng.randint(1, 99)}号店" if chinese else f" #{rng.randint(1, 99)}"))
    row(
        f"20{rng.randint(20, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
        f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}"
    )
    total = 0.0
    for item in items:
        qty = rng.randint(1, 3)
        price = rng.randint(50, 4999) / 100
        total += qty * price
        row(f"{item} x{qty}", f"{currency}{qty * price:.2f}")
    y += px // 2
    row("合计" if chinese else "TOTAL", f"{currency}{total:.2f}")
    paid = (int(total) // 10 + 1) * 10.0
    row("现金" if chinese else "CASH", f"{currency}{paid:.2f}")
    row("找零" if chinese else "CHANGE", f"{currency}{paid - total:.2f}")
    row("谢谢惠顾" if chinese else "THANK YOU")
    return image, lines


def photograph(rng: random.Random, page: Image.Image) -> Image.Image:
    """Make a clean page look photographed by a phone: tilt and perspective, shading, blur, noise, JPEG."""
    w, h = page.size
    out_w, out_h = 1600, 1200
    canvas = Image.new("RGB", (out_w, out_h), (90, 80, 70))  # a desk
    # Where the page's corners land on the canvas (top-left, bottom-left, bottom-right, top-right), jittered.
    scale = min(out_w * 0.85 / w, out_h * 0.9 / h)
    pw, ph = w * scale, h * scale
    x0, y0 = (out_w - pw) / 2, (out_h - ph) / 2

    def jitter():
        return rng.uniform(-0.04, 0.04) * pw

    corners = [
        (x0 + jitter(), y0 + jitter()),
        (x0 + jitter(), y0 + ph + jitter()),
        (x0 + pw + jitter(), y0 + ph + jitter()),
        (x0 + pw + jitter(), y0 + jitter()),
    ]
    # QUAD maps output quad -> source rectangle; render the page at canvas size, then paste with a mask.
    box_w, box_h = int(max(c[0] for c in corners)) + 1, int(max(c[1] for c in corners)) + 1
    quad = [coord for corner in corners for coord in corner]
    warped = page.transform(
        (box_w, box_h),
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(corners, w, h),
        Image.Resampling.BICUBIC,
        fillcolor=None,
    )
    mask = Image.new("L", (box_w, box_h), 0)
    ImageDraw.Draw(mask).polygon([tuple(c) for c in zip(quad[0::2], quad[1::2])], fill=255)
    canvas.paste(warped, (0, 0), mask)
    # Uneven light: a dark-to-bright gradient across the frame.
    side = 2 * max(out_w, out_h)  # rotate a larger gradient and keep its middle, so no corner is left black
    light = Image.linear_gradient("L").resize((side, side)).rotate(rng.uniform(0, 360))
    light = light.crop(((side - out_w) // 2, (side - out_h) // 2, (side + out_w) // 2, (side + out_h) // 2))
    shade = Image.new("RGB", (out_w, out_h), (0, 0, 0))
    canvas = Image.composite(canvas, shade, light.point(lambda v: 110 + v * 145 // 255))
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.2)))
    noise = Image.effect_noise((out_w, out_h), rng.uniform(10, 20)).convert("RGB")
    canvas = Image.blend(canvas, noise, 0.08)
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=rng.randint(45, 70))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _perspective_coeffs(corners, w: int, h: int):
    """Coefficients for Image.transform(PERSPECTIVE): for each output pixel, where to sample the source page."""
    import numpy as np

    source = [(0, 0), (0, h), (w, h), (w, 0)]
    rows = []
    for (x, y), (u, v) in zip(corners, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs = [coord for point in source for coord in point]
    return np.linalg.solve(np.array(rows, dtype=float), np.array(rhs, dtype=float)).tolist()


def make_sample(kind: str, index: int, seed: int = 0) -> Sample:
    """One page of the given kind; the same (kind, index, seed) always gives the same pixels and text."""
    rng = random.Random(f"{seed}-{kind}-{index}")
    written = None
    if kind == "receipt":
        image, lines = receipt(rng, chinese=index % 2 == 1)
    elif kind == "doc_en":
        image, lines, written = text_page(rng, A4_150DPI, rng.choice([SANS, SERIF]), 23, False, 12, 110)
    elif kind == "doc_zh":
        image, lines, written = text_page(rng, A4_150DPI, CJK, 24, True, 12, 110)
    elif kind == "dense":
        cjk = index % 2 == 1
        image, lines, written = text_page(rng, A4_150DPI, CJK if cjk else SANS, 15, cjk, 30, 70)
    elif kind == "photo":
        cjk = index % 2 == 1
        page, lines, written = text_page(rng, (900, 1100), CJK if cjk else SERIF, 26, cjk, 6, 60)
        image, lines = photograph(rng, page), [Line(line.text, None) for line in lines]
    else:
        raise ValueError(f"unknown sample kind '{kind}'")
    return Sample(f"{kind}-{index + 1}", kind, image, lines, written)


KINDS = ("receipt", "doc_en", "doc_zh", "photo", "dense")


def make_set(per_kind: int = 2, seed: int = 0, kinds=KINDS) -> list[Sample]:
    return [make_sample(kind, i, seed) for kind in kinds for i in range(per_kind)]
