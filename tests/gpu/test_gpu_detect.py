"""GPU detection on a fake /sys tree: the NVIDIA display functions, their generation and module flavour, Secure
Boot, and the image's GPU stack file."""

import itertools
import json

import pytest
from fake_sysfs import GTX_1080, H100, RTX_4090, RTX_5090, T4, TITAN_V, add_pci, secure_boot

from appliance.gpu import detect


def test_detect_finds_only_nvidia_display_functions(sysfs):
    add_pci(sysfs, "0000:01:00.0", 0x10DE, RTX_4090, 0x030000, "nvidia")
    add_pci(sysfs, "0000:01:00.1", 0x10DE, 0x22BA, 0x040300, "snd_hda_intel")  # the card's HDMI audio
    add_pci(sysfs, "0000:02:00.0", 0x10DE, H100, 0x030200)  # 3D controller, no driver bound
    found = detect.detect(sysfs)
    assert [(g.address, g.pci_id, g.driver) for g in found] == [
        ("0000:01:00.0", "10de:2684", "nvidia"),
        ("0000:02:00.0", "10de:2330", None),
    ]
    assert found[0].generation == "Turing/Ampere/Ada/Hopper"


def test_detect_on_a_machine_without_pci(tmp_path):
    assert detect.detect(tmp_path) == []


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
    assert detect.module_flavour(device, available) == flavour


def test_generation_table_has_no_gaps():
    rows = detect.GENERATIONS
    assert rows[0][0] == 0 and rows[-1][1] == 0x10000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))


@pytest.mark.parametrize("value, state", [(1, "on"), (0, "off"), (None, "unknown")])
def test_secure_boot_state(sysfs, value, state):
    secure_boot(sysfs, value)
    assert detect.secure_boot_state(sysfs) == state


def test_secure_boot_state_on_bios(sysfs):
    assert detect.secure_boot_state(sysfs) == "not-uefi"


def test_stack_info_round_trip(tmp_path):
    """The file the builder writes from Stack.as_dict() is what the runtime reads."""
    from imagebuilder.stack import resolve_stack

    info = {**resolve_stack().as_dict(), "modules_signed": False}
    path = tmp_path / "gpu-stack.json"
    path.write_text(json.dumps(info))
    loaded = detect.load_stack_info(path)
    assert loaded["driver"]["flavours"] == ["proprietary"]
    assert detect.load_stack_info(tmp_path / "missing.json") == {}
