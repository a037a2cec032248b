"""The exporter: txt / md / json, and the searchable PDF read back with pypdfium2 (English and Chinese)."""

from __future__ import annotations

import json

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageStat

from appliance import export
from appliance.ocr.result import Block, EngineInfo, OcrResult, Page

SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CJK = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


def squash(text: str) -> str:
    return "".join(text.split())


def result_of(pages, task="spotting") -> OcrResult:
    return OcrResult("scan.png", task, {}, EngineInfo("cpu", "rapidocr/PP-OCRv6"), pages)


def pdf_text(data: bytes) -> list[str]:
    pdf = pdfium.PdfDocument(data)
    return [page.get_textpage().get_text_bounded() for page in pdf]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A page with an English and a Chinese line, recognised by the real CPU engine; (path, result)."""
    from appliance.ocr.engines.cpu import CpuEngine
    from appliance.ocr.pipeline import recognize_file
    from appliance.ocr.tasks import Request

    image = Image.new("RGB", (900, 320), "white")
    draw = ImageDraw.Draw(image)
    draw.text((30, 40), "Invoice total 12.50 EUR", font=ImageFont.truetype(SANS, 40), fill="black")
    draw.text((30, 190), "发票号码 合计金额", font=ImageFont.truetype(CJK, 52), fill="black")
    path = tmp_path_factory.mktemp("export") / "scan.jpg"
    image.save(path, quality=92)
    engine = CpuEngine()
    try:
        return path, recognize_file(engine, path, Request.make("spotting"))
    finally:
        engine.close()


def test_searchable_pdf_text_layer_matches_recognised_text(scan):
    path, result = scan
    assert "发票" in result.text and "12.50" in result.text  # the engine read both lines
    data = export.export(result, "pdf", path)
    assert data.startswith(b"%PDF-")
    (text,) = pdf_text(data)
    assert squash(text) == squash(result.text)  # English and Chinese, in order, extractable


def test_text_layer_sits_on_the_boxes(scan):
    """Each line's characters are found inside its box (scaled to points), so selection matches the picture."""
    path, result = scan
    page = pdfium.PdfDocument(export.export(result, "pdf", path))[0]
    width, height = page.get_size()
    textpage = page.get_textpage()
    page_result = result.pages[0]
    scale = width / page_result.width
    for block in page_result.blocks:
        x1, y1, x2, y2 = block.box
        found = textpage.get_text_bounded(
            left=x1 * scale - 1, bottom=height - y2 * scale - 1, right=x2 * scale + 1, top=height - y1 * scale + 1
        )
        assert squash(found) == squash(block.text)


def test_text_layer_is_invisible_and_jpeg_kept_as_is(scan):
    path, result = scan
    pdf = pdfium.PdfDocument(export.export(result, "pdf", path))
    page = pdf[0]
    images = [obj for obj in page.get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE]
    assert len(images) == 1 and images[0].get_filters() == ["DCTDecode"]
    assert bytes(images[0].get_data()) == path.read_bytes()  # the scanner's bytes, not re-encoded
    texts = [obj for obj in page.get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_TEXT]
    assert texts and all(
        pdfium.raw.FPDFTextObj_GetTextRenderMode(t.raw) == pdfium.raw.FPDF_TEXTRENDERMODE_INVISIBLE for t in texts
    )
    # Rendered, the page is the picture alone: nothing of the text layer shows.
    rendered = page.render(scale=result.pages[0].width / page.get_width()).to_pil().convert("L")
    original = Image.open(path).convert("L")
    assert rendered.size == original.size
    assert ImageStat.Stat(ImageChops.difference(rendered, original)).mean[0] < 2.0  # resampling noise only


def test_pdf_input_keeps_its_pages_and_gets_a_text_layer(tmp_path):
    pages = [Image.new("RGB", (400, 566), "white") for _ in range(2)]
    source = tmp_path / "two.pdf"
    pages[0].save(source, save_all=True, append_images=pages[1:], resolution=100)
    # Boxes in pixels of the page as the pipeline rasterised it (200 dpi): 400 px at 100 dpi -> 800 px.
    result = result_of(
        [
            Page(
                text="first page",
                blocks=[Block("first page", [100, 100, 500, 160])],
                number=1,
                width=800,
                height=1132,
            ),
            Page(text="第二页", blocks=[Block("第二页", [100, 900, 400, 980])], number=2, width=800, height=1132),
        ]
    )
    data = export.export(result, "pdf", source.read_bytes())
    pdf = pdfium.PdfDocument(data)
    assert len(pdf) == 2 and pytest.approx(pdf[0].get_size(), abs=0.5) == (288, 407.5)
    assert [squash(t) for t in pdf_text(data)] == ["firstpage", "第二页"]
    box = pdf[1].get_textpage().get_charbox(0)  # 100 px at 200 dpi = 36 pt from the left
    assert box[0] == pytest.approx(36, abs=1)


def test_page_without_boxes_is_still_searchable(tmp_path):
    source = tmp_path / "plain.png"
    Image.new("L", (600, 800), 255).save(source)
    result = result_of([Page(text="line one\n第二行", number=1, width=600, height=800)], task="text")
    assert [squash(t) for t in pdf_text(export.export(result, "pdf", source))] == ["lineone第二行"]


def test_txt_md_json():
    result = result_of(
        [
            Page(text="TOTAL 12.50", blocks=[Block("TOTAL 12.50", [1, 2, 3, 4], 0.9)], number=1, width=10, height=10),
            Page(text="", markdown="# Title\n\n<table></table>", number=2, width=10, height=10),
        ]
    )
    assert export.export(result, "txt") == b"TOTAL 12.50\n"
    md = export.export(result, "md").decode()
    assert md.startswith("<!-- page 1 -->\n\nTOTAL 12.50") and "# Title" in md
    data = json.loads(export.export(result, "json"))
    assert data["schema"] == "appliance.ocr.result" and data["pages"][0]["blocks"][0]["box"] == [1, 2, 3, 4]
    assert OcrResult.from_dict(data).text == result.text
    with pytest.raises(ValueError, match="unknown export format"):
        export.export(result, "docx")
    with pytest.raises(ValueError, match="original file"):
        export.export(result, "pdf")


def test_extract_fields_become_a_markdown_table():
    page = Page(text='{"total": "12.50"}', fields={"total": "12.50", "seller": "A|B"}, number=1)
    md = export.export(result_of([page], task="extract"), "md").decode()
    assert "| total | 12.50 |" in md and "| seller | A\\|B |" in md


def test_write_outputs_never_overwrites_and_leaves_no_temp_files(tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (50, 20), "white").save(source)
    result = result_of([Page(text="hello", blocks=[Block("hello", [1, 1, 40, 15])], number=1, width=50, height=20)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "in.txt").write_text("someone else's file")
    stem = export.free_stem(out, "in")
    assert stem == "in-1"
    written = export.write_outputs(result, source, out, stem)
    assert [p.name for p in written] == ["in-1.pdf", "in-1.md", "in-1.txt", "in-1.json"]  # json last: set complete
    assert (out / "in.txt").read_text() == "someone else's file"
    assert sorted(p.name for p in out.iterdir()) == ["in-1.json", "in-1.md", "in-1.pdf", "in-1.txt", "in.txt"]


def test_glyphless_font_is_a_valid_truetype_font(tmp_path):
    path = tmp_path / "glyphless.ttf"
    path.write_bytes(export.glyphless_font())
    font = ImageFont.truetype(str(path), 20)  # FreeType accepts it
    assert font.getname()[0] == "GlyphLessFont"
    assert font.getlength("abc") == pytest.approx(60)  # every glyph 1 em wide
    assert len(export.glyphless_font()) < 1024


def test_png_page_is_stored_losslessly(tmp_path):
    source = tmp_path / "gray.png"
    image = Image.new("RGB", (120, 60), "white")
    ImageDraw.Draw(image).rectangle([10, 10, 50, 40], fill=(200, 30, 30))
    image.save(source)
    result = result_of([Page(text="", number=1, width=120, height=60)])
    page = pdfium.PdfDocument(export.export(result, "pdf", source))[0]
    (picture,) = [o for o in page.get_objects() if o.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE]
    assert picture.get_bitmap().to_pil().convert("RGB").tobytes() == image.tobytes()
