"""The environment that keeps the model stacks off the network: no hub downloads, no usage statistics.

The one list. The transformers engine puts it into this process's environment before transformers is imported; the
vLLM launcher (appliance.servers.vllm) starts its server with it; the tests' conftest sets it for the whole session.
The systemd units repeat it in their Environment= lines (rootfs/etc/systemd/system/appliance-web.service and
appliance-vllm.service), so the variables hold from a process's first instruction.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: never ask the hub
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",  # vLLM's usage report
    "DO_NOT_TRACK": "1",  # the libraries that honour the common opt-out
}


def go_offline() -> None:
    """Set OFFLINE_ENV in this process, for the libraries that read it once at import."""
    os.environ.update(OFFLINE_ENV)
