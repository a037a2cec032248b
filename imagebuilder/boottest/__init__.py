"""Boot-test harness: boot an ISO in QEMU (BIOS/UEFI x CD/USB stick) and check what the appliance reports.

Host only, like the rest of imagebuilder. By job: vm (QEMU, firmware, the boot medium), sticks (the data stick
images), capture (serial log, selftest line, screenshots, pcap), checks (what each boot must show), run (boot_once,
boot_test: `appliance boot-test`).
"""

from imagebuilder.boottest.run import boot_test
from imagebuilder.boottest.sticks import require_stick_tools

__all__ = ["boot_test", "require_stick_tools"]
