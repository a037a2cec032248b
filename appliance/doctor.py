"""`appliance doctor`: what this machine has, and which engine `auto` picks and why."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from appliance import __version__
from appliance.ocr.engines.select import choose


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report(engine: str = "auto", model_dir=None, vllm_url=None) -> str:
    choice = choose(engine, model_dir, vllm_url)
    lines = [
        f"appliance {__version__}, Python {platform.python_version()} ({sys.executable})",
        f"GPU:      {choice.gpu or 'none usable'}",
        f"model:    {model_dir or 'none given (--model DIR)'}",
        f"engine:   {choice.engine} ({choice.reason})",
        "packages: "
        + ", ".join(
            f"{p} {_version(p)}"
            for p in ("rapidocr", "onnxruntime", "torch", "transformers", "vllm", "pypdfium2", "pillow")
        ),
    ]
    return "\n".join(lines)
