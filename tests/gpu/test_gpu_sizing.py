"""vLLM's sizing by the card's memory (appliance.gpu.sizing)."""

import pytest

from appliance.gpu import sizing
from appliance.gpu.sizing import GIB, NotEnoughGpuMemory


def test_vllm_settings_scale_with_memory():
    small = sizing.vllm_settings(8 * GIB, "1.0")
    assert small == {"gpu_memory_utilization": 0.81, "max_model_len": 8192, "max_pixels": 1280 * 1280}
    mid = sizing.vllm_settings(12 * GIB, "1.5")
    assert mid["max_model_len"] == 12288 and mid["gpu_memory_utilization"] == 0.87
    big = sizing.vllm_settings(24 * GIB, "1.5")
    assert big == {"gpu_memory_utilization": 0.9, "max_model_len": 16384, "max_pixels": 2048 * 2048}
    assert sizing.vllm_settings(80 * GIB)["gpu_memory_utilization"] == 0.9
    for memory in (8, 10, 12, 16, 24, 48, 80):  # the display's share is never handed to vLLM
        s = sizing.vllm_settings(memory * GIB, "1.0")
        assert memory * GIB * (1 - s["gpu_memory_utilization"]) >= sizing.HEADROOM
        # the longest image fits in the model length with 4096 answer tokens
        assert s["max_pixels"] // 32**2 + 4096 <= s["max_model_len"]


def test_vllm_settings_refuse_small_cards():
    with pytest.raises(NotEnoughGpuMemory) as e:
        sizing.vllm_settings(6 * GIB, "1.0")
    assert "has 6.0 GiB of memory and HunyuanOCR 1.0 needs at least 8 GiB" in str(e.value)
    assert "runs on the CPU" in str(e.value)
    with pytest.raises(NotEnoughGpuMemory, match="HunyuanOCR 1.5 needs at least 10 GiB"):
        sizing.vllm_settings(9 * GIB, "1.5")
    sizing.vllm_settings(9 * GIB, "1.0")  # 1.0 fits there
