"""Reading order and paragraphs from line boxes alone (appliance.ocr.layout); the same on real pages through the CPU
engine: tests/engines/test_cpu_engine.py."""

from __future__ import annotations

import pytest

from appliance.ocr.layout import Line, cut_at_column_starts, join, plain_text, reading_order

LINE_PX, PITCH = 27, 32  # what rapidocr gives for 22 px type set at 1.45: boxes 27 px high, 32 px apart


def column(x: int, y: int, texts: list[str], width: int = 420, px: int = 13) -> list[Line]:
    """Lines of a column, top to bottom; a line's box is `px` per character wide, at most the column's width."""
    return [
        Line(text, [x, y + PITCH * i, x + min(width, px * len(text)), y + PITCH * i + LINE_PX])
        for i, text in enumerate(texts)
    ]


def texts(lines) -> list[str]:
    return [line.text for line in lines]


def full(name: str, count: int) -> list[str]:
    """`count` lines of running text that fill a 420 px column (13 px a character)."""
    return [f"{name} line {i + 1} of running text, filling it".ljust(40, ".") for i in range(count)]


def test_two_columns_under_a_title_are_read_one_after_the_other():
    title = [Line("A Title Across Both Columns", [300, 20, 900, 70])]
    left, right = column(100, 100, full("left", 6)), column(640, 100, full("right", 6))
    shuffled = [*right[::-1], *title, *left[::2], *left[1::2]]
    assert texts(reading_order(shuffled)) == texts(title + left + right)


def test_three_columns_and_unaligned_lines():
    cols = [column(80, 100, full("one", 5), 330), column(450, 116, full("two", 5), 330)]
    cols.append(column(820, 100, full("three", 4), 330))  # rows half a line off the middle column's
    assert texts(reading_order([line for col in cols[::-1] for line in col])) == texts(sum(cols, []))


def test_columns_under_a_full_width_paragraph_and_above_another_pair():
    top = column(100, 100, full("top-left", 3)) + column(640, 100, full("top-right", 3))
    across = column(100, 220, full("across", 2), 960, px=26)
    bottom = column(100, 300, full("low-left", 3)) + column(640, 300, full("low-right", 3))
    assert texts(reading_order(bottom + across + top)) == texts(top + across + bottom)


@pytest.mark.parametrize("top", [185, 160 + 3 * PITCH])  # between the main column's rows, or on them
def test_a_box_of_short_facts_beside_a_column_comes_after_it(top):
    main = column(90, 160, full("main", 12), 700, px=17)
    box = column(870, top, ["股价：7.15元", "市盈率：12.3倍", "总市值：58亿元", "成交量：3.2万手"], px=24)
    assert texts(reading_order(box + main)) == texts(main + box)
    contact = column(870, top, ["David Risinger", "David.Risinger@news.org", "Phone 0800 555 0199"], px=12)
    assert plain_text(contact + main).splitlines()[-3:] == texts(contact)  # a list of facts: not one paragraph


def test_receipt_prices_and_form_values_stay_on_their_row():
    names = column(24, 30, ["Coffee x2", "Orange juice x1", "Bread x3", "Eggs x12 x1", "TOTAL"], px=15)
    prices = [
        Line(price, [470, line.box[1], 552, line.box[3]]) for price, line in zip("$1 $2 $3 $4 $10".split(), names)
    ]
    assert plain_text(prices + names).splitlines() == [f"{n.text} {p.text}" for n, p in zip(names, prices)]

    dates = column(40, 30, ["2024-01-05", "2024-02-05", "2024-03-05"], px=14)
    states = column(400, 30, ["Paid in full", "Paid in part", "Not yet paid"], px=14)
    assert plain_text(states + dates).splitlines() == [f"{a.text} {b.text}" for a, b in zip(dates, states)]

    labels = column(40, 30, ["Name:", "Date of birth:", "Address:"], px=14)
    values = column(300, 30, ["Maria Alvarez Fernandez", "12 March 1984", "14 Mill Lane, Northfield"], px=14)
    assert plain_text(values + labels).splitlines() == [f"{a.text} {b.text}" for a, b in zip(labels, values)]


def worded(line: Line, px: int = 13) -> Line:
    """The line with word boxes, `px` a character and a space between words (a wider one where the text has two)."""
    x, words = line.box[0], []
    for word in line.text.split(" "):
        if word:
            words.append((word, [x, line.box[1], x + px * len(word), line.box[3]]))
        x += px * (len(word) + 1)
    return Line(" ".join(w for w, _ in words), [line.box[0], line.box[1], x - px, line.box[3]], words=words)


def test_a_line_run_across_a_narrow_gutter_is_cut_where_the_next_column_starts():
    left, right = column(100, 100, full("left", 5), 390), column(520, 100, full("right", 5), 390)
    # The detector ran the third row of both columns into one box; 2 spaces of 13 px = a 26 px (1 em) gutter.
    merged = worded(Line(f"{left[2].text[:30]}  {right[2].text[:30]}", [100, left[2].box[1], 0, left[2].box[3]]))
    assert merged.box[2] > 520 and any(abs(box[0] - 520) < 5 for _, box in merged.words)
    lines = [*left[:2], *left[3:], *right[:2], *right[3:], merged]
    cut = cut_at_column_starts(lines)
    assert len(cut) == len(lines) + 1
    pieces = [left[2].text[:30].strip(), right[2].text[:30].strip()]
    expected = [*texts(left[:2]), pieces[0], *texts(left[3:]), *texts(right[:2]), pieces[1], *texts(right[3:])]
    assert texts(reading_order(cut)) == expected
    alone = worded(Line("a wide  gap inside one column", [100, 400, 0, 427]))  # no column starts after its gap
    assert cut_at_column_starts([*left, alone]) == [*left, alone]
    chinese = Line("公司股价上涨", [100, 500, 400, 527], words=[("公司股价", [100, 500, 220, 527])])
    chinese.words.append(("上涨", [520, 500, 580, 527]))
    assert [ln.text for ln in cut_at_column_starts([*right, chinese])][-2:] == ["公司股价", "上涨"]


def test_a_row_with_mixed_sizes_reads_left_to_right():
    lines = [Line("348.50", [250, 30, 480, 120]), Line("Total:", [30, 70, 130, 106])]
    assert plain_text(lines) == "Total: 348.50"


def test_paragraphs_join_full_lines_and_break_at_short_lines_indents_and_gaps():
    first = column(100, 100, ["The first paragraph fills its", "lines to the column's edge", "and ends short."])
    indented = column(130, 100 + 3 * PITCH, ["An indented paragraph starts"]) + column(
        100, 100 + 4 * PITCH, ["here and goes on."]
    )
    spaced = column(100, 100 + 5 * PITCH + 20, ["After a gap a new one starts", "below the others."])
    for lines in first, indented, spaced:  # make the lines above the last one of each reach the right edge
        for line in lines[:-1]:
            line.box[2] = 100 + 420
    assert plain_text(first + indented + spaced).splitlines() == [
        "The first paragraph fills its lines to the column's edge and ends short.",
        "An indented paragraph starts here and goes on.",
        "After a gap a new one starts below the others.",
    ]


def test_hyphenated_line_ends_join_into_their_word():
    lines = column(
        100, 100, ["We could not find the infor-", "mation; a well-", "Known name.", "A short one-", "two."]
    )
    lines[0].box[2] = lines[1].box[2] = 520
    assert plain_text(lines).splitlines() == [
        "We could not find the information; a well- Known name.",
        "A short onetwo.",
    ]


def test_chinese_lines_join_without_a_space_and_never_lose_a_hyphen():
    assert join("公司的股价为", "7.15元。") == "公司的股价为7.15元。"
    assert join("price 7.15", "元") == "price 7.15元"
    assert join("编号-", "abc") == "编号- abc" and join("A-", "bc") == "A- bc"  # no Latin word before the hyphen
    assert join("infor-", "mation") == "information" and join("Bericht-", "Nummer") == "Bericht- Nummer"
    lines = column(
        100,
        100,
        ["料织也内军士，还接因前力府现，存认住式", "备极领族见从。按京组空其，得称口来从知", "日计又。"],
        px=21,
    )
    assert plain_text(lines) == "料织也内军士，还接因前力府现，存认住式备极领族见从。按京组空其，得称口来从知日计又。"


def test_empty_and_single_lines():
    assert plain_text([]) == "" and reading_order([]) == []
    assert plain_text([Line("Hello 42", [20, 25, 200, 60])]) == "Hello 42"
