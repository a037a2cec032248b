"""The in-process HunyuanOCR engine on the tiny random checkpoint (tests/hunyuan_checkpoint.py): the real path.

The tiny model's answers are noise, so these tests check the plumbing: what is loaded and how, the prompt that
reaches the model, the token budget, the repetition guard, and the errors for unusable model directories.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from appliance.model_dir import MANIFEST as MANIFEST_FILE
from appliance.model_dir import model_info, model_version
from appliance.ocr import parse
from appliance.ocr.engines import hunyuan
from appliance.ocr.engines.transformers import TransformersEngine, looping_stop
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.result import Page
from appliance.ocr.tasks import PROMPTS, Request, Task

MAX_NEW_TOKENS = 16
MANIFEST = {"model_id": "tencent/HunyuanOCR", "version": "1.0", "revision": "0123abcd"}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with the image builder's manifest (a copy: other tests use the bare directory)."""
    path = tmp_path_factory.mktemp("with-manifest") / "HunyuanOCR"
    shutil.copytree(tiny_model_dir, path)
    (path / MANIFEST_FILE).write_text(json.dumps(MANIFEST))
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = TransformersEngine(model_dir, max_new_tokens=MAX_NEW_TOKENS)
    yield engine
    engine.close()


@pytest.fixture
def page_image():
    image = Image.new("RGB", (320, 160), "white")
    ImageDraw.Draw(image).text((20, 60), "Invoice 2024-05 total 42.00", fill="black")
    return image


@pytest.fixture
def generate_spy(engine, monkeypatch):
    """Records the keyword arguments and the output of every model.generate() call."""
    calls = []
    real_generate = engine.model.generate

    def spy(**kwargs):
        output = real_generate(**kwargs)
        calls.append({"kwargs": kwargs, "output": output})
        return output

    monkeypatch.setattr(engine.model, "generate", spy)
    return calls


def test_loads_the_local_directory_with_the_auto_classes(engine):
    assert type(engine.model).__name__ == "HunYuanVLForConditionalGeneration"
    assert type(engine.processor).__name__ == "HunYuanVLProcessor"
    assert engine.model.config._attn_implementation == "eager"
    assert engine.info.name == "hunyuan-transformers"
    assert engine.info.device == "cpu"
    assert (engine.info.model, engine.info.revision) == ("tencent/HunyuanOCR", "0123abcd")
    # fp32 on CPU: bf16 is for GPUs.
    assert engine.dtype == "float32"
    assert next(engine.model.parameters()).dtype == torch.float32
    assert engine.repetition_penalty == 1.0
    assert engine.tasks == frozenset(Task)


@pytest.mark.parametrize(
    "request_",
    [
        Request.make("spotting"),
        Request.make("text"),
        Request.make("doc"),
        Request.make("extract", fields="name,total"),
    ],
    ids=lambda r: r.task.value,
)
def test_recognize_runs_the_whole_path(engine, page_image, request_):
    page = engine.recognize(page_image, request_)
    assert isinstance(page, Page)
    assert isinstance(page.raw, str)
    assert (page.width, page.height) == page_image.size
    if request_.task is Task.EXTRACT:
        assert isinstance(page.fields, dict)


def test_the_prompt_reaches_the_model_greedy_and_within_budget(engine, page_image, generate_spy, monkeypatch):
    templated = []
    real_template = engine.processor.apply_chat_template

    def template_spy(messages, **kwargs):
        templated.append(messages)
        return real_template(messages, **kwargs)

    monkeypatch.setattr(engine.processor, "apply_chat_template", template_spy)
    engine.recognize(page_image, Request.make("spotting"))

    (messages,) = templated
    assert messages[0] == {"role": "system", "content": ""}
    assert [item["type"] for item in messages[1]["content"]] == ["image", "text"]
    assert messages[1]["content"][1]["text"] == PROMPTS[Task.SPOTTING]

    (call,) = generate_spy
    kwargs = call["kwargs"]
    prompt_ids = kwargs["input_ids"][0]
    assert PROMPTS[Task.SPOTTING] in engine.processor.tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert "mm_token_type_ids" in kwargs and "image_grid_thw" in kwargs
    assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == MAX_NEW_TOKENS
    assert 0 < call["output"].shape[1] - prompt_ids.shape[0] <= MAX_NEW_TOKENS


def test_same_input_same_answer(engine, page_image):
    assert engine.generate(page_image, "提取图中的文字。") == engine.generate(page_image, "提取图中的文字。")


def test_the_looping_guard_is_wired_into_generate(engine, page_image, generate_spy, monkeypatch):
    monkeypatch.setattr(engine, "max_new_tokens", 100)
    monkeypatch.setattr(parse, "is_looping", lambda text: True)  # every check says "loop"
    engine.generate(page_image, PROMPTS[Task.TEXT])
    (call,) = generate_spy
    # Stopped at the first check (32 new tokens), not at the budget of 100.
    assert call["output"].shape[1] - call["kwargs"]["input_ids"].shape[1] == 32
    assert engine.last_stopped_looping


def test_the_answer_streams_to_on_text_token_by_token(engine, page_image, generate_spy, monkeypatch):
    """Unthrottled, on_text sees every new token: the decoded answer so far and the count, ending with the whole
    answer; the prompt's tokens are never reported."""
    monkeypatch.setattr(hunyuan, "REPORT_EVERY", 0)
    seen = []
    page = engine.recognize(
        page_image, Request.make("text"), on_text=lambda text, tokens: seen.append((text, tokens))
    )
    (call,) = generate_spy
    new_tokens = call["output"].shape[1] - call["kwargs"]["input_ids"].shape[1]
    assert [tokens for _, tokens in seen] == list(range(1, new_tokens + 1))
    assert seen[-1][0] == page.raw and all(page.raw.startswith(text) for text, _ in seen)


def test_no_streamer_without_on_text(engine, page_image, generate_spy):
    engine.generate(page_image, PROMPTS[Task.TEXT])
    assert "streamer" not in generate_spy[0]["kwargs"]


class CharTokenizer:
    """Token i is the character chr(i): enough for the criteria, which only decodes."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(chr(int(i)) for i in ids)


def _ids(prompt: str, answer: str) -> torch.Tensor:
    return torch.tensor([[ord(c) for c in prompt + answer]])


def test_looping_stop_criteria_stops_only_a_looping_tail_and_only_on_check_steps():
    prompt = "PROMPT"
    stop = looping_stop(CharTokenizer(), prompt_length=len(prompt), every=32)
    loop = "row, " * 40  # 200 characters of one unit
    assert not stop(_ids(prompt, loop[:31]), None).any()  # not a check step yet
    assert stop(_ids(prompt, loop[:160]), None).all()  # 160 new tokens: a check step, and a loop
    assert stop.triggered

    varied = "".join(f"line {n} of the page; " for n in range(20))[:160]
    fresh = looping_stop(CharTokenizer(), prompt_length=len(prompt), every=32)
    assert not fresh(_ids(prompt, varied), None).any()
    assert not fresh.triggered
    # The prompt is never part of the check, however repetitive it is.
    repetitive_prompt = "ab" * 100
    after_prompt = looping_stop(CharTokenizer(), prompt_length=len(repetitive_prompt), every=32)
    assert not after_prompt(_ids(repetitive_prompt, varied[:32]), None).any()


def test_close_frees_the_model(model_dir):
    engine = TransformersEngine(model_dir, max_new_tokens=4)
    engine.close()
    assert engine.model is None
    engine.close()  # twice is fine


# ----------------------------------------------------------------------------------------------------------------
# Model directories (shared by both HunyuanOCR engines; checked before anything heavy is imported)


def test_missing_model_directory(tmp_path):
    with pytest.raises(EngineUnavailable, match="does not exist"):
        TransformersEngine(tmp_path / "nowhere")
    with pytest.raises(EngineUnavailable, match="--model DIR"):
        TransformersEngine(None)


def test_unknown_device(model_dir):
    with pytest.raises(EngineUnavailable, match="unknown device 'gpu'"):
        TransformersEngine(model_dir, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailable, match="torch sees no usable GPU"):
            TransformersEngine(model_dir, device="cuda")


def test_directory_without_config(tmp_path):
    with pytest.raises(EngineUnavailable, match="no config.json"):
        TransformersEngine(tmp_path)


def test_directory_with_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(EngineUnavailable, match="'llama' model, not HunyuanOCR"):
        TransformersEngine(tmp_path)


def test_directory_without_weights(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(EngineUnavailable, match=r"no weight files"):
        TransformersEngine(tmp_path)


def test_version_1_5_gets_its_repetition_penalty(tiny_model_dir, tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"model_id": "tencent/HunyuanOCR", "version": "1.5"}))
    assert model_info(tmp_path) == ("tencent/HunyuanOCR", "unknown")
    assert hunyuan.repetition_penalty(model_version(tmp_path)) == 1.08
    assert hunyuan.repetition_penalty("1.0") == 1.0
