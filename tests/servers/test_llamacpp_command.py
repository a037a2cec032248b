"""The llama-server launcher without a server: where the GGUF files are found, which binary runs, its command line."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.model_dir import find_gguf
from appliance.ocr.errors import EngineUnavailable
from appliance.servers import llamacpp


def gguf_dir(path, *names):
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_bytes(b"GGUF")
    return path


def test_find_gguf_in_the_model_dirs_gguf_folder_or_in_dir_itself(tmp_path):
    model = tmp_path / "model"
    (model / "config.json").parent.mkdir()
    (model / "config.json").write_text("{}")
    gguf_dir(model / "gguf", "hunyuanocr-q8_0.gguf", "mmproj-hunyuanocr-f16.gguf")
    assert find_gguf(model) == (model / "gguf/hunyuanocr-q8_0.gguf", model / "gguf/mmproj-hunyuanocr-f16.gguf")
    flat = gguf_dir(tmp_path / "flat", "HunyuanOCR-Q4_K_M.gguf", "mmproj-HunyuanOCR-f16.gguf")
    assert find_gguf(flat) == (flat / "HunyuanOCR-Q4_K_M.gguf", flat / "mmproj-HunyuanOCR-f16.gguf")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ((), "has no GGUF files"),
        (("hunyuanocr-q8_0.gguf",), "one HunyuanOCR text model and one 'mmproj-"),
        (("hunyuanocr-q8_0.gguf", "hunyuanocr-f16.gguf", "mmproj-hunyuanocr-f16.gguf"), "it holds hunyuanocr-f16"),
    ],
)
def test_find_gguf_says_what_is_wrong(tmp_path, names, message):
    with pytest.raises(EngineUnavailable, match=message):
        find_gguf(gguf_dir(tmp_path / "m", *names))
    with pytest.raises(EngineUnavailable, match="does not exist"):
        find_gguf(tmp_path / "nowhere")


def executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_binary_lookup_env_then_image_path_then_path(tmp_path, monkeypatch):
    given, installed, on_path = (executable(tmp_path / name) for name in ("given", "installed", "llama-server"))
    monkeypatch.setattr(llamacpp, "INSTALLED_BINARY", installed)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(llamacpp.BINARY_ENV, str(given))
    assert llamacpp.server_binary() == str(given)
    monkeypatch.delenv(llamacpp.BINARY_ENV)
    assert llamacpp.server_binary() == str(installed)
    monkeypatch.setattr(llamacpp, "INSTALLED_BINARY", tmp_path / "absent")
    assert llamacpp.server_binary() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EngineUnavailable, match="llama-server is not installed"):
        llamacpp.server_binary()


def test_server_command_is_offline_loopback_one_slot(tmp_path):
    model = gguf_dir(tmp_path / "HunyuanOCR-gguf", "hunyuanocr-q8_0.gguf", "mmproj-hunyuanocr-f16.gguf")
    command = llamacpp.server_command(model, 8002, threads=3, ctx_size=6144, binary="/opt/llama.cpp/bin/llama-server")

    def value(flag):
        return command[command.index(flag) + 1]

    assert command[0] == "/opt/llama.cpp/bin/llama-server"
    assert value("--model") == str(model / "hunyuanocr-q8_0.gguf")
    assert value("--mmproj") == str(model / "mmproj-hunyuanocr-f16.gguf")
    assert value("--alias") == "HunyuanOCR-gguf"  # what the client looks for in /v1/models (model_info)
    assert (value("--host"), value("--port"), value("--parallel")) == ("127.0.0.1", "8002", "1")
    assert (value("--threads"), value("--threads-batch"), value("--ctx-size")) == ("3", "3", "6144")
    assert {"--no-webui", "--no-repack"} <= set(command)
    assert not any(arg.startswith(("-hf", "--hf", "http")) or "url" in arg for arg in command)


def test_threads_default_to_physical_cores(tmp_path):
    model = gguf_dir(tmp_path / "m", "hunyuanocr-q8_0.gguf", "mmproj-hunyuanocr-f16.gguf")
    cores = llamacpp.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    command = llamacpp.server_command(model, binary="llama-server")
    assert command[command.index("--threads") + 1] == str(cores)
