"""Tests for appliance.ocr.images: every input file here is built on the spot with Pillow (PDFs too)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import time
import zipfile
import zlib

import pytest
from PIL import Image, ImageFile

from appliance.ocr import images
from appliance.ocr.errors import InputError
from appliance.ocr.images import Document, cap_pixels, pdf_render_scale

SUPPORTED_LIST = "supported formats: JPEG, PNG, TIFF, BMP, WebP, PDF"


# ---------------------------------------------------------------------------------------------------------------
# Builders


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def two_colour(size=(120, 80), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows where a rotation moved things."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def pdf_bytes(*sizes_pt, colour=(255, 0, 0)) -> bytes:
    """A PDF with one page per (width, height), in points: saved at 72 dpi, one pixel is one point."""
    pages = [Image.new("RGB", size, colour) for size in sizes_pt]
    return image_bytes(pages[0], "PDF", save_all=True, append_images=pages[1:], resolution=72)


def encrypted_pdf_bytes() -> bytes:
    """A PDF whose /Encrypt dictionary needs a user password: the empty password does not match its /U entry."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -4 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    file_id = b"ab" * 16
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s><%s>] >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, file_id, file_id, xref)
    )
    return out.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed): tiny on disk, huge when decoded."""
    data = bytearray(image_bytes(Image.new("RGB", (1, 1), "white"), "PNG"))
    # Signature (8) + chunk length (4), then b"IHDR" at 12..16, width and height at 16..24, CRC at 29..33.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def open_error(source, **kwargs) -> InputError:
    with pytest.raises(InputError) as caught:
        Document.open(source, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Formats round-trip


@pytest.mark.parametrize(
    "fmt, kind, options, lossless",
    [
        ("JPEG", "jpeg", {"quality": 95}, False),
        ("PNG", "png", {}, True),
        ("TIFF", "tiff", {}, True),
        ("BMP", "bmp", {}, True),
        ("WEBP", "webp", {"lossless": True}, True),
        ("WEBP", "webp", {"quality": 90}, False),
    ],
)
def test_each_format_opens_with_kind_size_and_pixels(tmp_path, fmt, kind, options, lossless):
    data = image_bytes(two_colour(), fmt, **options)
    path = write(tmp_path, "scan.bin", data)  # an extension that says nothing: the content decides

    with Document.open(path) as document:
        assert (document.name, document.kind, document.page_count) == ("scan.bin", kind, 1)
        assert document.sha256 == hashlib.sha256(data).hexdigest()
        page = document.page(0)

    assert (page.mode, page.size) == ("RGB", (120, 80))
    left, right = page.getpixel((10, 40)), page.getpixel((110, 40))
    if lossless:
        assert (left, right) == ((255, 0, 0), (0, 0, 255))
    else:
        assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_bytes_source_is_named_upload_unless_named(tmp_path):
    data = image_bytes(two_colour(), "PNG")
    assert Document.open(data).name == "upload"
    assert Document.open(data, name="receipt.png").name == "receipt.png"
    assert Document.open(bytearray(data)).kind == "png"
    assert Document.open(data).sha256 == Document.open(write(tmp_path, "a.png", data)).sha256


def test_multipage_tiff_yields_every_frame(tmp_path):
    frames = [Image.new("RGB", (60, 40), "red"), Image.new("L", (30, 90), 0), Image.new("RGB", (50, 50), "blue")]
    path = write(tmp_path, "fax.tif", image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]))

    with Document.open(path) as document:
        assert (document.kind, document.page_count) == ("tiff", 3)
        pages = list(document.pages())
        assert document.page(1).size == (30, 90)

    assert [p.size for p in pages] == [(60, 40), (30, 90), (50, 50)]
    assert all(p.mode == "RGB" for p in pages)
    assert [p.getpixel((5, 5)) for p in pages] == [(255, 0, 0), (0, 0, 0), (0, 0, 255)]


def test_multipage_pdf_rasterised_at_pdf_dpi(tmp_path):
    # 144x72 pt is 2x1 inch: 400x200 pixels at 200 dpi.
    path = write(tmp_path, "letters.pdf", pdf_bytes((144, 72), (72, 144), (36, 36)))

    with Document.open(path) as document:
        assert (document.kind, document.page_count) == ("pdf", 3)
        pages = list(document.pages())

    assert images.PDF_DPI == 200
    assert [p.size for p in pages] == [(400, 200), (200, 400), (100, 100)]
    assert all(p.mode == "RGB" for p in pages)
    red = pages[0].getpixel((200, 100))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_pdf_named_png_is_read_as_pdf(tmp_path):
    document = Document.open(write(tmp_path, "photo.png", pdf_bytes((72, 72))))
    assert (document.kind, document.page_count) == ("pdf", 1)
    assert document.page(0).size == (200, 200)


def test_pdf_pages_are_rendered_one_at_a_time(tmp_path, monkeypatch):
    renders = []
    real_scale = images.pdf_render_scale
    monkeypatch.setattr(images, "pdf_render_scale", lambda *a, **k: renders.append(1) or real_scale(*a, **k))
    document = Document.open(write(tmp_path, "long.pdf", pdf_bytes(*[(72, 72)] * 5)))

    pages = document.pages()
    assert renders == []
    next(pages)
    assert len(renders) == 1
    next(pages)
    assert len(renders) == 2


def test_pdf_with_junk_before_the_header_opens():
    assert Document.open(b"\r\n  " + pdf_bytes((72, 72))).kind == "pdf"


def test_pdf_pages_render_from_several_threads(tmp_path):
    documents = [Document.open(pdf_bytes(*[(72, 36)] * 4)) for _ in range(2)]
    sizes, failures = [], []

    def read_all(document):
        try:
            sizes.extend(page.size for page in document.pages())
        except Exception as error:  # pragma: no cover - only on failure
            failures.append(error)

    threads = [threading.Thread(target=read_all, args=(d,)) for d in documents * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert sizes == [(200, 100)] * 16


# ---------------------------------------------------------------------------------------------------------------
# Orientation and colour


def test_exif_orientation_6_rotates_clockwise():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = image_bytes(two_colour((200, 100)), "JPEG", exif=exif, quality=95)

    page = Document.open(data).page(0)

    assert page.size == (100, 200)
    top, bottom = page.getpixel((50, 20)), page.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_is_flattened_onto_white():
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (20, 0, 40, 20))
    page = Document.open(image_bytes(image, "PNG")).page(0)
    assert page.mode == "RGB"
    assert page.getpixel((5, 10)) == (255, 255, 255)
    assert page.getpixel((35, 10)) == (0, 0, 0)


def test_16_bit_greyscale_is_scaled_not_clipped():
    data = image_bytes(Image.new("I;16", (8, 8), 40000), "PNG")
    page = Document.open(data).page(0)
    assert page.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256, where a plain convert gives 255


def test_cmyk_jpeg_becomes_rgb():
    data = image_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    document = Document.open(data)
    with Image.open(io.BytesIO(data)) as original:
        assert original.mode == "CMYK"
    red = document.page(0).getpixel((8, 8))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_palette_with_transparent_index_becomes_white():
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 255, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 5, 10))
    page = Document.open(image_bytes(image, "PNG", transparency=1)).page(0)
    assert page.getpixel((2, 5)) == (0, 255, 0)
    assert page.getpixel((8, 5)) == (255, 255, 255)


def test_one_bit_image_becomes_black_and_white_rgb():
    image = Image.new("1", (10, 10), 1)
    image.paste(0, (0, 0, 5, 10))
    page = Document.open(image_bytes(image, "PNG")).page(0)
    assert (page.mode, page.getpixel((2, 2)), page.getpixel((8, 2))) == ("RGB", (0, 0, 0), (255, 255, 255))


def test_one_bit_group4_tiff_decodes():
    image = Image.new("1", (64, 32), 1)
    image.paste(0, (0, 0, 32, 32))
    page = Document.open(image_bytes(image, "TIFF", compression="group4")).page(0)
    assert (page.size, page.getpixel((10, 10)), page.getpixel((50, 10))) == ((64, 32), (0, 0, 0), (255, 255, 255))


# ---------------------------------------------------------------------------------------------------------------
# Refusals found in open()


def test_zero_byte_file_and_upload(tmp_path):
    error = open_error(write(tmp_path, "blank.jpg", b""))
    assert (error.name, error.reason) == ("blank.jpg", "empty file (0 bytes)")
    assert str(open_error(b"")) == "upload: empty file (0 bytes)"


def test_file_over_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1024 * 1024)
    big = write(tmp_path, "big.png", b"\0" * (5 * 1024 * 1024 // 2))  # 2.5 MiB; refused before its type is read
    assert open_error(big).reason == "file is 2.5 MB; the limit is 1 MB"
    assert open_error(b"\0" * (3 * 1024 * 1024)).reason == "file is 3 MB; the limit is 1 MB"


def test_size_limit_defaults():
    assert images.MAX_FILE_BYTES == 200 * 1024 * 1024
    assert images.MAX_PAGE_PIXELS == 100_000_000
    assert images.MODEL_MAX_PIXELS == 2048 * 2048
    assert images.MODEL_MIN_PIXELS == 512 * 512
    assert Image.MAX_IMAGE_PIXELS == images.MAX_PAGE_PIXELS


def test_text_file_named_jpg_is_refused(tmp_path):
    error = open_error(write(tmp_path, "notes.jpg", b"Dear Sir,\nplease find attached...\n"))
    assert error.name == "notes.jpg"
    assert error.reason == f"not an image or PDF (looks like: text file); {SUPPORTED_LIST}"


def test_zip_named_png_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    error = open_error(write(tmp_path, "photo.png", buffer.getvalue()))
    assert error.reason.startswith("not an image or PDF (looks like: zip archive")
    assert error.reason.endswith(SUPPORTED_LIST)


@pytest.mark.parametrize(
    "data, looks_like",
    [
        (b"\x7fELF\x02\x01\x01" + b"\0" * 60, "executable (ELF)"),
        (b"MZ\x90\x00" + b"\0" * 60, "Windows executable"),
        (bytes(range(256)) * 4, "unrecognised binary data"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML page"),
        (b"BM this is text, not a bitmap", "text file"),
    ],
)
def test_other_non_images_are_refused(data, looks_like):
    assert open_error(data).reason == f"not an image or PDF (looks like: {looks_like}); {SUPPORTED_LIST}"


def test_gif_is_refused_naming_supported_formats():
    error = open_error(image_bytes(Image.new("P", (4, 4)), "GIF"), name="anim.gif")
    assert error.reason == f"unsupported image format (GIF image); convert it to PNG or JPEG; {SUPPORTED_LIST}"


def test_heic_is_recognised_and_refused():
    heic_head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 40
    assert "unsupported image format (HEIC/HEIF image)" in open_error(heic_head).reason


def test_truncated_header_is_refused_at_open(tmp_path):
    data = image_bytes(two_colour(), "PNG")[:20]
    error = open_error(write(tmp_path, "cut.png", data))
    assert error.name == "cut.png"
    assert error.reason.startswith("corrupt or truncated PNG: cannot read the header")


def test_png_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = write(tmp_path, "bomb.png", png_claiming_size(50_000, 50_000))
    assert path.stat().st_size < 100

    started = time.monotonic()
    error = open_error(path)

    assert time.monotonic() - started < 1.0
    assert error.name == "bomb.png"
    assert error.reason == "image is 50000x50000 pixels (2500 MP); the limit is 100 MP"


def test_webp_bomb_is_refused_before_libwebp_allocates(monkeypatch):
    data = bytearray(image_bytes(Image.new("RGB", (8, 8)), "WEBP", exif=Image.Exif().tobytes()))
    assert data[12:16] == b"VP8X"
    data[24:30] = (16000 - 1).to_bytes(3, "little") * 2  # canvas width-1, height-1

    monkeypatch.setitem(images._PIL_CLASSES, "webp", None)  # would fail if the header reached Pillow
    assert open_error(bytes(data)).reason == "image is 16000x16000 pixels (256 MP); the limit is 100 MP"


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}, {"exif": Image.Exif().tobytes()}])
def test_webp_header_size_is_read_for_each_variant(options):
    data = image_bytes(Image.new("RGB", (301, 203)), "WEBP", **options)
    assert images._webp_size(data[:64]) == (301, 203)


def test_tiff_page_over_the_pixel_limit_is_refused_naming_the_page(monkeypatch):
    monkeypatch.setattr(images, "MAX_PAGE_PIXELS", 10_000)
    frames = [Image.new("RGB", (50, 50)), Image.new("RGB", (200, 200))]
    document = Document.open(image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]), name="x.tif")

    assert document.page(0).size == (50, 50)
    with pytest.raises(InputError) as caught:
        document.page(1)
    assert str(caught.value) == "x.tif: page 2: image is 200x200 pixels (0.04 MP); the limit is 0.01 MP"


def test_too_many_pages(monkeypatch):
    monkeypatch.setattr(images, "MAX_PAGES", 2)
    frames = [Image.new("L", (8, 8))] * 3
    tiff = image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert open_error(tiff).reason == "TIFF has 3 pages; the limit is 2"
    assert open_error(pdf_bytes(*[(72, 72)] * 3)).reason == "PDF has 3 pages; the limit is 2"


def test_encrypted_pdf_is_refused(tmp_path):
    error = open_error(write(tmp_path, "statement.pdf", encrypted_pdf_bytes()))
    assert error.name == "statement.pdf"
    assert error.reason.startswith("PDF is encrypted/password-protected")


def test_corrupt_pdf_is_refused():
    assert open_error(b"%PDF-1.7\nthis is not really a pdf").reason == (
        "corrupt or truncated PDF, or a PDF with no pages"
    )
    half = pdf_bytes((72, 72))
    assert open_error(half[: len(half) // 2]).reason.startswith("corrupt or truncated PDF")


def test_missing_file_directory_and_fifo(tmp_path):
    missing = open_error(tmp_path / "nope.jpg")
    assert (missing.name, missing.reason) == ("nope.jpg", f"file not found: {tmp_path / 'nope.jpg'}")

    folder = tmp_path / "scans"
    folder.mkdir()
    assert open_error(folder).reason == "is a directory, not a file"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert open_error(fifo).reason == "is not a regular file"


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path, "secret.png", image_bytes(two_colour(), "PNG"))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Shadow open() inside the module: chmod 000 does not stop root, which runs these tests in CI.
    monkeypatch.setattr(images, "open", denied, raising=False)
    assert open_error(path).reason == "permission denied: this program may not read the file"


# ---------------------------------------------------------------------------------------------------------------
# Refusals found while decoding a page


def test_truncated_jpeg_names_the_file_and_page(tmp_path):
    noise = Image.effect_noise((400, 300), 64).convert("RGB")
    data = image_bytes(noise, "JPEG", quality=90)
    path = write(tmp_path, "holiday.jpg", data[: len(data) // 2])

    document = Document.open(path)  # the header is intact
    with pytest.raises(InputError) as caught:
        list(document.pages())

    assert caught.value.name == "holiday.jpg"
    assert caught.value.reason.startswith("page 1: corrupt or truncated JPEG: ")
    assert "truncated" in caught.value.reason.split(": ", 2)[2]
    assert "Traceback" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# page() and lifetime


def test_page_index_errors():
    frames = [Image.new("L", (8, 8))] * 3
    document = Document.open(image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]), name="t.tif")
    with pytest.raises(IndexError, match=r"page index 3 out of range: t.tif has 3 page\(s\)"):
        document.page(3)
    with pytest.raises(IndexError):
        document.page(-1)
    assert document.page(2).size == (8, 8)


def test_closed_document_refuses_pages():
    with Document.open(pdf_bytes((72, 72)), name="a.pdf") as document:
        assert document.page(0).size == (200, 200)
    with pytest.raises(ValueError, match="document a.pdf is closed"):
        document.page(0)
    document.close()  # twice is fine


# ---------------------------------------------------------------------------------------------------------------
# Sizes: the model cap and the PDF render scale


def test_cap_pixels_downscales_keeping_aspect():
    capped = cap_pixels(Image.new("RGB", (4000, 3000)))
    width, height = capped.size
    assert width * height <= 2048 * 2048
    assert width * height > 0.99 * 2048 * 2048
    assert abs(width / height - 4 / 3) < 0.01


def test_cap_pixels_upscales_tiny_images():
    grown = cap_pixels(Image.new("RGB", (100, 50)))
    width, height = grown.size
    assert width * height >= 512 * 512
    assert (width, height) == (725, 363)


def test_cap_pixels_returns_same_object_within_bounds():
    image = Image.new("RGB", (1000, 1000))
    assert cap_pixels(image) is image


def test_cap_pixels_custom_bounds():
    assert cap_pixels(Image.new("L", (1000, 1000)), max_pixels=250_000, min_pixels=1).size == (500, 500)
    with pytest.raises(ValueError, match="min_pixels"):
        cap_pixels(Image.new("L", (10, 10)), max_pixels=100, min_pixels=200)


def test_pdf_scale_is_pdf_dpi_for_a0_and_capped_for_huge_pages():
    a0 = (2384, 3370)  # points: 33.1 x 46.8 inches, 62 MP at 200 dpi
    assert pdf_render_scale(*a0) == 200 / 72

    huge = (14400, 14400)  # 200 x 200 inches: 1600 MP at 200 dpi
    scale = pdf_render_scale(*huge)
    pixels = (-(-huge[0] * scale // 1)) * (-(-huge[1] * scale // 1))  # ceil, as PDFium sizes the bitmap
    assert 0.98 * images.MAX_PAGE_PIXELS <= pixels <= images.MAX_PAGE_PIXELS


def test_pdf_page_render_respects_the_pixel_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PAGE_PIXELS", 20_000)
    page = Document.open(pdf_bytes((144, 72))).page(0)  # 400x200 at 200 dpi would be 80 000 pixels
    width, height = page.size
    assert width * height <= 20_000
    assert (width, height) == (200, 100)
