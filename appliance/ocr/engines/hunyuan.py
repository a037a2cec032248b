"""What both HunyuanOCR engines share: model directory checks, model identity, sampling, and recognize().

The two engines (in-process transformers, vLLM server) differ only in how they turn (image, prompt) into the model's
answer string: `generate`. Capping the image before and parsing the answer after are here, so both engines give the
same `Page` for the same answer.

A model directory is a local copy of the weights, never a hub id. Its identity comes from `appliance-model.json`
(written by the image builder: model_id, version, revision) when present, otherwise from what the directory shows.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image

from appliance.ocr import images, parse
from appliance.ocr.engines import check_task
from appliance.ocr.errors import EngineUnavailable
from appliance.ocr.result import EngineInfo, Page
from appliance.ocr.tasks import Request, Task

MANIFEST = "appliance-model.json"
MODEL_TYPE = "hunyuan_vl"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")

# Greedy decoding per model version (hunyuanocr.md, "Running it"). 1.0 is the default: it is what an unlabelled
# directory most likely holds, and a penalty on 1.0 changes its answers.
REPETITION_PENALTY = {"1.0": 1.0, "1.5": 1.08}
DEFAULT_VERSION = "1.0"

_VERSION_DIR = re.compile(r"v?(\d+\.\d+)")


def read_manifest(model_dir: str | os.PathLike) -> dict:
    """The image builder's `appliance-model.json`, or {} when there is none or it is unreadable."""
    path = Path(model_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_dir(model_dir: str | os.PathLike | None, engine: str) -> Path:
    """A usable HunyuanOCR directory, or EngineUnavailable saying what is wrong with it."""
    if not model_dir:
        raise EngineUnavailable(engine, "it needs the HunyuanOCR model directory (--model DIR)")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise EngineUnavailable(engine, f"model directory {path} does not exist")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise EngineUnavailable(engine, f"{path} has no config.json: not a model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EngineUnavailable(engine, f"{config_path} is not readable JSON: {error}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != MODEL_TYPE:
        raise EngineUnavailable(
            engine, f"{path} holds a '{model_type}' model, not HunyuanOCR (config.json model_type '{MODEL_TYPE}')"
        )
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise EngineUnavailable(engine, f"{path} has no weight files (*.safetensors or *.bin)")
    return path


def _hf_cache_identity(path: Path) -> tuple[str, str] | None:
    """(model id, revision) from the hub cache layout `models--org--name/snapshots/<sha>[/subdir]`."""
    parts = path.resolve().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            model_id = parts[i - 1][len("models--") :].replace("--", "/")
            return model_id, parts[i + 1]
    return None


def model_info(model_dir: str | os.PathLike) -> tuple[str, str]:
    """(model id, revision) of a model directory: the manifest, else the hub cache layout, else config/dir name."""
    path = Path(model_dir)
    manifest = read_manifest(path)
    cached = _hf_cache_identity(path)
    model_id = manifest.get("model_id") or (cached[0] if cached else None)
    revision = manifest.get("revision") or (cached[1] if cached else None)
    if not model_id:
        try:
            model_id = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            model_id = None
    # A config written from a local path names that path, which says nothing more than the directory does.
    if not model_id or os.path.isabs(str(model_id)):
        model_id = path.resolve().name
    return str(model_id), str(revision or "unknown")


def model_version(model_dir: str | os.PathLike) -> str:
    """'1.0' or '1.5': the manifest's version, else a `v1.0`-like directory name (the hub repo's layout), else 1.0."""
    version = read_manifest(model_dir).get("version")
    if version:
        return str(version)
    match = _VERSION_DIR.fullmatch(Path(model_dir).resolve().name)
    return match.group(1) if match else DEFAULT_VERSION


def repetition_penalty(version: str) -> float:
    return REPETITION_PENALTY.get(version, REPETITION_PENALTY[DEFAULT_VERSION])


class HunyuanEngine:
    """Base of both HunyuanOCR engines: every task, one prompt per request, `generate` supplied by the subclass."""

    name = "hunyuan"
    tasks = frozenset(Task)
    max_pixels = images.MODEL_MAX_PIXELS  # lowered for a GPU sized for less (appliance.gpu.TIERS)

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "cpu"):
        self.model_dir = check_model_dir(model_dir, self.name)
        model_id, revision = model_info(self.model_dir)
        self.version = model_version(self.model_dir)
        self.repetition_penalty = repetition_penalty(self.version)
        self.info = EngineInfo(name=self.name, model=model_id, revision=revision, device=device)

    def recognize(self, image: Image.Image, request: Request) -> Page:
        check_task(self, request)
        # The model's own resize has no upper bound we trust; an uncapped 300-dpi page runs out of GPU memory.
        # to_rgb first: transparent areas become white paper (a plain convert makes them black).
        capped = images.cap_pixels(images.to_rgb(image), self.max_pixels)
        raw = self.generate(capped, request.prompt())
        # Boxes are in 0..1000 of the page, so they are scaled to the ORIGINAL size, not the capped one.
        return parse.to_page(raw, request, image.width, image.height)

    def generate(self, image: Image.Image, prompt: str) -> str:
        """The model's answer for one image and one prompt, special tokens skipped."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
