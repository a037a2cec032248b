"""One exporter from an `OcrResult`: plain text, Markdown, the result JSON, and a searchable PDF.

The CLI, the web UI's downloads and the scan folder all call `export(result, fmt, source)`; the scan folder writes a
whole set with `write_outputs`, each file under a temporary name and renamed into place only once complete.

The searchable PDF is the original pages (JPEG bytes kept as they are, other images stored losslessly, PDF pages
imported as they are) with an invisible text layer (render mode 3) placed from the spotting boxes. The text layer
uses a tiny "glyphless" TrueType font built here (every code drawn as one 1 em square, never painted) with an
identity Unicode mapping, as Tesseract and OCRmyPDF do: no system font is needed, any script (Chinese included) can
be searched, selected and copied, and the font adds about 2 KB per file. pypdfium2 (already a dependency) writes it.
"""

from __future__ import annotations

import ctypes
import io
import struct
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from PIL import Image

from appliance.files import fsync_dir, write_atomic
from appliance.ocr.result import OcrResult

FORMATS = ("txt", "md", "json", "pdf")
MEDIA_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "json": "application/json",
    "pdf": "application/pdf",
}
# Written in this order so that the JSON (the full record) appearing last means the set is complete.
WRITE_ORDER = ("pdf", "md", "txt", "json")
IMAGE_DPI = 200  # page size for images that carry no resolution: a typical scan, and what PDFs are rasterised at


def export(result: OcrResult, fmt: str, source=None) -> bytes:
    """The bytes of one output format. `source` (path or bytes of the original file) is needed only for "pdf"."""
    if fmt == "txt":
        return (result.text.rstrip("\n") + "\n").encode("utf-8")
    if fmt == "md":
        return to_markdown(result).encode("utf-8")
    if fmt == "json":
        return (result.to_json(indent=2) + "\n").encode("utf-8")
    if fmt == "pdf":
        if source is None:
            raise ValueError("the searchable PDF needs the original file (source=path or bytes)")
        return searchable_pdf(result, source)
    raise ValueError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")


def to_markdown(result: OcrResult) -> str:
    """The Markdown a task made (doc, table, ...), else the text; pages separated by a rule when there are several."""
    parts = []
    for page in result.pages:
        body = page.markdown or page.translation or page.text
        if len(result.pages) > 1:
            body = f"<!-- page {page.number} -->\n\n{body}"
        parts.append(body.strip())
    fields = result.fields
    if fields and not any(p.markdown for p in result.pages):
        parts = [
            "| field | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {_md_cell(v)} |" for k, v in fields.items())
        ]
    return "\n\n---\n\n".join(parts).strip() + "\n"


def _md_cell(value) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def free_stem(folder: Path, stem: str, exts=FORMATS) -> str:
    """`stem`, or `stem-1`, `stem-2`, ...: the first for which no `stem.ext` exists in `folder` (never overwrite)."""
    candidate, n = stem, 0
    while any((folder / f"{candidate}.{ext}").exists() for ext in exts):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def write_outputs(result: OcrResult, source, folder: Path, stem: str, formats=FORMATS) -> list[Path]:
    """Write `folder/stem.<fmt>` for each format, each complete before it appears; returns the paths.

    Files of this stem that exist are replaced: choose the stem with `free_stem` first (the scan folder records its
    choice, so a rerun after a crash rewrites its own files and nobody else's).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in sorted(formats, key=WRITE_ORDER.index):
        path = folder / f"{stem}.{fmt}"
        write_atomic(path, export(result, fmt, source))
        written.append(path)
    fsync_dir(folder)
    return written


# --- searchable PDF -------------------------------------------------------------------------------------------------


def searchable_pdf(result: OcrResult, source) -> bytes:
    """The original pages with the recognised text as an invisible, selectable layer."""
    from appliance.ocr.images import _PDFIUM_LOCK

    with _PDFIUM_LOCK:  # PDFium is not thread-safe; the web UI exports while the jobs worker renders PDFs
        return _searchable_pdf(result, source)


def _searchable_pdf(result: OcrResult, source) -> bytes:
    from appliance.ocr.images import Document

    raw_bytes = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    pdf = pdfium.PdfDocument.new()
    codes = [
        c
        for page in result.pages
        for text in [page.text, *(b.text for b in page.blocks)]
        for c in _utf16_units(text or "")
    ]
    font = _load_glyphless_font(pdf, max(codes, default=0))
    try:
        if raw_bytes[:5] == b"%PDF-":
            src = pdfium.PdfDocument(bytes(raw_bytes))
            pdf.import_pages(src)
            for index, page_result in enumerate(result.pages[: len(pdf)]):
                page = pdf[index]
                _add_text_layer(pdf, page, font, page_result, _pdf_page_mapping(page, page_result))
        else:
            with Document.open(bytes(raw_bytes), name=result.source) as document:
                for page_result, image in zip(result.pages, document.pages()):
                    page, mapping = _image_page(pdf, image, raw_bytes, document.page_count)
                    _add_text_layer(pdf, page, font, page_result, mapping)
    finally:
        pdfium_raw.FPDFFont_Close(font)
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue()


def _image_page(pdf, image: Image.Image, raw_bytes: bytes, page_count: int):
    """A new page showing `image` at its scan resolution; returns it and the pixel -> point mapping."""
    dpi = image.info.get("dpi") or (IMAGE_DPI, IMAGE_DPI)
    dpi_x, dpi_y = (float(d) if 50 <= float(d) <= 2400 else IMAGE_DPI for d in dpi)
    width, height = image.width * 72 / dpi_x, image.height * 72 / dpi_y
    page = pdf.new_page(width, height)
    picture = pdfium.PdfImage.new(pdf)
    if page_count == 1 and _is_upright_jpeg(raw_bytes, image.size):
        picture.load_jpeg(io.BytesIO(raw_bytes), inline=False)  # the scanner's own bytes, not re-encoded
    else:
        mode = "L" if image.mode in ("1", "L", "LA", "I;16", "I") else "RGB"
        picture.set_bitmap(pdfium.PdfBitmap.from_pil(image.convert(mode)))  # stored losslessly (Flate)
    picture.set_matrix(pdfium.PdfMatrix().scale(width, height))
    page.insert_obj(picture)
    scale_x, scale_y = width / image.width, height / image.height

    def mapping(x: float, y: float) -> tuple[float, float]:
        return x * scale_x, height - y * scale_y

    return page, mapping


def _is_upright_jpeg(raw_bytes: bytes, size) -> bool:
    """A JPEG that needs no EXIF rotation, in the colour modes PDF viewers show as they are."""
    if raw_bytes[:2] != b"\xff\xd8":
        return False
    try:
        with Image.open(io.BytesIO(raw_bytes)) as im:
            return (
                im.format == "JPEG"
                and im.size == tuple(size)
                and im.mode in ("L", "RGB")
                and (im.getexif().get(0x0112, 1) == 1)
            )
    except (OSError, ValueError):  # not a JPEG Pillow can read: re-encode instead
        return False


def _pdf_page_mapping(page, page_result):
    """Pixels of the rasterised page (rotation and crop box applied, as the pipeline saw it) -> page points."""
    width, height = page_result.width or 1, page_result.height or 1

    def device_to_page(x: int, y: int) -> tuple[float, float]:
        px, py = ctypes.c_double(), ctypes.c_double()
        pdfium_raw.FPDF_DeviceToPage(page.raw, 0, 0, width, height, 0, x, y, px, py)
        return px.value, py.value

    # The mapping is affine: three corners fix it, then any pixel is a blend of them.
    ox, oy = device_to_page(0, 0)
    rx, ry = device_to_page(width, 0)
    dx, dy = device_to_page(0, height)

    def mapping(x: float, y: float) -> tuple[float, float]:
        u, v = x / width, y / height
        return ox + u * (rx - ox) + v * (dx - ox), oy + u * (ry - oy) + v * (dy - oy)

    return mapping


def _add_text_layer(pdf, page, font, page_result, mapping) -> None:
    """One invisible text object per line, stretched over its box (font size 1, every glyph 1 em wide)."""
    lines = [(b.text.strip(), b.box) for b in page_result.blocks if b.text and b.text.strip() and b.box]
    if not lines and page_result.text.strip():
        lines = _unplaced_lines(page_result)
    for text, box in lines:
        codes = _utf16_units(text)
        x1, y1, x2, y2 = _page_box(box, page_result, mapping)
        ox, oy = mapping(x1, y2)  # baseline origin: bottom-left of the box
        ax, ay = mapping(x2, y2)  # along the baseline
        tx, ty = mapping(x1, y1)  # up to the top of the box
        obj = pdfium_raw.FPDFPageObj_CreateTextObj(pdf.raw, font, 1.0)
        array = (ctypes.c_uint * len(codes))(*codes)
        if not pdfium_raw.FPDFText_SetCharcodes(obj, array, len(codes)):
            pdfium_raw.FPDFPageObj_Destroy(obj)
            continue
        pdfium_raw.FPDFTextObj_SetTextRenderMode(obj, pdfium_raw.FPDF_TEXTRENDERMODE_INVISIBLE)
        n = len(codes)
        pdfium_raw.FPDFPageObj_Transform(obj, (ax - ox) / n, (ay - oy) / n, tx - ox, ty - oy, ox, oy)
        pdfium_raw.FPDFPage_InsertObject(page.raw, obj)
    page.gen_content()


def _page_box(box, page_result, mapping):
    """The box clamped to the page, never empty (a zero-size object would be lost by some viewers)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if page_result.width and page_result.height:
        x1, x2 = max(0.0, x1), min(float(page_result.width), x2)
        y1, y2 = max(0.0, y1), min(float(page_result.height), y2)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _unplaced_lines(page_result):
    """A page with text but no boxes (e.g. the model's plain-text task): rows from the top, so it is still
    searchable, though the selection will not line up with the picture."""
    texts = [t.strip() for t in page_result.text.splitlines() if t.strip()]
    width, height = page_result.width or 1000, page_result.height or 1000
    row = min(height / max(len(texts), 1), height / 60)
    return [(t, [width * 0.05, i * row, width * 0.95, (i + 1) * row]) for i, t in enumerate(texts)]


def _utf16_units(text: str) -> list[int]:
    """Character codes for the Identity-H font: UTF-16 code units, which the ToUnicode map sends back as they are."""
    data = text.encode("utf-16-be", errors="replace")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _load_glyphless_font(pdf, max_code: int):
    font_data = glyphless_font()
    font_buffer = (ctypes.c_ubyte * len(font_data)).from_buffer_copy(font_data)
    # Every code used -> glyph 1. Only as long as the highest code: pdfium spends ~40 ms on a full 64 K map.
    cid_to_gid = b"\x00\x01" * (max_code + 1)
    map_buffer = (ctypes.c_ubyte * len(cid_to_gid)).from_buffer_copy(cid_to_gid)
    font = pdfium_raw.FPDFText_LoadCidType2Font(
        pdf.raw, font_buffer, len(font_data), _IDENTITY_TO_UNICODE.encode("ascii"), map_buffer, len(cid_to_gid)
    )
    if not font:
        raise RuntimeError("pdfium refused the text-layer font")
    return font


def _identity_to_unicode_cmap() -> str:
    """ToUnicode CMap: code U (a UTF-16 unit) -> U. Ranges stay within one high byte, as the PDF spec asks."""
    ranges = [f"<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>" for hi in range(256)]
    blocks = [
        f"{len(ranges[i : i + 100])} beginbfrange\n" + "\n".join(ranges[i : i + 100]) + "\nendbfrange"
        for i in range(0, len(ranges), 100)
    ]
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        + "\n".join(blocks)
        + "\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    )


_IDENTITY_TO_UNICODE = _identity_to_unicode_cmap()


def glyphless_font() -> bytes:
    """A valid TrueType font with two glyphs, both 1 em wide: an empty .notdef and a 1 em square that every code
    maps to. The square is never painted (the text is invisible), but MuPDF skips invisible text drawn with an
    empty glyph, so the glyph needs an outline. Built here rather than shipped so there is no binary blob to trust.
    """
    upm, glyphs = 1000, 2
    # One contour of 4 on-curve points: flags, then x deltas, then y deltas (0,0) (1 em,0) (1 em,1 em) (0,1 em).
    square = struct.pack(">5h2H4B8h", 1, 0, 0, upm, upm, 3, 0, 1, 1, 1, 1, 0, upm, 0, -upm, 0, 0, upm, 0)
    tables = {
        # version, revision, checksum adjustment, magic, flags, units/em, created, modified, bbox, style,
        # smallest readable size, direction hint, short loca, glyph data format
        b"head": struct.pack(
            ">LLLLHHqqhhhhHHhhh", 0x10000, 0x10000, 0, 0x5F0F3CF5, 0, upm, 0, 0, 0, 0, upm, upm, 0, 3, 2, 0, 0
        ),
        # version, ascender, descender, line gap, max advance, min lsb, min rsb, max extent, caret (rise, run,
        # offset), 4 reserved, metric format, number of metrics
        b"hhea": struct.pack(
            ">LhhhHhhhhhhhhhhhH", 0x10000, upm, 0, 0, upm, 0, 0, upm, 1, 0, 0, 0, 0, 0, 0, 0, glyphs
        ),
        b"maxp": struct.pack(">LHHHHHHHHHHHHHH", 0x10000, glyphs, 4, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        b"hmtx": struct.pack(">HhHh", upm, 0, upm, 0),
        b"loca": struct.pack(">HHH", 0, 0, len(square) // 2),  # short offsets count 2-byte words
        b"glyf": square,
        # cmap: one Windows Unicode subtable (format 4) that maps nothing; the PDF's CIDToGIDMap does the mapping
        b"cmap": struct.pack(">HHHHL", 0, 1, 3, 1, 12)
        + struct.pack(">12H", 4, 24, 0, 2, 2, 0, 0, 0xFFFF, 0, 0xFFFF, 1, 0),
        b"post": struct.pack(">LLhhLLLLL", 0x30000, 0, 0, 0, 1, 0, 0, 0, 0),
        b"name": _name_table("GlyphLessFont"),
        b"OS/2": struct.pack(">HhHHH11h", 1, upm, 400, 5, 0, *[0] * 11)
        + bytes(10 + 16)
        + b"NONE"
        + struct.pack(">HHHhhhHHLL", 0x40, 0x20, 0xFFFF, upm, 0, 0, upm, 0, 1, 0),
    }
    tags = sorted(tables)
    offset = 12 + 16 * len(tags)
    directory, body = b"", b""
    for tag in tags:
        data = tables[tag]
        padded = data + bytes(-len(data) % 4)
        checksum = sum(struct.unpack(f">{len(padded) // 4}L", padded)) & 0xFFFFFFFF
        directory += struct.pack(">4sLLL", tag, checksum, offset + len(body), len(data))
        body += padded
    header = struct.pack(">LHHHH", 0x10000, len(tags), 128, 3, len(tags) * 16 - 128)
    return header + directory + body


def _name_table(family: str) -> bytes:
    name = family.encode("utf-16-be")
    ids = (1, 2, 4, 6)  # family, subfamily, full name, PostScript name
    records = b"".join(struct.pack(">6H", 3, 1, 0x409, i, len(name), 0) for i in ids)
    return struct.pack(">3H", 0, len(ids), 6 + 12 * len(ids)) + records + name
