"""Whether this machine's GPU can serve the model, and if not, the one sentence why (appliance.gpu.reasons).

Checked in the order a person would fix things; `banner` is what the UI shows and what appliance-vllm.service's
ExecCondition (`python3 -m appliance.gpu can-serve`) prints when it skips the unit; `status` is the whole picture.
"""

from __future__ import annotations

from pathlib import Path

from appliance.gpu.detect import (
    BLACKWELL_MIN_DRIVER,
    CUDA13_DROPS,
    OPEN_REQUIRED,
    SYSFS,
    Gpu,
    detect,
    driver_loaded,
    driver_major,
    generation_row,
    gpu_memory_bytes,
    load_stack_info,
    module_flavour,
    secure_boot_state,
    stack_flavours,
)
from appliance.gpu.reasons import Reason
from appliance.gpu.sizing import NotEnoughGpuMemory, vllm_settings
from appliance.model_dir import IMAGE_MODEL_DIR, has_gguf, model_version


def secure_boot_message(state: str, modules_signed: bool) -> Reason | None:
    """The UI's sentence when Secure Boot stops the NVIDIA modules from loading; None when it does not."""
    if state != "on":
        return None
    return Reason("secure_boot_site_key" if modules_signed else "secure_boot_unsigned")


def unsupported_reason(gpu: Gpu, stack: dict) -> Reason | None:
    """Why this image cannot drive this card at all (whatever happens at boot), or None."""
    _, _, generation, _, runs_vllm = generation_row(gpu.device_id)
    card = {"pci_id": gpu.pci_id, "generation": generation}
    if not runs_vllm:
        return Reason("too_old", **card)
    flavours = stack_flavours(stack)
    major = driver_major(stack)
    version = stack.get("driver", {}).get("version", "unknown")
    if generation in OPEN_REQUIRED and (
        module_flavour(gpu.device_id, flavours) is None or (major is not None and major < BLACKWELL_MIN_DRIVER)
    ):
        return Reason(
            "needs_open", **card, min_driver=BLACKWELL_MIN_DRIVER, version=version, flavours="/".join(flavours)
        )
    if module_flavour(gpu.device_id, flavours) is None:
        return Reason("needs_proprietary", **card)
    if generation in CUDA13_DROPS and str(stack.get("cuda", "")).startswith("13"):
        return Reason("no_cuda13", **card)
    return None


def fallback_reason(
    sysfs: str | Path = SYSFS,
    stack: dict | None = None,
    gpu_memory_bytes: int | None = None,
    model_version: str = "1.5",
) -> Reason | None:
    """One sentence for the UI saying why OCR runs on the CPU, or None when the GPU can serve the model.

    Checked in the order a person would fix things: no card, a card this image cannot drive, Secure Boot refusing
    the modules, the driver not loaded, too little memory (only when the memory is known: nvidia-smi needs the
    driver).
    """
    stack = load_stack_info() if stack is None else stack
    gpus = detect(sysfs)
    if not gpus:
        return Reason("no_card")
    if not stack:
        return Reason("cpu_image")
    gpu = gpus[0]
    reason = unsupported_reason(gpu, stack)
    if reason:
        return reason
    if not driver_loaded(gpu, sysfs):
        blocked = secure_boot_message(secure_boot_state(sysfs), bool(stack.get("modules_signed")))
        if blocked:
            return blocked
        if gpu.driver == "nouveau":
            return Reason("nouveau", pci_id=gpu.pci_id)
        return Reason("driver_not_loaded", pci_id=gpu.pci_id)
    if gpu_memory_bytes is not None:
        try:
            vllm_settings(gpu_memory_bytes, model_version)
        except NotEnoughGpuMemory as e:
            return e.reason
    return None


def _memory_if_loaded(gpus: list[Gpu], sysfs: str | Path) -> int | None:
    """The card's memory when its driver is loaded (nvidia-smi needs it), else None."""
    return gpu_memory_bytes() if gpus and driver_loaded(gpus[0], sysfs) else None


def status(sysfs: str | Path = SYSFS, stack: dict | None = None, model_version: str = "1.5") -> dict:
    stack = load_stack_info() if stack is None else stack
    gpus = detect(sysfs)
    memory = _memory_if_loaded(gpus, sysfs)
    reason = fallback_reason(sysfs, stack, memory, model_version)
    return {
        "gpus": [
            {"address": g.address, "pci_id": g.pci_id, "generation": g.generation, "driver": g.driver} for g in gpus
        ],
        "flavour": module_flavour(gpus[0].device_id, stack_flavours(stack)) if gpus else None,
        "secure_boot": secure_boot_state(sysfs),
        "memory_bytes": memory,
        "vllm": vllm_settings(memory, model_version) if memory and reason is None else None,
        "fallback_reason": reason,
    }


def banner(
    sysfs: str | Path = SYSFS, stack: dict | None = None, model_dir: str | Path = IMAGE_MODEL_DIR
) -> Reason | None:
    """The UI's one sentence on a GPU image when OCR runs on the CPU; None on a cpu image or when the GPU serves.
    An image that carries the CPU model (GGUF files beside the weights) says that every task still works."""
    stack = load_stack_info() if stack is None else stack
    if not stack:
        return None  # a cpu image: the CPU engine is the design, not a fallback
    gpus = detect(sysfs)
    reason = fallback_reason(sysfs, stack, _memory_if_loaded(gpus, sysfs), model_version(model_dir))
    return reason.with_cpu_model() if reason and has_gguf(model_dir) else reason
