"""The boot test's full-page check (issue 18) against the real web app and CPU engine on the host: the same
requests it sends to the booted image, through the same Vm.http shape."""

from __future__ import annotations

import json

import pytest

from imagebuilder.boottest import checks
from imagebuilder.boottest.sticks import LETTER_TEXT


class AppAsVm:
    """Vm.http's contract (status, body) answered by the app in this process (Flask's test client)."""

    def __init__(self, client):
        self.client = client

    def http(self, path, token=None, timeout=5, body=None):
        response = self.client.post(path, json=body) if body is not None else self.client.get(path)
        return response.status_code, response.get_data()


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    from webui import close_app, create_app

    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("data")), "ENGINE": "cpu", "TESTING": True})
    assert app.extensions["backend"].jobs.wait_engine(120)["ready"]
    yield AppAsVm(app.test_client())
    close_app(app)


def test_the_letter_is_read_back(vm):
    result = {}
    assert checks.check_full_page(vm, "", result, timeout=300) == []
    assert result["full_page_cer"] <= checks.FULL_PAGE_MAX_CER and result["full_page_seconds"] > 0


def test_a_misread_page_fails_the_check(vm, monkeypatch):
    monkeypatch.setattr(checks, "LETTER_TEXT", LETTER_TEXT.replace("Northfield", "Southfield"))  # 2 words differ
    monkeypatch.setattr(checks, "FULL_PAGE_MAX_CER", 0.001)
    result = {}
    [problem] = checks.check_full_page(vm, "", result, timeout=300)
    assert "CER" in problem and result["full_page_cer"] > 0.001


def test_cer_counts_edits_per_character_of_the_truth():
    assert checks.cer("Boot Test 2026", "Boot Test 2026") == 0
    assert checks.cer("abcd", "abXd") == 0.25
    assert checks.cer("one  two\nthree", "one two three") == 0  # whitespace runs are one space
    assert json.dumps(checks.cer("", "x")) == "1.0"
