"""Fixtures of the scan-folder tests."""

from __future__ import annotations

import pytest
from scan_helpers import Counting


@pytest.fixture(scope="session")
def cpu_engine():
    """The real CPU engine, loaded once for all scan-folder tests."""
    from appliance.ocr.engines.cpu import CpuEngine

    engine = CpuEngine()
    yield engine
    engine.close()


@pytest.fixture
def cpu(cpu_engine):
    """The CPU engine for one test, counting the pages it recognises."""
    return Counting(cpu_engine)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "scans"
