"""What GPU this machine has, read without any NVIDIA tool where possible: the card on the PCI bus, its generation and
the kernel module flavour it needs, whether the driver is loaded, Secure Boot, and what the image's GPU stack is.

Runs inside the image at boot, before any NVIDIA tool works (the driver may not even be loaded), so the card comes
from sysfs and efivars; the sysfs root is a parameter so tests use a fake tree. What the image was built with (driver
version, module flavours, whether the modules are signed) comes from /etc/appliance/gpu-stack.json, written by the
builder from imagebuilder.stack.Stack.as_dict() plus "modules_signed". Once the driver is loaded, nvidia-smi says
the rest (memory, compute capability) and `find_gpu` names the card for the engine choice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.messages import Text

SYSFS = Path("/sys")
PROC_NVIDIA = Path("/proc/driver/nvidia")  # the loaded kernel driver's own view
STACK_INFO = Path("/etc/appliance/gpu-stack.json")
NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = (
    0x03  # PCI base class "display controller" (VGA 0x0300, 3D 0x0302); skips the card's audio/USB functions
)
FLAVOURS = ("open", "proprietary")

# PCI device ID -> generation, the module flavour it needs or prefers, and whether vLLM can run on it.
# Source of the ranges: NVIDIA's open-gpu-kernel-modules README (550.40.82) lists every GPU the open modules
# support, all Turing or later, from 0x1E02 (TITAN RTX) up to 0x28F8 (Ada); Blackwell parts come after that
# (B200 0x2901, RTX 50xx 0x2B80-0x2DFF); Volta (GV100) is 0x1D80-0x1DFF and Pascal/Maxwell lie below it, per the
# PCI ID database. NVIDIA allocates device IDs in order of generation, so ranges are enough; not checked on hardware.
# Open modules: required on Blackwell, unsupported before Turing, NVIDIA's recommendation from Turing on (since R560);
# an image whose driver has only the proprietary flavour (Debian's 550) still drives Turing..Hopper with it.
# vLLM needs compute capability >= 7.0 (Volta); CUDA 13 drops Volta, so Volta runs only on a CUDA 12 stack.
GENERATIONS = (  # (first id, first id past the range, generation, flavour, runs vLLM)
    (0x0000, 0x1D80, "Maxwell/Pascal or older", "proprietary", False),
    (0x1D80, 0x1E00, "Volta", "proprietary", True),
    (0x1E00, 0x2900, "Turing/Ampere/Ada/Hopper", "open", True),
    (0x2900, 0x10000, "Blackwell", "open", True),
)
OPEN_REQUIRED = {"Blackwell"}
BLACKWELL_MIN_DRIVER = 570
CUDA13_DROPS = {"Volta"}
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-e0b9ac8e1d6c"


@dataclass(frozen=True)
class Gpu:
    address: str  # PCI address, 0000:01:00.0
    device_id: int
    pci_class: int
    driver: str | None  # the kernel driver bound to it now: nvidia, nouveau, or None

    @property
    def pci_id(self) -> str:
        return f"10de:{self.device_id:04x}"

    @property
    def generation(self) -> str:
        return generation_row(self.device_id)[2]


def _read_hex(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def detect(sysfs: str | Path = SYSFS) -> list[Gpu]:
    """NVIDIA display controllers on the PCI bus, in address order; no tool or driver needed."""
    gpus = []
    for dev in sorted((Path(sysfs) / "bus" / "pci" / "devices").glob("*")):
        vendor, device, pci_class = (_read_hex(dev / n) for n in ("vendor", "device", "class"))
        if vendor != NVIDIA_VENDOR or device is None or pci_class is None or pci_class >> 16 != DISPLAY_CLASS:
            continue
        driver_link = dev / "driver"
        driver = Path(str(driver_link.readlink())).name if driver_link.is_symlink() else None
        gpus.append(Gpu(dev.name, device, pci_class, driver))
    return gpus


def generation_row(device_id: int) -> tuple:
    """The GENERATIONS row of a PCI device ID."""
    return next(row for row in GENERATIONS if row[0] <= device_id < row[1])


def module_flavour(pci_device_id: int, available: tuple[str, ...] = FLAVOURS) -> str | None:
    """The NVIDIA kernel module flavour to load for this GPU, or None when none of `available` drives it."""
    _, _, generation, preferred, _ = generation_row(pci_device_id)
    if preferred in available:
        return preferred
    if generation in OPEN_REQUIRED or preferred == "proprietary":
        return None  # Blackwell without open modules; pre-Turing without proprietary ones
    return "proprietary" if "proprietary" in available else None


def stack_flavours(stack: dict) -> tuple[str, ...]:
    """The module flavours the image's driver ships (both when the stack does not say)."""
    return tuple(stack.get("driver", {}).get("flavours") or FLAVOURS)


def secure_boot_state(sysfs: str | Path = SYSFS) -> str:
    """'on', 'off', 'not-uefi' (legacy BIOS boot: no Secure Boot) or 'unknown' (UEFI, variable unreadable)."""
    efi = Path(sysfs) / "firmware" / "efi"
    if not efi.is_dir():
        return "not-uefi"
    try:
        data = (efi / "efivars" / SECURE_BOOT_VAR).read_bytes()
    except OSError:
        return "unknown"
    # efivarfs: 4 bytes of attributes, then the value: one byte, 1 = enforcing.
    if len(data) < 5:
        return "unknown"
    return "on" if data[4] == 1 else "off"


def load_stack_info(path: str | Path = STACK_INFO) -> dict:
    """What the image's GPU stack is (the builder's gpu-stack.json); {} on an image without one (cpu profile)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def driver_loaded(gpu: Gpu, sysfs: str | Path = SYSFS) -> bool:
    return gpu.driver == "nvidia" and (Path(sysfs) / "module" / "nvidia").is_dir()


def driver_major(stack: dict) -> int | None:
    """The major version of the image's NVIDIA driver (550, 580 ...), or None when the stack does not say."""
    try:
        return int(str(stack["driver"]["version"]).split(".")[0])
    except (KeyError, TypeError, ValueError):
        return None


def smi_query(field: str) -> str | None:
    """One field of the first GPU from nvidia-smi (only once the driver is loaded), or None."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_memory_bytes() -> int | None:
    """The first GPU's memory, or None."""
    try:
        return int(smi_query("memory.total")) * 2**20  # MiB
    except (TypeError, ValueError):
        return None


def find_gpu(proc_nvidia: str | Path = PROC_NVIDIA) -> tuple[str | None, str]:
    """(GPU name or None, why) for the engine choice: a GPU the loaded NVIDIA driver runs, named by the driver's /proc
    entry, else by nvidia-smi. Unlike `detect` (the PCI bus, for boot), this needs the driver, and no torch."""
    proc = Path(proc_nvidia)
    if not (proc / "version").exists():
        return None, Text("gpu_no_driver", path=str(proc / "version"))
    names = []
    for info in sorted((proc / "gpus").glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    name = names[0] if names else smi_query("name")
    if not name:
        return None, Text("gpu_none_reported")
    return name, Text("gpu_found", name=name)
