"""Shared test fixtures. The whole test session is offline: nothing may reach the Hugging Face hub."""

from __future__ import annotations

import os

import pytest

# Before anything imports transformers / huggingface_hub: they read these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random HunyuanOCR-shaped model directory (tests/tiny_model.py), built once per session."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-hunyuan"))
