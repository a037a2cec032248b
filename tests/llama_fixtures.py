"""Fixtures for the real llama.cpp tests (a pytest plugin, registered in conftest.py): the host build of llama-server
(`make llama-cpp`), the session's tiny checkpoint converted to GGUF, and a running llama-server.

A test that needs the build skips when it is missing, unless APPLIANCE_TEST_REQUIRE (comma separated, e.g.
"vllm,llama"; `make test` sets it) names "llama": then it fails, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from appliance.servers import llamacpp
from imagebuilder import llamacpp_source

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "APPLIANCE_TEST_REQUIRE"
TEST_MAX_PIXELS = 640 * 640  # the pixel cap the session's server is started with


def require(what: str, why: str) -> None:
    """Skip for `why`, or fail when APPLIANCE_TEST_REQUIRE names `what`."""
    required = {name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",")}
    if what in required:
        pytest.fail(f"{why} ({REQUIRE_ENV} requires '{what}')")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    """The directory of the host's llama-server and llama-quantize ($APPLIANCE_LLAMA_SERVER's, else `make
    llama-cpp`'s); it is put first in APPLIANCE_LLAMA_SERVER for the launcher."""
    given = os.environ.get(llamacpp.BINARY_ENV)
    bin_dir = Path(given).parent if given else llamacpp_source.host_bin_dir(ROOT / "cache")
    if not (bin_dir / "llama-server").is_file():
        require("llama", f"no llama-server in {bin_dir}: run 'make llama-cpp'")
    os.environ[llamacpp.BINARY_ENV] = str(bin_dir / "llama-server")
    return bin_dir


@pytest.fixture(scope="session")
def hunyuan_gguf(hunyuan_checkpoint, llama_bin, tmp_path_factory) -> Path:
    """A model directory holding only the tiny checkpoint's GGUF files (q8_0 text + f16 mmproj), converted by the
    real converter; the form `find_gguf` accepts as DIR itself."""
    from imagebuilder import gguf

    out = tmp_path_factory.mktemp("hunyuan-gguf")
    with open(out.parent / "convert.log", "w") as log:
        gguf.convert(hunyuan_checkpoint, out, "q8_0", cache_dir=ROOT / "cache", log=log)
    return out


@pytest.fixture(scope="session")
def llama_server(hunyuan_gguf, tmp_path_factory):
    """A running llama-server for the session: (url, run_dir, log path), started through `start_server` with a
    pixel cap; stopped at the end. One thread: on a busy 2-core machine, two threads of a tiny model spend most of
    their time waiting for each other at every op (hundreds of ms per token)."""
    run_dir = tmp_path_factory.mktemp("appliance-llama")
    log_path = run_dir.parent / "llama-server.log"
    port = free_port()
    with open(log_path, "w") as log:
        server = llamacpp.start_server(
            hunyuan_gguf, port, threads=1, max_pixels=TEST_MAX_PIXELS, log=log, run_dir=run_dir
        )
        try:
            yield f"http://127.0.0.1:{port}/v1", run_dir, log_path
        finally:
            server.terminate()
            server.wait(timeout=30)


def server_processes(marker: str) -> list[int]:
    """pids of live llama-server processes whose command line contains `marker` (a port, a path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if args and Path(args[0].decode(errors="replace")).name == "llama-server" and state != "Z":
            if any(marker.encode() in arg for arg in args):
                pids.append(int(proc.name))
    return pids
