"""The GPU on the booted appliance, split by job:

  detect.py     the card (PCI ids, generation, module flavour), the driver, nvidia-smi, Secure Boot, the image's stack
  sizing.py     vLLM's memory use, model length and pixel cap by the card's memory; the compile cache for its arch
  reasons.py    the UI's one sentence why OCR runs on the CPU, in English and Chinese
  fallback.py   which sentence applies (fallback_reason, banner) and the whole picture (status)
  __main__.py   the units' ExecCondition: `python3 -m appliance.gpu flavour|can-serve|status`

Nothing is defined here; the names below are re-exported for the web UI and the image builder.
"""

from appliance.gpu.detect import load_stack_info
from appliance.gpu.fallback import banner
from appliance.gpu.reasons import MEANWHILE, REASONS, Reason
from appliance.gpu.sizing import COMPILE_CACHE

__all__ = ["COMPILE_CACHE", "MEANWHILE", "REASONS", "Reason", "banner", "load_stack_info"]
