"""The engine's start-up steps as the kiosk's start screen shows them, in English and Chinese.

The English words (with any detail) are the `progress` field of GET /health, for programs and logs; the step's key
and values ride along so the UI can say the same step in its own language (webui.i18n adds this table to its
catalogue as step_<key>).
"""

from __future__ import annotations

STEPS = {
    "starting": ("starting the OCR engine", "正在启动识别引擎"),
    "opening": ("loading the {engine} engine", "正在加载 {engine} 引擎"),
    "reopening": ("the OCR engine stopped answering; starting it again", "识别引擎没有响应，正在重新启动"),
    "vllm_waiting": ("NVIDIA driver loaded; waiting for the model server", "NVIDIA 驱动已加载，正在等待模型服务"),
    "vllm_engine": ("starting the model server", "正在启动模型服务"),
    "vllm_weights": ("loading HunyuanOCR onto the GPU", "正在将 HunyuanOCR 载入 GPU"),
    "vllm_memory": ("measuring GPU memory for the cache", "正在测量可用于缓存的显存"),
    "vllm_cache": ("setting up the model's cache on the GPU", "正在 GPU 上建立模型缓存"),
    "vllm_api": ("starting the model server's API", "正在启动模型服务接口"),
    "vllm_gone": ("the model server did not start; loading the CPU engine", "模型服务未能启动，正在加载 CPU 引擎"),
    "llama_waiting": ("waiting for the model server", "正在等待模型服务"),
    "llama_weights": ("loading HunyuanOCR into memory", "正在将 HunyuanOCR 载入内存"),
    "llama_vision": ("loading the model's image reader", "正在加载模型的图像编码器"),
    "llama_cache": ("setting up the model's cache", "正在建立模型缓存"),
    "llama_api": ("starting the model server's API", "正在启动模型服务接口"),
    "warm_up": ("warming up: a first page through the model", "预热中：用模型识别第一页"),
}


def report(progress, key: str, detail: str = "", percent: int | None = None, **values) -> None:
    """Tell `progress` (the start screen's listener; None: nobody) that start-up reached step `key`."""
    if progress is None:
        return
    words = STEPS[key][0].format(**values) + (f" ({detail})" if detail else "")
    extra = {"step": key, "step_values": values} | ({"percent": percent} if percent is not None else {})
    progress(words, **extra)
