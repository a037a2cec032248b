"""The HunyuanOCR model directory: what it must hold, what it says about itself, and where the gpu image keeps it.

A model directory is a local copy of the weights, never a hub id. Its identity comes from `appliance-model.json`
(written by the image builder, appliance/build/model.py: model_id, version, revision) when present, otherwise from
what the directory shows. The engines, the model server launcher, the GPU checks and the image builder all read
these facts from here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from appliance.ocr.errors import EngineUnavailable

MANIFEST = "appliance-model.json"
MODEL_TYPE = "hunyuan_vl"  # config.json's model_type of every HunyuanOCR version
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
IMAGE_MODEL_DIR = Path("/usr/share/appliance/model")  # where the gpu image keeps the weights (imagebuilder.model)
DEFAULT_VERSION = "1.0"  # what an unlabelled directory most likely holds

_VERSION_DIR = re.compile(r"v?(\d+\.\d+)")


def read_manifest(model_dir: str | os.PathLike) -> dict:
    """The image builder's `appliance-model.json`, or {} when there is none or it is unreadable."""
    path = Path(model_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_dir(model_dir: str | os.PathLike | None, engine: str, gguf: bool = False) -> Path:
    """A usable HunyuanOCR directory, or EngineUnavailable saying what is wrong with it. `gguf`: the engine loads
    the GGUF files (find_gguf), so a directory of only those will do."""
    if not model_dir:
        raise EngineUnavailable(engine, "it needs the HunyuanOCR model directory (--model DIR)")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise EngineUnavailable(engine, f"model directory {path} does not exist")
    if gguf:
        find_gguf(path, engine)
        return path
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


GGUF_DIR = "gguf"  # <model_dir>/gguf/: the GGUF files llama-server loads (imagebuilder.gguf writes them)
MMPROJ_PREFIX = "mmproj-"  # the vision projector's file; the text model is the other *.gguf


def has_gguf(model_dir: str | os.PathLike) -> bool:
    """Whether `model_dir` holds a usable GGUF pair (find_gguf would find one)."""
    try:
        find_gguf(model_dir)
    except EngineUnavailable:
        return False
    return True


def find_gguf(model_dir: str | os.PathLike, engine: str = "hunyuan-llamacpp") -> tuple[Path, Path]:
    """(text model, vision projector) GGUF files of a HunyuanOCR model: in `<dir>/gguf/`, or in DIR itself when it
    holds them. EngineUnavailable saying what is missing otherwise. With several text models (e.g. q8_0 and
    f16) none is guessed: the folder must hold exactly one."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise EngineUnavailable(engine, f"model directory {path} does not exist")
    for folder in (path / GGUF_DIR, path):
        files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if not files:
            continue
        mmproj = [f for f in files if f.name.startswith(MMPROJ_PREFIX)]
        text = [f for f in files if not f.name.startswith(MMPROJ_PREFIX)]
        if len(text) != 1 or len(mmproj) != 1:
            raise EngineUnavailable(
                engine,
                f"{folder} must hold one HunyuanOCR text model and one '{MMPROJ_PREFIX}*.gguf' vision projector; "
                f"it holds {', '.join(f.name for f in files)}",
            )
        return text[0], mmproj[0]
    raise EngineUnavailable(
        engine, f"{path} has no GGUF files (in {path / GGUF_DIR} or itself): convert the model with 'appliance build'"
    )
