"""The fallback sentence (why OCR runs on the CPU) and the status picture, on a fake /sys tree; the units' entry
point `python3 -m appliance.gpu`."""

import subprocess
import sys

from fake_sysfs import CUDA12_STACK, CUDA13_STACK, GTX_1080, RTX_4090, RTX_5090, TITAN_V, add_pci, secure_boot

from appliance.gpu import fallback
from appliance.gpu.sizing import GIB


def test_fallback_no_gpu(sysfs):
    assert fallback.fallback_reason(sysfs, CUDA12_STACK).startswith("No NVIDIA graphics card was found.")


def test_fallback_cpu_image(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    assert "built with the cpu profile" in fallback.fallback_reason(sysfs, {})


def test_fallback_secure_boot_blocks_unsigned_modules(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)  # no driver bound: the module was refused
    secure_boot(sysfs, 1)
    reason = fallback.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith("Secure Boot is on and this image's NVIDIA driver modules are not signed")
    assert "turn Secure Boot off" in reason and "enrol the key with MOK" in reason


def test_fallback_secure_boot_with_signed_but_unenrolled_key(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    secure_boot(sysfs, 1)
    reason = fallback.fallback_reason(sysfs, {**CUDA12_STACK, "modules_signed": True})
    assert "signed with a site key that this PC has not enrolled yet" in reason


def test_fallback_driver_not_loaded(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    secure_boot(sysfs, 0)
    reason = fallback.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith("The NVIDIA driver did not load for the card (10de:2684)")


def test_fallback_nouveau(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nouveau")
    assert "The nouveau driver took the NVIDIA card" in fallback.fallback_reason(sysfs, CUDA12_STACK)


def test_fallback_too_little_memory(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    reason = fallback.fallback_reason(sysfs, CUDA12_STACK, gpu_memory_bytes=6 * GIB, model_version="1.0")
    assert "has 6.0 GiB of memory" in reason


def test_no_fallback_when_all_is_well(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    secure_boot(sysfs, 1)  # Secure Boot on, but the (signed) driver is loaded: fine
    assert fallback.fallback_reason(sysfs, CUDA12_STACK, gpu_memory_bytes=24 * GIB) is None
    assert fallback.fallback_reason(sysfs, CUDA12_STACK) is None  # memory unknown: not a reason by itself


def test_fallback_blackwell_on_the_debian_driver(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_5090, 0x030000)
    reason = fallback.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith(
        "This NVIDIA card (10de:2b85, Blackwell) needs the open kernel modules of NVIDIA driver 570 or newer"
    )
    assert "driver 550.163.01 with proprietary modules" in reason and "cuda13-user-driver" in reason


def test_blackwell_on_the_cuda13_stack_is_fine(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_5090, 0x030000, "nvidia")
    assert fallback.fallback_reason(sysfs, CUDA13_STACK, gpu_memory_bytes=32 * GIB) is None


def test_fallback_old_cards(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, GTX_1080, 0x030000, "nvidia")
    assert "too old for the model server, which needs a Volta or newer GPU" in fallback.fallback_reason(
        sysfs, CUDA12_STACK
    )


def test_volta_needs_cuda12(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, TITAN_V, 0x030000, "nvidia")
    assert fallback.fallback_reason(sysfs, CUDA12_STACK) is None
    assert "not supported by CUDA 13" in fallback.fallback_reason(sysfs, CUDA13_STACK)


def test_status_reports_flavour_and_reason(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    s = fallback.status(sysfs, CUDA12_STACK)
    assert s["flavour"] == "proprietary" and s["secure_boot"] == "not-uefi"
    assert s["fallback_reason"].startswith("The NVIDIA driver did not load")
    assert s["vllm"] is None


def test_the_units_entry_point_answers_usage():
    """appliance-nvidia.service and appliance-vllm.service run `python3 -m appliance.gpu flavour|can-serve`."""
    done = subprocess.run(
        [sys.executable, "-m", "appliance.gpu", "no-such-command"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "flavour|can-serve|cpu-serves|status" in done.stderr
    # appliance-llama.service's question on a machine without a GPU stack (a cpu image, this host): yes, serve
    done = subprocess.run([sys.executable, "-m", "appliance.gpu", "cpu-serves"], capture_output=True, check=False)
    assert done.returncode == 0
