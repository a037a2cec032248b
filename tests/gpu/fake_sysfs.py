"""A fake /sys tree for the GPU checks: PCI functions with their bound driver, and the Secure Boot variable."""

import struct

from appliance.gpu.detect import SECURE_BOOT_VAR

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
        (efivars / SECURE_BOOT_VAR).write_bytes(struct.pack("<I", 0x6) + bytes([value]))
