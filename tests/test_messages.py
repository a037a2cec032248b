"""appliance.messages: every message in English and Chinese with the same values, stored and said again."""

from __future__ import annotations

import io
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from fake_engine import FakeEngine, page_image

from appliance.jobs import Jobs
from appliance.messages import MESSAGES, Text, message_of, params_of, say
from appliance.ocr.errors import InputError
from appliance.ocr.images import Document
from appliance.ocr.tasks import Request

ROOT = Path(__file__).resolve().parent.parent
SPOT = Request.make("spotting")


@pytest.mark.parametrize("code", sorted(MESSAGES))
def test_every_message_has_english_and_chinese_with_the_same_values(code):
    english, chinese = MESSAGES[code]
    assert english.strip() and chinese.strip() and english != chinese
    assert params_of(english) == params_of(chinese), code
    words = re.sub(r"{\w+}", "", english)
    assert re.search(r"[\u4e00-\u9fff]", chinese) or not re.search(r"[A-Za-z]{4,}", words), code  # translated


def test_every_message_the_code_says_is_in_the_table_and_every_entry_is_said():
    """Text("id", ...) with an id the table lacks would fail only when that error happens: caught here."""
    paths = [*ROOT.glob("appliance/**/*.py"), *ROOT.glob("webui/**/*.py")]
    code = "\n".join(path.read_text(encoding="utf-8") for path in paths if path.name != "messages.py")
    said = set()
    for first, second in re.findall(r'Text\(\s*"(\w+)"(?:\s+if\s+[^"]*else\s+"(\w+)")?', code):
        said |= {first, second} - {""}
    assert said and said <= set(MESSAGES), said - set(MESSAGES)
    unused = {key for key in MESSAGES if f'"{key}"' not in code}
    assert not unused, unused


def test_a_nested_message_is_stored_and_said_in_either_language():
    reason = Text("page_reason", n=2, reason=Text("corrupt_file", label="PNG", error="broken data stream"))
    text = Text("input", name="scan.png", reason=reason)
    assert text == "scan.png: page 2: corrupt or truncated PNG: broken data stream"
    stored = text.to_dict()
    assert stored["params"]["reason"]["params"]["reason"]["code"] == "corrupt_file"
    again = Text.from_dict(stored)
    assert again == text and say(again, "zh") == "scan.png：第 2 页：PNG 文件损坏或不完整：broken data stream"
    assert say(again, "en") == str(text) and say("plain words", "zh") == "plain words"
    assert Text.from_dict({"code": "no_such_id", "params": {}}) is None  # a newer version's id: its English is used
    assert Text.from_dict({"code": "input", "params": {"name": "a", "reason": {"code": "gone"}}}) is None


def test_an_unreadable_file_keeps_its_message_id(tmp_path):
    with pytest.raises(InputError) as refused:
        Document.open(b"", name="empty.png")
    message = message_of(refused.value)
    assert message.code == "input" and message.params["reason"].code == "file_empty"
    assert say(message, "zh") == "empty.png：空文件（0 字节）"


def test_a_job_keeps_its_errors_id_and_values_and_an_older_store_gains_the_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "jobs.sqlite")  # a store from before the message columns
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, name TEXT NOT NULL,"
        " size INTEGER NOT NULL, sha256 TEXT NOT NULL, task TEXT NOT NULL, options TEXT NOT NULL, state TEXT NOT"
        " NULL, pages_done INTEGER NOT NULL DEFAULT 0, pages_total INTEGER NOT NULL DEFAULT 0, error TEXT,"
        " error_kind TEXT, cache_key TEXT, cached INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,"
        " engine TEXT, created REAL NOT NULL, started REAL, finished REAL);"
        "INSERT INTO jobs (id, name, size, sha256, task, options, state, error, created) VALUES"
        " ('old', 'old.png', 1, 'x', 'spotting', '{}', 'failed', 'an older message', 0);"
    )
    old.close()
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    jobs = Jobs(data, lambda report: engine)
    try:
        assert jobs.wait_engine(10)["ready"]
        assert jobs.get("old").error_text == "an older message"  # no id: its words as they are
        running = jobs.submit(png(), "a.png", SPOT)
        assert engine.started.wait(10)
        job = jobs.cancel(jobs.submit(png("gray"), "b.png", SPOT).id)
        assert (job.error_code, job.error_params) == ("job_cancelled_queued", {})
        assert job.error == "cancelled before it started"
        assert say(job.error_text, "zh") == "在开始前已取消"
        gate.set()
        assert jobs.wait(running.id, 10).state == "done"
    finally:
        gate.set()
        jobs.close(5)


def png(color="white") -> bytes:
    buf = io.BytesIO()
    page_image(color=color).save(buf, format="PNG")
    return buf.getvalue()
