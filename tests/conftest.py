"""Shared test fixtures. The whole test session is offline: nothing may reach the Hugging Face hub."""

from __future__ import annotations

import pytest

from appliance.offline import go_offline

# Before anything imports transformers / huggingface_hub: they read these once.
go_offline()

pytest_plugins = (
    "llama_fixtures",  # the real llama.cpp build, GGUF files and server (tests/llama_fixtures.py)
    "sane_test",  # SANE's virtual scanner for the scanner tests (tests/sane_test.py)
    "persistence_sticks",  # a loop-attached stick with the builder's hybrid ISO (tests/persistence_sticks.py)
)


@pytest.fixture(scope="session")
def hunyuan_checkpoint(tmp_path_factory):
    """A tiny random HunyuanOCR checkpoint in the real 1.5 layout (tests/hunyuan_checkpoint.py), built once per
    session: transformers, vLLM and llama.cpp's converter all load it."""
    from hunyuan_checkpoint import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("hunyuan-checkpoint"))


@pytest.fixture(scope="session")
def tiny_model_dir(hunyuan_checkpoint):
    """The model directory the engine and builder tests use: the real-layout tiny checkpoint."""
    return hunyuan_checkpoint


@pytest.fixture
def make_jobs(tmp_path):
    """make_jobs(engine, **kw) -> a started Jobs over tmp_path/data (or data_dir); all closed at the end."""
    from fake_engine import FakeEngine

    from appliance.jobs import Jobs

    opened = []

    def make(engine=None, data_dir=None, **kwargs):
        engine = engine or FakeEngine()
        jobs = Jobs(data_dir or tmp_path / "data", lambda report: engine, **kwargs)
        opened.append(jobs)
        assert jobs.wait_engine(60)["ready"]
        return jobs

    yield make
    for jobs in opened:
        jobs.close(timeout=5)


@pytest.fixture
def escl(tmp_path, monkeypatch):
    """An eSCL scanner emulated on loopback (tests/escl_scanner.py), glass and feeder empty, and SANE pointed at it:
    SANE_CONFIG_DIR (inherited by scanimage) loads only sane-airscan, with this one device and no discovery. Skips
    without scanimage or sane-airscan, unless APPLIANCE_TEST_REQUIRE names "sane" (`make test` installs them)."""
    import escl_scanner
    from llama_fixtures import require

    why = escl_scanner.missing()
    if why:
        require("sane", why)
    with escl_scanner.EsclScanner() as scanner:
        monkeypatch.setenv("SANE_CONFIG_DIR", str(escl_scanner.sane_config(tmp_path / "sane", scanner.url)))
        yield scanner
