"""GPU detection, module flavour, vLLM sizing, Secure Boot and the fallback sentence, on a fake /sys tree."""

import itertools
import json
import struct

import pytest

from appliance import gpu
from appliance.gpu import GIB, NotEnoughGpuMemory

RTX_4090 = 0x2684  # Ada
RTX_5090 = 0x2B85  # Blackwell
GTX_1080 = 0x1B80  # Pascal
TITAN_V = 0x1D81  # Volta
T4 = 0x1EB8  # Turing
H100 = 0x2330  # Hopper

CUDA12_STACK = {
    "name": "cuda12-debian-driver",
    "cuda": "12.8",
    "modules_signed": False,
    "driver": {"source": "debian", "version": "550.163.01", "flavours": ["proprietary"]},
}
CUDA13_STACK = {
    "name": "cuda13-user-driver",
    "cuda": "13.0",
    "modules_signed": False,
    "driver": {"source": "deb-dir", "version": "580.95.05", "flavours": ["open", "proprietary"]},
}


def add_pci(sysfs, address, vendor, device, pci_class, driver=None):
    d = sysfs / "bus" / "pci" / "devices" / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"0x{vendor:04x}\n")
    (d / "device").write_text(f"0x{device:04x}\n")
    (d / "class").write_text(f"0x{pci_class:06x}\n")
    if driver:
        target = sysfs / "bus" / "pci" / "drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (d / "driver").symlink_to(target)
        if driver == "nvidia":
            (sysfs / "module" / "nvidia").mkdir(parents=True, exist_ok=True)
    return d


def secure_boot(sysfs, value):
    efivars = sysfs / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True, exist_ok=True)
    if value is not None:
        (efivars / gpu.SECURE_BOOT_VAR).write_bytes(struct.pack("<I", 0x6) + bytes([value]))


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "sys"
    add_pci(root, "0000:00:02.0", 0x8086, 0x4680, 0x030000, "i915")  # an Intel iGPU: not ours
    return root


def test_detect_finds_only_nvidia_display_functions(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    add_pci(sysfs, "0000:01:00.1", 0x10DE, 0x22BA, 0x040300, "snd_hda_intel")  # the card's HDMI audio
    add_pci(sysfs, "0000:02:00.0", 0x10DE, H100, 0x030200)  # 3D controller, no driver bound
    found = gpu.detect(sysfs)
    assert [(g.address, g.pci_id, g.driver) for g in found] == [
        ("0000:01:00.0", "10de:2684", "nvidia"),
        ("0000:02:00.0", "10de:2330", None),
    ]
    assert found[0].generation == "Turing/Ampere/Ada/Hopper"


def test_detect_on_a_machine_without_pci(tmp_path):
    assert gpu.detect(tmp_path) == []


@pytest.mark.parametrize(
    "device, available, flavour",
    [
        (RTX_5090, ("open", "proprietary"), "open"),
        (RTX_5090, ("proprietary",), None),  # Blackwell needs open modules
        (GTX_1080, ("open", "proprietary"), "proprietary"),  # pre-Turing needs proprietary
        (GTX_1080, ("open",), None),
        (TITAN_V, ("open", "proprietary"), "proprietary"),
        (T4, ("open", "proprietary"), "open"),  # Turing and newer: open preferred
        (RTX_4090, ("proprietary",), "proprietary"),  # ... but proprietary works (Debian's 550)
        (H100, ("open",), "open"),
    ],
)
def test_module_flavour(device, available, flavour):
    assert gpu.module_flavour(device, available) == flavour


def test_generation_table_has_no_gaps():
    rows = gpu.GENERATIONS
    assert rows[0][0] == 0 and rows[-1][1] == 0x10000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))


def test_vllm_settings_scale_with_memory():
    small = gpu.vllm_settings(8 * GIB, "1.0")
    assert small == {"gpu_memory_utilization": 0.81, "max_model_len": 8192, "max_pixels": 1280 * 1280}
    mid = gpu.vllm_settings(12 * GIB, "1.5")
    assert mid["max_model_len"] == 12288 and mid["gpu_memory_utilization"] == 0.87
    big = gpu.vllm_settings(24 * GIB, "1.5")
    assert big == {"gpu_memory_utilization": 0.9, "max_model_len": 16384, "max_pixels": 2048 * 2048}
    assert gpu.vllm_settings(80 * GIB)["gpu_memory_utilization"] == 0.9
    for memory in (8, 10, 12, 16, 24, 48, 80):  # the display's share is never handed to vLLM
        s = gpu.vllm_settings(memory * GIB, "1.0")
        assert memory * GIB * (1 - s["gpu_memory_utilization"]) >= gpu.HEADROOM
        # the longest image fits in the model length with 4096 answer tokens
        assert s["max_pixels"] // 32**2 + 4096 <= s["max_model_len"]


def test_vllm_settings_refuse_small_cards():
    with pytest.raises(NotEnoughGpuMemory) as e:
        gpu.vllm_settings(6 * GIB, "1.0")
    assert "has 6.0 GiB of memory and HunyuanOCR 1.0 needs at least 8 GiB" in str(e.value)
    assert "runs on the CPU" in str(e.value)
    with pytest.raises(NotEnoughGpuMemory, match="HunyuanOCR 1.5 needs at least 10 GiB"):
        gpu.vllm_settings(9 * GIB, "1.5")
    gpu.vllm_settings(9 * GIB, "1.0")  # 1.0 fits there


@pytest.mark.parametrize("value, state", [(1, "on"), (0, "off"), (None, "unknown")])
def test_secure_boot_state(sysfs, value, state):
    secure_boot(sysfs, value)
    assert gpu.secure_boot_state(sysfs) == state


def test_secure_boot_state_on_bios(sysfs):
    assert gpu.secure_boot_state(sysfs) == "not-uefi"


def test_fallback_no_gpu(sysfs):
    assert gpu.fallback_reason(sysfs, CUDA12_STACK).startswith("No NVIDIA graphics card was found.")


def test_fallback_cpu_image(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    assert "built with the cpu profile" in gpu.fallback_reason(sysfs, {})


def test_fallback_secure_boot_blocks_unsigned_modules(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)  # no driver bound: the module was refused
    secure_boot(sysfs, 1)
    reason = gpu.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith("Secure Boot is on and this image's NVIDIA driver modules are not signed")
    assert "turn Secure Boot off" in reason and "enrol the key with MOK" in reason


def test_fallback_secure_boot_with_signed_but_unenrolled_key(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    secure_boot(sysfs, 1)
    reason = gpu.fallback_reason(sysfs, {**CUDA12_STACK, "modules_signed": True})
    assert "signed with a site key that this PC has not enrolled yet" in reason


def test_fallback_driver_not_loaded(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    secure_boot(sysfs, 0)
    reason = gpu.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith("The NVIDIA driver did not load for the card (10de:2684)")


def test_fallback_nouveau(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nouveau")
    assert "The nouveau driver took the NVIDIA card" in gpu.fallback_reason(sysfs, CUDA12_STACK)


def test_fallback_too_little_memory(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    reason = gpu.fallback_reason(sysfs, CUDA12_STACK, gpu_memory_bytes=6 * GIB, model_version="1.0")
    assert "has 6.0 GiB of memory" in reason


def test_no_fallback_when_all_is_well(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    secure_boot(sysfs, 1)  # Secure Boot on, but the (signed) driver is loaded: fine
    assert gpu.fallback_reason(sysfs, CUDA12_STACK, gpu_memory_bytes=24 * GIB) is None
    assert gpu.fallback_reason(sysfs, CUDA12_STACK) is None  # memory unknown: not a reason by itself


def test_fallback_blackwell_on_the_debian_driver(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_5090, 0x030000)
    reason = gpu.fallback_reason(sysfs, CUDA12_STACK)
    assert reason.startswith(
        "This NVIDIA card (10de:2b85, Blackwell) needs the open kernel modules of NVIDIA driver 570 or newer"
    )
    assert "driver 550.163.01 with proprietary modules" in reason and "cuda13-user-driver" in reason


def test_blackwell_on_the_cuda13_stack_is_fine(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_5090, 0x030000, "nvidia")
    assert gpu.fallback_reason(sysfs, CUDA13_STACK, gpu_memory_bytes=32 * GIB) is None


def test_fallback_old_cards(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, GTX_1080, 0x030000, "nvidia")
    assert "too old for the model server, which needs a Volta or newer GPU" in gpu.fallback_reason(
        sysfs, CUDA12_STACK
    )


def test_volta_needs_cuda12(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, TITAN_V, 0x030000, "nvidia")
    assert gpu.fallback_reason(sysfs, CUDA12_STACK) is None
    assert "not supported by CUDA 13" in gpu.fallback_reason(sysfs, CUDA13_STACK)


def test_stack_info_round_trip(tmp_path):
    """The file the builder writes from Stack.as_dict() is what the runtime reads."""
    from imagebuilder.stack import resolve_stack

    info = {**resolve_stack().as_dict(), "modules_signed": False}
    path = tmp_path / "gpu-stack.json"
    path.write_text(json.dumps(info))
    loaded = gpu.load_stack_info(path)
    assert loaded["driver"]["flavours"] == ["proprietary"]
    assert gpu.load_stack_info(tmp_path / "missing.json") == {}


def test_status_reports_flavour_and_reason(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000)
    s = gpu.status(sysfs, CUDA12_STACK)
    assert s["flavour"] == "proprietary" and s["secure_boot"] == "not-uefi"
    assert s["fallback_reason"].startswith("The NVIDIA driver did not load")
    assert s["vllm"] is None
