"""Whether this PC has the free memory to load HunyuanOCR on the CPU (llama.cpp), and the sentence when it has not.

What llama-server needs: its two GGUF files (mapped in whole: every weight is read for every token), the KV cache
for its context (HunyuanOCR's text model: layers x KV heads x head size x K and V x f16 per token, read from
config.json), and compute buffers for the vision encoder at the pixel cap (RESERVE; the spike measured peak RSS
2.2-2.5 GB for 1.5 GB of files with a 4096-token context). Checked against MemAvailable at start:
`python3 -m appliance.servers.ram` is appliance-llama.service's ExecCondition (exit 1 skips the unit, its sentence
in the journal), and the engine choice (appliance.ocr.engines.select) says the same sentence on the status page.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from appliance.messages import Text
from appliance.model_dir import IMAGE_MODEL_DIR, find_gguf
from appliance.ocr.errors import EngineUnavailable

MEMINFO = Path("/proc/meminfo")
RESERVE = 512 * 2**20  # compute buffers (vision encoder at the cap) and the server process itself
GIB = 2**30


def kv_cache_bytes(model_dir: Path, ctx_size: int) -> int:
    """K and V in f16 for ctx_size tokens, from config.json's text dimensions (0 when they cannot be read)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    text = config.get("text_config", config) if isinstance(config, dict) else {}
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text.get("num_key_value_heads") or text["num_attention_heads"])
        head_dim = int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0
    return layers * heads * head_dim * 2 * 2 * ctx_size


def needed_bytes(model_dir: str | Path, ctx_size: int) -> int:
    """Memory llama-server needs for this model and context; EngineUnavailable when the GGUF files are missing."""
    text, mmproj = find_gguf(model_dir)
    return text.stat().st_size + mmproj.stat().st_size + kv_cache_bytes(Path(model_dir), ctx_size) + RESERVE


def available_bytes(meminfo: Path | None = None) -> int | None:
    """MemAvailable: what can be had without swapping (None where /proc/meminfo says nothing)."""
    try:
        for line in (meminfo or MEMINFO).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def shortfall(model_dir: str | Path, ctx_size: int, meminfo: Path | None = None) -> str | None:
    """The sentence saying why the CPU model cannot be loaded for lack of memory, or None when it fits."""
    need, free = needed_bytes(model_dir, ctx_size), available_bytes(meminfo)
    if free is None or free >= need:
        return None
    return Text("ram_short", need=f"{need / GIB:.1f}", free=f"{free / GIB:.1f}")


def main(argv: list[str] | None = None) -> int:
    """ExecCondition of appliance-llama.service: exit 0 when the model fits in free memory, 1 (skip) when not."""
    from appliance import runtime
    from appliance.servers.llamacpp import DEFAULT_CTX_SIZE

    args = sys.argv[1:] if argv is None else argv
    model_dir = args[0] if args else (runtime.load().model_dir or str(IMAGE_MODEL_DIR))
    try:
        reason = shortfall(model_dir, DEFAULT_CTX_SIZE)
    except EngineUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    if reason:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
