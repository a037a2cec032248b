"""The model's CPU form in the model layer: the GGUF files llama.cpp's llama-server loads (cpu_model setting).

With cpu_model on, the model layer gets `<model dir>/gguf/hunyuanocr-<quant>.gguf` and `mmproj-hunyuanocr-f16.gguf`
(appliance.model_dir.find_gguf finds them in the image):
  - the model directory's own GGUF files when it already holds a HunyuanOCR pair (in gguf/ or beside config.json):
    they are part of its file list and copied as they are (cpu_model_quant does not apply to them);
  - otherwise converted at build time by imagebuilder.gguf (llama.cpp's converter from the pinned sdist), cached in
    cache/gguf/<key>/ by the checkpoint's file hashes, the quant and the converter, so a rebuild converts nothing.
Either way each file's sha256 and origin go in the model manifest (appliance-model.json) and the build manifest, and
no file may reach 4 GiB (model.check_file_sizes).

The checkpoint's weights (*.safetensors) go into the image only where something loads them: the gpu profile (vLLM),
an image with the transformers extra, or an image without the CPU model. A cpu image with cpu_model keeps the
checkpoint's small files (config, tokenizer, processor, licence) beside the GGUF files and saves the ~2 GB of weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from appliance.files import sha256_file
from appliance.model_dir import GGUF_DIR, find_gguf
from appliance.ocr.errors import EngineUnavailable
from imagebuilder import gguf, llamacpp_source
from imagebuilder.context import BuildError, hash_inputs

WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def wanted(config) -> bool:
    return bool(config.model_dir) and bool(config.cpu_model)


def ships_weights(config) -> bool:
    """Whether the checkpoint's weights go into the image: only where an engine loads them (module docstring)."""
    return bool(config.gpu_stack) or "transformers" in config.python_extras or not wanted(config)


def is_weight(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES) or path.rsplit("/", 1)[-1] in WEIGHT_INDEXES


def own_gguf(model_dir: Path) -> tuple[str, str] | None:
    """(text, mmproj) of the directory's own GGUF pair, relative to it, or None when it holds no GGUF file; a
    directory with an ambiguous set (two text models) is a BuildError naming the files."""
    if not any(model_dir.glob("*.gguf")) and not any((model_dir / GGUF_DIR).glob("*.gguf")):
        return None
    try:
        text, mmproj = find_gguf(model_dir)
    except EngineUnavailable as e:
        raise BuildError(str(e)) from None
    return text.relative_to(model_dir).as_posix(), mmproj.relative_to(model_dir).as_posix()


def converted_key(manifest: dict, quant: str) -> str:
    """The cache key of a conversion: the checkpoint's files, the quant, the converter (sdist + our wrapper)."""
    return hash_inputs("gguf", manifest["files_sha256"], quant, llamacpp_source.SDIST.sha256, Path(gguf.__file__))


def convert_cached(cache_dir: Path, model_dir: Path, manifest: dict, quant: str) -> tuple[Path, Path]:
    """The converted (text, mmproj) pair for this checkpoint and quant, from cache/gguf/<key>/ or made now."""
    folder = cache_dir / "gguf" / converted_key(manifest, quant)
    done = folder / "done.json"
    text, mmproj = folder / gguf.text_name(quant), folder / gguf.MMPROJ_NAME
    if done.is_file() and text.is_file() and mmproj.is_file():
        return text, mmproj
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log_path = cache_dir / "gguf" / f"{folder.name}.log"
    print(f"    converting the checkpoint to GGUF ({quant} text, f16 mmproj); log: {log_path}", flush=True)
    with open(log_path, "w") as log:
        try:
            gguf.convert(
                model_dir, partial, quant, cache_dir=cache_dir, llama_quantize=quantizer(cache_dir, quant), log=log
            )
        except Exception as e:  # the converter's own error is in its log
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise BuildError(f"GGUF conversion of {model_dir} failed ({type(e).__name__}: {e}):\n{tail}") from None
    (partial / "done.json").write_text(json.dumps({"quant": quant, "files_sha256": manifest["files_sha256"]}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return text, mmproj


def quantizer(cache_dir: Path, quant: str) -> Path | None:
    """llama-quantize for the k-quants the converter does not write itself: the host build's (made if missing)."""
    if quant in ("f16", "q8_0"):
        return None
    tool = llamacpp_source.host_bin_dir(cache_dir) / "llama-quantize"
    if not tool.is_file():
        print("    building llama-quantize on this host for the k-quant ...", flush=True)
        llamacpp_source.host_build(cache_dir)
    return tool


def entry(path: Path, rel: str, origin: str) -> dict:
    return {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path), "origin": origin}


def plan(config, cache_dir: Path, model_dir: Path, manifest: dict) -> tuple[list[dict], dict[str, Path], dict]:
    """(the model layer's file entries, {path: source file} for those not in the model directory, the GGUF facts
    for the manifests). Converts (or reuses a conversion) when the directory has no GGUF pair of its own."""
    files = [e for e in manifest["files"] if ships_weights(config) or not is_weight(e["path"])]
    if not wanted(config):
        return files, {}, {}
    own = own_gguf(model_dir)
    if own:
        origin = "the model directory's own GGUF file, used as it is"
        files = [{**e, "origin": origin} if e["path"] in own else e for e in files]
        return files, {}, {"text": own[0], "mmproj": own[1], "quant": "as given", "origin": origin}
    quant = config.cpu_model_quant
    text, mmproj = convert_cached(cache_dir, model_dir, manifest, quant)
    origin = (
        f"converted at build time from {manifest['model_id']} revision {manifest['revision']} by llama.cpp's "
        f"convert_hf_to_gguf.py ({llamacpp_source.SDIST.filename}, sha256 {llamacpp_source.SDIST.sha256[:16]}...)"
    )
    added = {f"{GGUF_DIR}/{p.name}": p for p in (text, mmproj)}
    files = [e for e in files if e["path"] not in added]
    files += [entry(p, rel, f"{origin}, {'f16' if p == mmproj else quant}") for rel, p in added.items()]
    facts = {
        "text": f"{GGUF_DIR}/{text.name}",
        "mmproj": f"{GGUF_DIR}/{mmproj.name}",
        "quant": quant,
        "origin": origin,
    }
    return files, added, facts
