"""The time left of a running job (appliance.ocr.pace.seconds_left, LivePage): the arithmetic, figure by figure."""

from __future__ import annotations

import pytest

from appliance.ocr import pace
from appliance.ocr.pace import LivePage, seconds_left
from appliance.ocr.tasks import Task

DOC = pace.ANSWER_TOKENS[Task.DOC]  # 1000


def test_decoding_uses_this_answers_own_rate_and_the_tasks_usual_length():
    # 101 tokens, the first 10 s ago: 10 tokens/s; 899 more to a usual answer: 89.9 s; then 2 pages of 120 s.
    assert seconds_left(Task.DOC, elapsed=40, tokens=101, decoding=10, page_seconds=120, pages_after=2) == (
        pytest.approx(89.9 + 240),
        False,
    )


def test_decode_rate_beats_the_page_figure_for_this_page():
    # The page figure says 120 s and 40 s went by (80 s left), but this answer decodes at 50 tokens/s: 18 s left.
    left, _ = seconds_left(Task.DOC, elapsed=40, tokens=101, decoding=2, page_seconds=120, pages_after=0)
    assert left == pytest.approx((DOC - 101) / 50)


def test_before_the_first_token_a_usual_page_minus_the_time_spent():
    assert seconds_left(Task.DOC, elapsed=30, tokens=0, decoding=None, page_seconds=100, pages_after=1) == (
        170,
        False,
    )


def test_too_few_tokens_or_too_short_a_time_for_a_rate_falls_back_to_the_page_figure():
    assert seconds_left(Task.DOC, elapsed=30, tokens=3, decoding=5, page_seconds=100, pages_after=0) == (70, False)
    assert seconds_left(Task.DOC, elapsed=30, tokens=50, decoding=0.5, page_seconds=100, pages_after=0) == (70, False)


def test_nothing_known_says_nothing():
    assert seconds_left(Task.DOC, elapsed=5, tokens=0, decoding=None, page_seconds=None, pages_after=3) == (
        None,
        False,
    )


def test_without_a_page_figure_the_pages_after_cost_what_this_page_is_on_course_to_cost():
    # 30 s to the first token, then 20 tokens/s: this page is on course for 30 + 1000/20 = 80 s.
    left, longer = seconds_left(Task.DOC, elapsed=35, tokens=101, decoding=5, page_seconds=None, pages_after=2)
    assert left == pytest.approx((DOC - 101) / 20 + 2 * 80) and not longer


def test_an_answer_longer_than_usual_gets_no_number():
    assert seconds_left(Task.EXTRACT, elapsed=60, tokens=101, decoding=50, page_seconds=20, pages_after=5) == (
        None,
        True,
    )


def test_a_page_slower_than_usual_before_its_first_token_gets_no_number():
    assert seconds_left(Task.DOC, elapsed=130, tokens=0, decoding=None, page_seconds=100, pages_after=0) == (
        None,
        True,
    )


def test_live_page_report_prefers_the_pages_this_job_already_read():
    # Page 3 of 5 began at t=100, the job at t=0: 50 s a page so far, whatever the PC's usual figure says.
    page = LivePage("doc", number=3, total=5, started=100, job_started=0, pages_read=2)
    report = page.report(page_seconds=500, now=110)
    assert report["seconds_left"] == 40 + 2 * 50 and report["longer_than_usual"] is False
    assert (report["page"], report["text"], report["tokens"]) == (3, "", 0)


def test_blank_pages_before_this_one_do_not_count_as_pages_read():
    # Pages 1-4 took 100 s, but 2 and 4 were blank (skipped in no time): 50 s per page read, not 25.
    page = LivePage("doc", number=5, total=6, started=100, job_started=0, pages_read=2)
    assert page.report(page_seconds=None, now=110)["seconds_left"] == 40 + 50
    # Only blank pages so far: the PC's usual figure, not "0 s a page".
    page = LivePage("doc", number=3, total=3, started=1, job_started=0, pages_read=0)
    assert page.report(page_seconds=60, now=11)["seconds_left"] == 50


def test_live_page_keeps_the_tail_and_when_the_first_token_came():
    page = LivePage("doc", number=1, total=1, started=0, job_started=0)
    page.update("", 0, now=3)
    assert page.first_token is None
    page.update("x" * 10, 1, now=4)
    page.update("y" * 5000, 41, now=6)  # 40 tokens in 2 s after the first: 20 tokens/s
    report = page.report(page_seconds=None, now=6)
    assert page.first_token == 4 and report["text"] == "y" * pace.TAIL_CHARS and report["chars"] == 5000
    assert report["seconds_left"] == round((DOC - 41) / 20)
