"""One document through the real CPU engine: EXIF rotation, pages, progress, cancel, refusal before work."""

import io

import pytest
from PIL import Image, ImageDraw, ImageFont

from appliance.ocr.errors import TaskNotSupported
from appliance.ocr.pipeline import Cancelled, recognize_file
from appliance.ocr.tasks import Request

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture(scope="module")
def engine():
    from appliance.ocr.engines.cpu import CpuEngine

    engine = CpuEngine()
    yield engine
    engine.close()


def page_with(text, size=(800, 200)):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((40, 60), text, fill="black", font=ImageFont.truetype(FONT, 48))
    return image


def pdf_bytes(*texts):
    buf = io.BytesIO()
    pages = [page_with(t) for t in texts]
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=100)
    return buf.getvalue()


def test_exif_rotated_photo_is_read_upright_with_boxes_on_the_upright_page(engine):
    upright = page_with("Rotated photo")
    stored = upright.rotate(90, expand=True)  # how a phone stores it: pixels sideways, orientation in EXIF
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif, quality=95)
    result = recognize_file(engine, buf.getvalue(), Request.make("spotting"), name="photo.jpg")
    page = result.pages[0]
    assert (page.width, page.height) == upright.size
    assert result.text == "Rotated photo"
    x1, y1, x2, y2 = page.blocks[0].box
    assert x1 < x2 <= 800 and y1 < y2 <= 200


def test_pages_progress_and_numbering(engine):
    calls = []
    result = recognize_file(
        engine,
        pdf_bytes("Alpha one", "Beta two"),
        Request.make("text"),
        name="two.pdf",
        progress=lambda done, total, blank: calls.append((done, total)),
    )
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert [(p.number, p.text) for p in result.pages] == [(1, "Alpha one"), (2, "Beta two")]
    assert result.source == "two.pdf" and result.task == "text"
    assert all(p.seconds > 0 for p in result.pages) and result.timings["ocr"] >= sum(p.seconds for p in result.pages)


def test_cancel_between_pages(engine):
    done = []
    with pytest.raises(Cancelled, match="after 1 of 3 pages"):
        recognize_file(
            engine,
            pdf_bytes("a", "b", "c"),
            Request.make("text"),
            name="x.pdf",
            progress=lambda d, t, b: done.append(d),
            cancelled=lambda: len(done) >= 2,
        )


def test_unsupported_task_is_refused_before_any_page_is_read(engine, monkeypatch):
    monkeypatch.setattr(engine, "recognize", lambda *a: pytest.fail("must not run"))
    with pytest.raises(TaskNotSupported, match="task 'extract'"):
        recognize_file(engine, pdf_bytes("a"), Request.make("extract", fields="total"), name="x.pdf")


def test_blank_pages_are_not_sent_to_the_engine_and_faint_text_is(engine, monkeypatch):
    """A duplex scan's empty back sides and separator sheets cost a model minutes and give only noise. Blank (even
    with scanner noise, or a uniform grey or dark paper) is skipped; a page with one small, light word is not."""
    import random

    noisy = Image.new("L", (1240, 1754), 235)
    rng = random.Random(1)
    noisy.putdata([235 + rng.randint(-6, 6) for _ in range(1240 * 1754)])  # a scanner's noise on empty paper
    faint = Image.new("RGB", (1240, 1754), "white")
    ImageDraw.Draw(faint).text((900, 1600), "p. 7", fill=(150, 150, 150), font=ImageFont.truetype(FONT, 20))
    pages = [Image.new("RGB", (1240, 1754), "white"), noisy.convert("RGB"), Image.new("RGB", (1240, 1754), "navy")]
    pages += [faint, page_with("Alpha one")]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    sent = []
    recognize = engine.recognize

    def recording(image, request, on_text=None):
        sent.append(image.size)
        return recognize(image, request, on_text)

    monkeypatch.setattr(engine, "recognize", recording)
    calls = []
    progress = lambda done, total, blank: calls.append((done, blank))  # noqa: E731
    result = recognize_file(engine, buf.getvalue(), Request.make("text"), name="duplex.pdf", progress=progress)
    assert len(sent) == 2  # the faint page number and the text page
    assert calls == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 3), (5, 3)]  # the job's time left counts only pages read
    assert [bool(page.warnings) for page in result.pages] == [True, True, True, False, False]
    assert result.pages[0].warnings == ["blank page: not sent to the OCR engine"] and result.pages[0].text == ""
    assert result.pages[4].text == "Alpha one"
