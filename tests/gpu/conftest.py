"""The GPU tests' fake /sys (fake_sysfs.py)."""

import pytest
from fake_sysfs import add_pci


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "sys"
    add_pci(root, "0000:00:02.0", 0x8086, 0x4680, 0x030000, "i915")  # an Intel iGPU: not ours
    return root
