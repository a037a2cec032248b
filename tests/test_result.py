import json

import pytest

from appliance.ocr.result import SCHEMA_VERSION, Block, EngineInfo, OcrResult, Page


@pytest.fixture
def result():
    pages = [
        Page(
            text="Hello\nWorld",
            blocks=[Block("Hello", [1, 2, 30, 12], 0.9), Block("World", [1, 20, 30, 32], 0.8)],
            fields={"name": "", "total": "12.50"},
            number=1,
            width=100,
            height=50,
        ),
        Page(
            text="Page two",
            blocks=[Block("Page two", None)],
            fields={"name": "Ann", "total": "99"},
            number=2,
            width=100,
            height=50,
        ),
    ]
    return OcrResult(
        "scan.pdf", "spotting", {}, EngineInfo("cpu", "rapidocr/PP-OCRv6", "3.10.0"), pages, {"ocr": 1.5}
    )


def test_json_contract_top_level_text_and_pixel_boxes(result):
    data = json.loads(result.to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["text"] == "Hello\nWorld\n\nPage two"
    assert data["pages"][0]["blocks"][0] == {"text": "Hello", "box": [1, 2, 30, 12], "confidence": 0.9}
    assert [p["number"] for p in data["pages"]] == [1, 2]
    assert data["engine"]["name"] == "cpu"


def test_fields_merge_first_non_empty_value_wins(result):
    assert result.fields == {"name": "Ann", "total": "12.50"}


def test_round_trip_and_unknown_fields_are_ignored(result):
    data = result.to_dict()
    data["pages"][0]["added_later"] = 1
    again = OcrResult.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == result.to_dict()


def test_other_schema_is_refused(result):
    data = result.to_dict() | {"schema_version": 99}
    with pytest.raises(ValueError, match="v99"):
        OcrResult.from_dict(data)


def test_chinese_stays_readable_in_json():
    r = OcrResult("a.png", "text", {}, EngineInfo("cpu", "m"), [Page(text="金额")])
    assert "金额" in r.to_json()
