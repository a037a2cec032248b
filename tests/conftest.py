"""Shared test fixtures. The whole test session is offline: nothing may reach the Hugging Face hub."""

from __future__ import annotations

import pytest

from appliance.offline import go_offline

# Before anything imports transformers / huggingface_hub: they read these once.
go_offline()

pytest_plugins = ("llama_fixtures",)  # the real llama.cpp build, GGUF files and server (tests/llama_fixtures.py)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random HunyuanOCR-shaped model directory (tests/tiny_model.py), built once per session."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-hunyuan"))
