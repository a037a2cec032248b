"""The systemd units' questions, as ExecCondition commands (exit 1, with the reason on stderr, is what systemd reads
as "skip this unit", not a failure):

    python3 -m appliance.gpu flavour     # appliance-nvidia.service: prints open|proprietary for the first NVIDIA GPU
    python3 -m appliance.gpu can-serve   # appliance-vllm.service: a supported card, driver loaded, enough memory
    python3 -m appliance.gpu cpu-serves  # appliance-llama.service: no usable GPU serves the model (the inverse)
    python3 -m appliance.gpu status      # JSON: cards, flavour, Secure Boot, fallback reason (the UI's sentence)
"""

from __future__ import annotations

import json
import sys

from appliance.gpu.detect import detect, load_stack_info, module_flavour, stack_flavours
from appliance.gpu.fallback import banner, fallback_reason, status
from appliance.model_dir import IMAGE_MODEL_DIR, model_version


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "flavour":  # appliance-nvidia.service: which modules to load
        gpus = detect()
        flavour = module_flavour(gpus[0].device_id, stack_flavours(load_stack_info())) if gpus else None
        if flavour:
            print(flavour)
            return 0
        print(fallback_reason() or "no NVIDIA module flavour drives this card", file=sys.stderr)
        return 1
    if command == "can-serve":  # appliance-vllm.service: a supported card, driver loaded, enough memory
        reason = banner()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        return 0
    if command == "cpu-serves":  # appliance-llama.service: the model on the CPU, unless the GPU serves it
        if load_stack_info() and banner() is None:
            print("a usable NVIDIA GPU serves HunyuanOCR (vLLM): llama.cpp on the CPU is not needed", file=sys.stderr)
            return 1
        return 0
    if command == "status":
        print(json.dumps(status(model_version=model_version(IMAGE_MODEL_DIR)), indent=1))
        return 0
    print("usage: python3 -m appliance.gpu [flavour|can-serve|cpu-serves|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
