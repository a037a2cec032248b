"""The image's runtime config (appliance.runtime): the loader, that every `image=True` setting is a field of it and
reaches it from the builder's config.json, and that the CLI takes its defaults from it. What the web app does with
each field is tested in tests/webui/test_image_config.py."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from appliance import cli, runtime
from appliance.ocr.tasks import DEFAULT_TASK
from appliance.runtime import Runtime, load
from imagebuilder.settings import SETTINGS, resolve

REPO = Path(__file__).resolve().parents[1]

FIELDS = {f.name for f in dataclasses.fields(Runtime)}
# The web app and the CLI tests that show each field changing what the appliance does (a new field needs one here).
WEB_TESTS = "tests/webui/test_image_config.py"
READERS = {
    "language": (WEB_TESTS, "test_image_config_sets_language_and_default_task"),
    "default_task": (WEB_TESTS, "test_configured_default_task_is_the_apis_default"),
    "outputs": (WEB_TESTS, "test_configured_outputs_are_what_the_scan_folder_writes"),
    "engine": ("tests/test_runtime.py", "test_serve_takes_engine_and_listen_address_from_the_image"),
    "lan": ("tests/test_runtime.py", "test_serve_takes_engine_and_listen_address_from_the_image"),
    "model_dir": ("tests/test_runtime.py", "test_model_commands_take_the_image_model_dir"),
}


@pytest.fixture
def image_config(tmp_path, monkeypatch):
    """Write the image's config.json (a dict) where appliance.runtime looks for it."""
    path = tmp_path / "config.json"
    monkeypatch.setattr(runtime, "CONFIG_PATH", path)

    def write(values: dict):
        path.write_text(json.dumps(values))
        return path

    return write


def test_every_image_setting_is_a_runtime_field_and_is_read():
    image = {s.name for s in SETTINGS if s.image and not s.secret}
    assert image <= FIELDS, f"image settings that nothing at run time reads: {image - FIELDS}"
    assert FIELDS == set(READERS), "each runtime field names the test that shows it used"
    for name, (path, test) in READERS.items():
        assert f"def {test}(" in (REPO / path).read_text(), (name, path, test)
    # Secrets are never in config.json: `serve` reads the LAN token from its environment (lan.env).
    assert {s.name for s in SETTINGS if s.image and s.secret} == {"lan_token"}


def test_the_builders_config_json_reads_back_as_built(tmp_path):
    config = resolve(
        "cpu", ["language=zh", "default_task=doc", "outputs=pdf,txt", "engine=cpu", "lan=on", "lan_token=abcdefgh1"]
    )
    written = json.dumps(config.image_config())
    loaded = load_text(tmp_path, written)
    assert loaded == Runtime(language="zh", default_task="doc", outputs=("pdf", "txt"), engine="cpu", lan=True)
    assert "abcdefgh1" not in written


def load_text(folder, text: str) -> Runtime:
    (folder / "config.json").write_text(text)
    return load(folder / "config.json")


def test_the_settings_defaults_are_the_runtime_defaults(tmp_path):
    """An image built without these keys behaves as a host without a config, bar the language: a host's UI follows
    the browser, an image's is set."""
    defaults = {s.name: s.default for s in SETTINGS if s.image and not s.secret}
    built = load_text(tmp_path, json.dumps(defaults))
    assert built == dataclasses.replace(Runtime(), language="en")
    assert built.default_task == DEFAULT_TASK.value == "spotting"
    assert resolve("cpu").default_task == resolve("gpu").default_task == "spotting"  # the profiles keep it


def test_missing_broken_or_odd_files_give_the_defaults(tmp_path, caplog):
    assert load(tmp_path / "absent.json") == Runtime()
    for text in ("{not json", "[1, 2]", '"text"'):
        (tmp_path / "config.json").write_text(text)
        with caplog.at_level(logging.WARNING, logger="appliance.runtime"):
            assert load(tmp_path / "config.json") == Runtime()
        assert "ignoring" in caplog.text
        caplog.clear()


def test_a_bad_value_keeps_its_default_and_the_rest_apply(tmp_path, caplog):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "language": "zh",
                "default_task": "poetry",
                "outputs": ["txt", "docx"],
                "lan": "yes",
                "engine": "cpu",
                "unknown_key": 1,
                "model_dir": None,
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="appliance.runtime"):
        loaded = load(tmp_path / "config.json")
    assert loaded == Runtime(language="zh", engine="cpu")
    for name in ("default_task", "outputs", "lan"):
        assert f": {name}: " in caplog.text


def test_outputs_keep_their_order_without_repeats(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"outputs": ["pdf", "txt", "pdf"]}))
    loaded = load(tmp_path / "config.json")
    assert loaded.outputs == ("pdf", "txt") and loaded.result_format == "pdf"
    assert Runtime().result_format == "json"


def test_serve_takes_engine_and_listen_address_from_the_image(image_config, monkeypatch):
    import webui.server

    seen = {}

    def fake_create_app(config):
        seen.update(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(webui.server, "create_app", fake_create_app)
    monkeypatch.delenv("APPLIANCE_LAN_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["serve", "--data", str(image_config({"engine": "hunyuan-transformers"}).parent)])
    assert seen["ENGINE"] == "hunyuan-transformers" and seen["RUNTIME"].engine == "hunyuan-transformers"
    with pytest.raises(RuntimeError):  # a flag still wins
        cli.main(["serve", "--engine", "cpu", "--data", str(image_config({"engine": "hunyuan-vllm"}).parent)])
    assert seen["ENGINE"] == "cpu"
    # LAN mode: every address, which needs the token (from lan.env in the image).
    data = str(image_config({"lan": True}).parent)
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0"):
        cli.main(["serve", "--data", data])
    with pytest.raises(RuntimeError):  # --host wins over the image's lan
        cli.main(["serve", "--host", "127.0.0.1", "--data", data])


def test_model_commands_take_the_image_model_dir(image_config, monkeypatch, tmp_path, capsys):
    from appliance.ocr.engines import select
    from appliance.ocr.errors import EngineUnavailable

    opened = {}

    def fake_open_engine(name, model_dir=None, **kwargs):
        opened.update(name=name, model_dir=model_dir)
        raise EngineUnavailable(name, "not in this test")

    monkeypatch.setattr(select, "open_engine", fake_open_engine)
    image_config({"engine": "hunyuan-transformers", "model_dir": str(tmp_path / "model")})
    assert cli.main(["ocr", str(tmp_path / "x.png")]) == 1
    assert opened == {"name": "hunyuan-transformers", "model_dir": str(tmp_path / "model")}
    assert cli.main(["ocr", "--model", "/elsewhere", str(tmp_path / "x.png")]) == 1
    assert opened["model_dir"] == "/elsewhere"
    # vllm-server: the gpu image's unit gives no --model; without one in the config it says where to set it.
    image_config({})
    assert cli.main(["vllm-server"]) == 2 and str(runtime.CONFIG_PATH) in capsys.readouterr().err


def test_ocr_without_a_task_uses_the_images_default_task(image_config, monkeypatch, tmp_path):
    from appliance.ocr.engines import select
    from appliance.ocr.errors import OcrError
    from appliance.ocr.tasks import Request

    made = []
    real_make = Request.make

    def spy(task, **kwargs):
        made.append(task)
        return real_make(task, **kwargs)

    def no_engine(*args, **kwargs):
        raise OcrError("not in this test")

    monkeypatch.setattr(Request, "make", staticmethod(spy))
    monkeypatch.setattr(select, "open_engine", no_engine)
    image_config({})
    cli.main(["ocr", str(tmp_path / "x.png")])
    image_config({"default_task": "doc"})
    cli.main(["ocr", str(tmp_path / "x.png")])
    assert made == ["spotting", "doc"]
