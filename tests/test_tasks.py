import pytest

from appliance.ocr.tasks import PROMPTS, Request, Task, parse_task


@pytest.mark.parametrize(
    "name, task",
    [
        ("spotting", Task.SPOTTING),
        ("TEXT", Task.TEXT),
        ("plain_ocr", Task.TEXT),
        ("doc_parser", Task.DOC),
        ("translation", Task.TRANSLATE),
        ("doc-parser", Task.DOC),
        (Task.CHART, Task.CHART),
    ],
)
def test_task_names_and_article_aliases(name, task):
    assert parse_task(name) is task


def test_unknown_task_lists_the_choices():
    with pytest.raises(ValueError, match="unknown task 'ocrx'.*spotting.*plain_ocr"):
        parse_task("ocrx")


def test_every_task_has_a_prompt():
    for task in Task:
        fields = ("a",) if task is Task.EXTRACT else ()
        assert Request.make(task, fields=fields).prompt()
    assert set(PROMPTS) == set(Task) - {Task.EXTRACT, Task.TRANSLATE}


def test_fixed_prompts_are_the_official_wording():
    assert Request.make("spotting").prompt() == "检测并识别图片中的文字，将文本坐标格式化输出。"
    assert Request.make("plain_ocr").prompt() == "提取图中的文字。"
    assert Request.make("translate", target_lang="en").prompt().startswith("先提取文字，再将文字内容翻译为英文。")
    assert "翻译为中文" in Request.make("translate", target_lang="zh").prompt()


def test_extract_prompts_and_field_parsing():
    request = Request.make("extract", fields=" 姓名, 身份证号 ,,")
    assert request.fields == ("姓名", "身份证号")
    assert request.prompt() == "提取图片中的: ['姓名','身份证号'] 的字段内容，并按照JSON格式返回。"
    assert Request.make("extract", fields=["total"]).prompt() == "输出 total 的值。"
    assert request.options() == {"fields": ["姓名", "身份证号"]}


def test_extract_needs_fields_and_translate_a_known_language():
    with pytest.raises(ValueError, match="needs field names"):
        Request.make("extract")
    with pytest.raises(ValueError, match="unknown target language 'xx'"):
        Request.make("translate", target_lang="xx")


def test_options_only_carry_what_the_task_uses():
    assert Request.make("text", fields="a,b", target_lang="zh").options() == {}
    assert Request.make("translate", target_lang="ZH").options() == {"target_lang": "zh"}
