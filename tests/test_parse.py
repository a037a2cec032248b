"""HunyuanOCR answer parsing: spotting boxes, JSON fields, document Markdown, the repetition guard, to_page."""

import json

import pytest

from appliance.ocr.parse import (
    WARN_NOT_JSON,
    WARN_REPEATED,
    clean_repetition,
    extract_json,
    is_looping,
    means_no_text,
    parse_spotting,
    strip_coordinates,
    to_page,
)
from appliance.ocr.result import Block
from appliance.ocr.tasks import Request, Task

# --- spotting ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, width, height, expected",
    [
        pytest.param(
            "Hello(1,2),(3,4)World(5,6),(7,8)",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", [5, 6, 7, 8])],
            id="two-lines-no-separator",
        ),
        pytest.param(
            "ATLANTA (AP)(12,34),(56,78)Second line(90,12),(134,156)",
            2000,
            500,
            [("ATLANTA (AP)", [24, 17, 112, 39]), ("Second line", [180, 6, 268, 78])],
            id="parentheses-in-text",
        ),
        pytest.param(
            "金额(小写)(10,20),(30,40)",
            1000,
            1000,
            [("金额(小写)", [10, 20, 30, 40])],
            id="cjk-parentheses",
        ),
        # Decision: the box belongs to all the text before it, so the newline stays inside one block.
        pytest.param(
            "line1\nline2(1,2),(3,4)",
            1000,
            1000,
            [("line1\nline2", [1, 2, 3, 4])],
            id="newline-inside-text",
        ),
        pytest.param(
            "字符串1(312,22),(493,49)字符串2(401,0),(666,194)",
            640,
            480,
            [("字符串1", [200, 11, 316, 24]), ("字符串2", [257, 0, 426, 93])],
            id="scaled-to-pixels",
        ),
        pytest.param(
            "<ref>Hello</ref><quad>(1,2),(3,4)</quad><ref>World</ref><quad>(5,6),(7,8)</quad>",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", [5, 6, 7, 8])],
            id="special-tokens-kept",
        ),
        pytest.param(
            "<ref>Point (1,2),(3,4)</ref><quad>(100,200),(300,400)</quad>",
            1000,
            1000,
            [("Point (1,2),(3,4)", [100, 200, 300, 400])],
            id="tagged-text-that-looks-like-coordinates",
        ),
        pytest.param(
            "Hello(1,2),(3,4)World",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", None)],
            id="trailing-text-without-box",
        ),
        pytest.param(
            "Hello(1,2),(3,4)World(5,6),(7",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", None)],
            id="box-cut-off-by-token-limit",
        ),
        pytest.param(
            "<ref>Hello</ref><quad>(1,2),(3,4)</quad><ref>World</ref><quad>(5,6",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", None)],
            id="tagged-box-cut-off",
        ),
        pytest.param(
            "  Hello(1,2),(3,4)\n\n  World(5,6),(7,8)\n",
            1000,
            1000,
            [("Hello", [1, 2, 3, 4]), ("World", [5, 6, 7, 8])],
            id="whitespace-between-entries",
        ),
        pytest.param(
            "Total( 12 , 34 ), (56,78)",
            1000,
            1000,
            [("Total", [12, 34, 56, 78])],
            id="spaces-in-coordinates",
        ),
        pytest.param(
            "Wide(0,0),(1200,1005)",
            500,
            300,
            [("Wide", [0, 0, 500, 300])],
            id="values-over-1000-clamped",
        ),
        pytest.param(
            "Flipped(30,40),(10,20)",
            1000,
            1000,
            [("Flipped", [10, 20, 30, 40])],
            id="corners-normalised",
        ),
        pytest.param(
            "Skew(10,20),(30,22),(31,40),(9,38)",
            1000,
            1000,
            [("Skew", [9, 20, 31, 40])],
            id="four-point-quad-to-bounding-box",
        ),
        pytest.param(
            "Only text, no boxes",
            1000,
            1000,
            [("Only text, no boxes", None)],
            id="no-boxes-at-all",
        ),
        # Decision: a box with no text is dropped (it tells the reader nothing); never a crash.
        pytest.param("(156,68),(783,758)", 1000, 1000, [], id="only-coordinates"),
        pytest.param(
            "(1,2),(3,4)Hello(5,6),(7,8)",
            1000,
            1000,
            [("Hello", [5, 6, 7, 8])],
            id="leading-box-without-text-dropped",
        ),
    ],
)
def test_parse_spotting(raw, width, height, expected):
    blocks = parse_spotting(raw, width, height)
    assert [(b.text, b.box) for b in blocks] == expected
    assert all(isinstance(b, Block) and b.confidence is None for b in blocks)


@pytest.mark.parametrize("raw", ["没有文字", "无文字", "no text", "No text.", "图片中没有文字。", "", "  \n "])
def test_parse_spotting_no_text(raw):
    assert parse_spotting(raw, 800, 600) == []
    assert means_no_text(raw)


@pytest.mark.parametrize("raw", ["没有", "No text here, says the sign", "Text", "无文字(1,2),(3,4)"])
def test_means_no_text_only_whole_phrases(raw):
    assert not means_no_text(raw)


def test_text_that_says_no_text_with_a_box_is_text():
    assert [(b.text, b.box) for b in parse_spotting("无文字(1,2),(3,4)", 1000, 1000)] == [("无文字", [1, 2, 3, 4])]


# --- extract_json --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param(
            '```json\n{"name": "张三", "total": "12.50"}\n```', {"name": "张三", "total": "12.50"}, id="fence"
        ),
        pytest.param('```\n{"a": 1}\n```', {"a": 1}, id="fence-without-language"),
        pytest.param('```json\n{"a": 1}', {"a": 1}, id="unclosed-fence"),
        pytest.param('Here is the result: {"a": 1} hope it helps', {"a": 1}, id="prose-around"),
        pytest.param('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}, id="trailing-commas"),
        pytest.param("{'name': '李四', 'id': '42'}", {"name": "李四", "id": "42"}, id="single-quotes"),
        pytest.param('{"a": {"b": 1}}', {"a": {"b": 1}}, id="nested"),
        pytest.param('{"a": "x}y{"}', {"a": "x}y{"}, id="braces-inside-strings"),
        pytest.param('use {curly} braces, then {"a": 1}', {"a": 1}, id="stray-braces-before"),
        # Decision: a list of objects is merged, the first non-empty value of a key wins.
        pytest.param(
            '[{"name": "A"}, {"date": "2024-01-02"}, {"name": "B"}]',
            {"name": "A", "date": "2024-01-02"},
            id="list-of-objects-merged",
        ),
        pytest.param('[{"name": ""}, {"name": "B"}]', {"name": "B"}, id="list-merge-skips-empty"),
    ],
)
def test_extract_json(raw, expected):
    assert extract_json(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("no json here", id="prose"),
        pytest.param("", id="empty"),
        pytest.param("[1, 2]", id="list-of-numbers"),
        pytest.param("{not json at all}", id="broken"),
        # Cut off: the inner object must not be mistaken for the answer.
        pytest.param('{"a": {"b": 1}, "c": ', id="truncated"),
    ],
)
def test_extract_json_none(raw):
    assert extract_json(raw) is None


# --- strip_coordinates ---------------------------------------------------------------------------------------------

TABLE = "<table><tr><td>(1,2)</td><td>f(3, 4)</td></tr><tr><td></td><td></td></tr></table>"


@pytest.mark.parametrize(
    "markdown, expected",
    [
        pytest.param(
            "# Report\n\n<pFig>Figure 1: Sales</pFig><quad>(10,20),(300,400)</quad>\n\nText.",
            "# Report\n\nFigure 1: Sales\n\nText.",
            id="figure-caption-kept",
        ),
        pytest.param("Figure 1: Sales (10,20),(300,400)\nNext line", "Figure 1: Sales\nNext line", id="stray-pair"),
        pytest.param("<ref>Title</ref>(1,2),(3,4)", "Title", id="ref-tags-and-pair"),
        pytest.param("<pFig></pFig><quad>(1,2),(3,4)</quad>", "", id="figure-without-caption"),
        pytest.param("$f(1,2),(3,4)$", "$f(1,2),(3,4)$", id="inline-math-pair-kept"),
        pytest.param("$f(1,2)$ and $g(3,4)$", "$f(1,2)$ and $g(3,4)$", id="inline-math"),
        pytest.param("$$\nA=(1,2),(3,4)\n$$", "$$\nA=(1,2),(3,4)\n$$", id="display-math"),
        pytest.param(
            "\\[(1,2),(3,4)\\] and \\((5,6),(7,8)\\)", "\\[(1,2),(3,4)\\] and \\((5,6),(7,8)\\)", id="brackets"
        ),
        pytest.param(
            "$x(1,2),(3,4)$ next to a box (5,6),(7,8)", "$x(1,2),(3,4)$ next to a box", id="math-and-box-on-one-line"
        ),
        pytest.param("(see 1, 2) and f(1,2) and (1, 2),(3, 4)", "(see 1, 2) and f(1,2) and (1, 2),(3, 4)", id="text"),
        pytest.param(TABLE, TABLE, id="html-table"),
    ],
)
def test_strip_coordinates(markdown, expected):
    assert strip_coordinates(markdown) == expected


# --- repetition ----------------------------------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps. "  # 27 chars: a unit with words, needs min_repeats copies
PROSE = "Normal opening text of the page.\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(PROSE + SENTENCE * 8, True, id="sentence-8x"),
        pytest.param(PROSE + SENTENCE * 7, False, id="sentence-7x"),
        pytest.param(PROSE + "我们今天去公园玩。" * 8, True, id="chinese-8x"),
        pytest.param(PROSE + "我们今天去公园玩。" * 7, False, id="chinese-7x"),
        pytest.param(PROSE + SENTENCE * 20 + "Then it moved on.", False, id="loop-not-at-tail"),
        pytest.param(PROSE + "ha" * 8, False, id="short-unit-needs-more"),
        pytest.param(PROSE + "ha" * 32, True, id="short-unit-64-chars"),
        pytest.param(PROSE + "0" * 63, False, id="digit-63"),
        pytest.param(PROSE + "0" * 64, True, id="digit-64"),
        pytest.param("| a | b |\n|" + "-" * 300, False, id="long-table-rule"),
        pytest.param(PROSE + "-" * 512, True, id="dash-loop"),
        pytest.param("<table><tr>" + "<td></td>" * 20, False, id="empty-cells-20"),
        pytest.param("<table><tr>" + "<td></td>" * 57, True, id="empty-cells-57"),
        pytest.param("", False, id="empty"),
        pytest.param("abc", False, id="short"),
    ],
)
def test_is_looping(text, expected):
    assert is_looping(text) is expected


def test_is_looping_min_repeats_and_max_unit():
    unit = "".join(chr(ord("a") + i % 26) for i in range(300)) + "\n"  # 301 chars, longer than max_unit
    assert is_looping(PROSE + SENTENCE * 3, min_repeats=3)
    assert not is_looping(PROSE + SENTENCE * 3)
    assert not is_looping(unit * 8)
    assert is_looping(unit * 8, max_unit=301)


DOC = """# 季度报告

本季度收入增长了百分之十二，主要来自华东地区。我们的客户满意度保持稳定。

| 项目 | 金额 |
|------|------:|
| 收入 | 1,000 |

<table><tr><th>姓名</th><th>日期</th><th>备注</th><th>签字</th><th>盖章</th><th>其他</th></tr>
<tr><td>张三</td><td></td><td></td><td></td><td></td><td></td></tr>
<tr><td></td><td></td><td></td><td></td><td></td><td></td></tr>
<tr><td></td><td></td><td></td><td></td><td></td><td></td></tr>
<tr><td></td><td></td><td></td><td></td><td></td><td></td></tr>
</table>

目录
第一章 总论 .................................................. 1
第二章 方法 .................................................. 12

账号：1212121212  金额：10000000 元  $x_1 + x_2 = 0$  哈哈哈哈

----------------------------------------
"""


def test_clean_repetition_keeps_normal_document():
    assert clean_repetition(DOC) == (DOC, False)


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "Hello.\n" + "The same line again.\n" * 50 + "End.", "Hello.\nThe same line again.\nEnd.", id="line-loop"
        ),
        pytest.param("<table><tr>" + "<td></td>" * 100 + "</tr>", "<table><tr><td></td></tr>", id="empty-cell-loop"),
        pytest.param("结论：" + "重要通知。" * 20 + "完", "结论：重要通知。完", id="chinese-loop"),
        pytest.param("x" + "-" * 600 + "y", "x-y", id="rule-loop"),
        pytest.param("a" + "0" * 64 + "b", "a0b", id="digit-loop"),
        pytest.param(
            "A " + SENTENCE * 4 + "B " + "第二个循环。重复的句子内容。" * 6 + "C",
            "A " + SENTENCE + "B 第二个循环。重复的句子内容。C",
            id="two-loops",
        ),
        pytest.param("Start " + SENTENCE * 30 + "The qui", "Start " + SENTENCE + "The qui", id="partial-unit-kept"),
    ],
)
def test_clean_repetition_cuts(text, expected):
    assert clean_repetition(text) == (expected, True)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(SENTENCE * 3, id="3-copies"),
        pytest.param("重要通知。" * 10, id="short-unit-under-64-chars"),
        pytest.param("<td></td>" * 56, id="56-empty-cells"),
        pytest.param("." * 200, id="leader"),
        pytest.param("0" * 63, id="digits"),
    ],
)
def test_clean_repetition_leaves_short_runs(text):
    assert clean_repetition(text) == (text, False)


def test_clean_repetition_min_repeats():
    assert clean_repetition(SENTENCE * 3, min_repeats=3) == (SENTENCE, True)


@pytest.mark.parametrize(
    "loop",
    [
        SENTENCE * 8,
        "我们今天去公园玩。" * 8,
        "0" * 64,
        "-" * 512,
        "<td></td>" * 57,
        "<tr><td></td><td>x</td></tr>" * 8,
    ],
)
def test_what_stops_generation_is_cut_afterwards(loop):
    text = PROSE + loop
    assert is_looping(text)
    assert clean_repetition(text)[1]


# --- to_page -------------------------------------------------------------------------------------------------------


def test_to_page_spotting():
    raw = "Hello(100,200),(300,400)\n世界(500,600),(700,800)"
    page = to_page(raw, Request.make("spotting"), 2000, 1000)
    assert [(b.text, b.box) for b in page.blocks] == [
        ("Hello", [200, 200, 600, 400]),
        ("世界", [1000, 600, 1400, 800]),
    ]
    assert page.text == "Hello\n世界"
    assert (page.raw, page.warnings, page.width, page.height) == (raw, [], 2000, 1000)
    assert page.markdown is None and page.fields is None and page.translation is None


@pytest.mark.parametrize("task", ["text", "subtitles"])
def test_to_page_text(task):
    page = to_page("\n  第一行\nSecond line  \n", Request.make(task), 10, 10)
    assert page.text == "第一行\nSecond line"
    assert page.blocks == [] and page.markdown is None


@pytest.mark.parametrize("task", ["text", "subtitles", "spotting"])
def test_to_page_no_text(task):
    page = to_page("没有文字。", Request.make(task), 10, 10)
    assert (page.text, page.blocks, page.raw) == ("", [], "没有文字。")


@pytest.mark.parametrize("task", ["doc", "table", "formula", "chart"])
def test_to_page_markdown(task):
    raw = "\n# 标题\n\n<pFig>图1</pFig><quad>(1,2),(3,4)</quad>\n\n$f(1,2),(3,4)$\n"
    page = to_page(raw, Request.make(task), 100, 100)
    assert page.markdown == "# 标题\n\n图1\n\n$f(1,2),(3,4)$"
    assert page.text == page.markdown
    assert page.raw == raw


def test_to_page_extract_fields():
    raw = '```json\n{"name": "张三", "date": "2024-05-01"}\n```'
    page = to_page(raw, Request.make("extract", fields="name,date"), 100, 100)
    assert page.fields == {"name": "张三", "date": "2024-05-01"}
    assert page.text == '{\n  "name": "张三",\n  "date": "2024-05-01"\n}'
    assert page.warnings == []


def test_to_page_extract_not_json():
    page = to_page("Sorry, I cannot read it.", Request.make("extract", fields="name,date"), 100, 100)
    assert (page.fields, page.text, page.warnings) == ({}, "{}", [WARN_NOT_JSON])


@pytest.mark.parametrize(
    "raw, value",
    [
        pytest.param(" 张三 \n", "张三", id="bare-value"),
        pytest.param('{"name": "张三"}', "张三", id="json-with-the-key"),
        pytest.param('{"value": "张三"}', "张三", id="json-with-another-single-key"),
        pytest.param("12.50", "12.50", id="number-stays-text"),
    ],
)
def test_to_page_extract_single_field(raw, value):
    page = to_page(raw, Request.make("extract", fields=["name"]), 100, 100)
    assert page.fields == {"name": value}
    assert page.text == json.dumps({"name": value}, ensure_ascii=False, indent=2)
    assert page.warnings == []


def test_to_page_translate():
    page = to_page(" Hello world.\n", Request.make("translate", target_lang="en"), 100, 100)
    assert (page.translation, page.text) == ("Hello world.", "Hello world.")


def test_to_page_cuts_repetition_and_warns():
    raw = "第一行\n" + "重复的一行文字内容。\n" * 40
    page = to_page(raw, Request.make(Task.TEXT), 100, 100)
    assert page.text == "第一行\n重复的一行文字内容。"
    assert page.warnings == [WARN_REPEATED]
    assert page.raw == raw
