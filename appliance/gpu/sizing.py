"""How to size the vLLM server for a card: memory use, model length and image pixel cap by the card's memory, and
whether it runs compiled (a compile cache the image ships for the card's architecture) or eager."""

from __future__ import annotations

from pathlib import Path

from appliance.gpu.reasons import Reason

GIB = 2**30
# vLLM compile caches the build bundled (--set vllm_compile_cache=DIR), one folder per GPU architecture (sm_89 ...):
# a card with one runs vLLM compiled (CUDA graphs, faster pages); any other card runs it eager (no compile at boot).
COMPILE_CACHE = Path("/usr/share/appliance/vllm-compile-cache")

# The vendor's figures (1.0: ~20 GB, 1.5: >= 24 GB) are vLLM's default reservation of 90% of a 24 GB card, mostly
# KV cache; the model itself is ~1B parameters (~2 GiB of bf16 weights) and an appliance serves one page at a time,
# so far less fits. The minimum keeps weights + CUDA context + vision activations at the pixel cap + a KV cache for
# one full-length request, with room; 1.5 asks ~1.2x more than 1.0 in the vendor's docs, so its minimum is scaled the
# same way. Below the minimum the CPU engine serves (a reason, not a crash at load).
MIN_GPU_MEMORY = {"1.0": 8 * GIB, "1.5": 10 * GIB}
# The display (Xorg + the kiosk browser) may share the card; keep this much out of vLLM's reach.
HEADROOM = int(1.5 * GIB)
MAX_UTILIZATION = 0.90  # vLLM's default; more leaves nothing for the desktop
# (card memory at least, max model length, image pixel cap). Image tokens = pixels / 32**2 (patch 16, merge 2):
# 2048*2048 -> 4096 tokens + up to ~12k answer tokens in 16384; 1280*1280 -> 1600 + ~6k in 8192. The cap is what
# the engines pass to images.cap_pixels(); an uncapped 300-dpi page ran out of memory even on 141 GB.
TIERS = (
    (16 * GIB, 16384, 2048 * 2048),
    (12 * GIB, 12288, 1792 * 1792),
    (0, 8192, 1280 * 1280),
)


class NotEnoughGpuMemory(ValueError):
    """The card is too small for the model: the message is the UI's sentence (`reason`, a Reason)."""

    def __init__(self, reason: Reason):
        self.reason = reason
        super().__init__(reason)


def vllm_settings(gpu_memory_bytes: int, model_version: str = "1.5") -> dict:
    """vLLM server settings for a card with this much memory; NotEnoughGpuMemory (the UI's sentence) below minimum."""
    minimum = MIN_GPU_MEMORY.get(model_version, max(MIN_GPU_MEMORY.values()))
    if gpu_memory_bytes < minimum:
        raise NotEnoughGpuMemory(
            Reason(
                "too_little_memory",
                memory_gib=f"{gpu_memory_bytes / GIB:.1f}",
                version=model_version,
                minimum_gib=f"{minimum / GIB:.0f}",
            )
        )
    utilization = min(MAX_UTILIZATION, (gpu_memory_bytes - HEADROOM) / gpu_memory_bytes)
    _, max_model_len, max_pixels = next(t for t in TIERS if gpu_memory_bytes >= t[0])
    return {
        # Rounded down: vLLM takes the fraction of the whole card, and must never eat the display's share.
        "gpu_memory_utilization": int(utilization * 100) / 100,
        "max_model_len": max_model_len,
        "max_pixels": max_pixels,
    }


def compile_cache_for(compute_capability: str | None, root: str | Path = COMPILE_CACHE) -> Path | None:
    """The image's vLLM compile cache for a card of this compute capability ("8.9" -> root/sm_89), if it has one."""
    if not compute_capability:
        return None
    cache = Path(root) / f"sm_{compute_capability.replace('.', '')}"
    return cache if cache.is_dir() and any(cache.iterdir()) else None
