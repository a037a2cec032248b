"""Shared test fixtures. The whole test session is offline: nothing may reach the Hugging Face hub."""

from __future__ import annotations

import pytest

from appliance.offline import go_offline

# Before anything imports transformers / huggingface_hub: they read these once.
go_offline()

pytest_plugins = ("llama_fixtures",)  # the real llama.cpp build, GGUF files and server (tests/llama_fixtures.py)


@pytest.fixture(scope="session")
def hunyuan_checkpoint(tmp_path_factory):
    """A tiny random HunyuanOCR checkpoint in the real 1.5 layout (tests/hunyuan_checkpoint.py), built once per
    session: transformers, vLLM and llama.cpp's converter all load it."""
    from hunyuan_checkpoint import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("hunyuan-checkpoint"))


@pytest.fixture(scope="session")
def tiny_model_dir(hunyuan_checkpoint):
    """The model directory the engine and builder tests use: the real-layout tiny checkpoint."""
    return hunyuan_checkpoint
