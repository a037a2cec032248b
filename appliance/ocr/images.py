"""Reading input files: detect the type, validate, and hand out pages as RGB images one at a time.

Accepted: JPEG, PNG, TIFF (multi-page), BMP, WebP, PDF (multi-page). The type comes from the file's first bytes,
never from its name, so a PDF called `scan.jpg` works and a ZIP called `photo.png` is refused.

Everything that can be checked cheaply happens in `Document.open()`: empty or oversized file, unknown type, a header
that does not parse, too many pages, a password-protected PDF, and an image whose header claims more pixels than
`MAX_PAGE_PIXELS` (a decompression bomb is refused before its pixels are allocated). Decoding a page happens only
when that page is asked for; a problem found then raises the same `InputError`, naming the file and the page.

Pages come out as the original pixels (EXIF-rotated, RGB, alpha flattened onto white). Shrinking them for the model
is a separate step, `cap_pixels()`, which engines call just before inference.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
from collections.abc import Iterator

import pypdfium2 as pdfium
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from appliance.messages import Text
from appliance.ocr.errors import InputError

# ---------------------------------------------------------------------------------------------------------------
# Limits: the one place they are set.

MiB = 1024 * 1024
MAX_FILE_BYTES = 200 * MiB
# Decoding limit against decompression bombs. An A4 page scanned at 600 dpi is 35 MP, so 100 MP leaves room for
# large-format scans while keeping one decoded page under ~400 MB (RGBA).
MAX_PAGE_PIXELS = 100_000_000
MAX_PAGES = 1000
PDF_DPI = 200  # the reference advises 150-200 dpi; more only costs vision tokens
# The HunyuanOCR processor's own defaults (min 512*512, max 2048*2048 pixels).
MODEL_MAX_PIXELS = 2048 * 2048
MODEL_MIN_PIXELS = 512 * 512

# Keep Pillow's own bomb guard in line with ours for any code that calls Image.open() directly
# (Pillow warns above this and refuses above twice this). Our own check below runs before decoding regardless.
Image.MAX_IMAGE_PIXELS = MAX_PAGE_PIXELS

# ---------------------------------------------------------------------------------------------------------------
# Formats.

# kind -> the name shown to people. The kind is what `Document.kind` holds.
SUPPORTED = {
    "jpeg": "JPEG",
    "png": "PNG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "webp": "WebP",
    "pdf": "PDF",
}
SUPPORTED_TEXT = ", ".join(SUPPORTED.values())
MULTI_PAGE = frozenset({"tiff", "pdf"})
# Only for picking files out of a folder or a file dialog; the type itself is always read from the content.
EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".dib", ".webp", ".pdf"})

# Pillow's decoder class for each raster kind. Calling the class directly parses the header only, with no
# guessing among other formats and without Image.open()'s bomb check, so we can report the exact size ourselves.
_PIL_CLASSES = {
    "jpeg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}

# Things people drop on an OCR box that we do not read: (leading bytes, what it looks like, is it an image).
_LOOKALIKES = [
    (b"GIF87a", "GIF image", True),
    (b"GIF89a", "GIF image", True),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image", True),
    (b"\xff\x4f\xff\x51", "JPEG 2000 image", True),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL image", True),
    (b"\xff\x0a", "JPEG XL image", True),
    (b"\x00\x00\x01\x00", "Windows icon (ICO)", True),
    (b"8BPS", "Photoshop document (PSD)", True),
    (b"PK\x03\x04", "zip archive (or .docx/.xlsx/.odt)", False),
    (b"PK\x05\x06", "zip archive (empty)", False),
    (b"\x1f\x8b", "gzip archive", False),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive", False),
    (b"Rar!\x1a\x07", "RAR archive", False),
    (b"\xfd7zXZ\x00", "xz archive", False),
    (b"BZh", "bzip2 archive", False),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old Microsoft Office document (.doc/.xls/.ppt)", False),
    (b"{\\rtf", "RTF document", False),
    (b"%!PS", "PostScript document", False),
    (b"\x7fELF", "executable (ELF)", False),
    (b"MZ", "Windows executable", False),
    (b"\xcf\xfa\xed\xfe", "executable (Mach-O)", False),
    (b"#!", "script", False),
    (b"OggS", "audio/video (Ogg)", False),
    (b"ID3", "audio (MP3)", False),
    (b"fLaC", "audio (FLAC)", False),
]
_BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)  # the DIB header variants in use
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}

# The lock pypdfium2 needs: PDFium is not thread-safe, and the web UI and scan folder may read PDFs in parallel.
_PDFIUM_LOCK = threading.RLock()


def sniff(data: bytes) -> tuple[str | None, str]:
    """(kind, description) from the leading bytes. kind is a key of SUPPORTED, or None when we do not read it."""
    head = data[:1024]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg", "JPEG image"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "PNG image"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF, either byte order
        return "tiff", "TIFF image"
    # "BM" alone is too weak (a text file may start with it); also require a known DIB header size.
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp", "BMP image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp", "WebP image"
    # The PDF header may follow some junk bytes; readers accept it anywhere in the first kilobyte.
    if b"%PDF-" in head:
        return "pdf", "PDF document"
    return None, _describe_unsupported(head)


def _describe_unsupported(head: bytes) -> str:
    for prefix, description, _ in _LOOKALIKES:
        if head.startswith(prefix):
            return description
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF image"
        if brand in (b"avif", b"avis"):
            return "AVIF image"
        return "video (MP4/MOV)"
    if head.startswith(b"RIFF"):
        return "RIFF media file (WAV/AVI)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:
            return "unrecognised binary data"
        text = head[: error.start].decode("utf-8")  # a multi-byte character cut off by the 1 KiB sample
    text = text.removeprefix("\ufeff")  # a byte-order mark is not printable, but the text after it is
    if text and all(ch.isprintable() or ch in "\r\n\t\f" for ch in text):
        lowered = text.lstrip().lower()
        if "<svg" in lowered:
            return "SVG image"
        if lowered.startswith(("<!doctype html", "<html")):
            return "HTML page"
        return "text file"
    return "unrecognised binary data"


# Formats that are images, just not ones we read: the message then suggests converting rather than "not an image".
_OTHER_IMAGE_FORMATS = {description for _, description, is_image in _LOOKALIKES if is_image}
_OTHER_IMAGE_FORMATS |= {"HEIC/HEIF image", "AVIF image", "SVG image"}


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header, read before libwebp allocates the canvas. None when not recognised."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:  # extended: 24-bit width-1 and height-1
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _number(value: float) -> str:
    """250 -> '250', 2.5 -> '2.5', 0.04 -> '0.04'. Rounds UP, so a size just over a limit never reads as the limit."""
    decimals = 1 if value >= 1 else 2
    factor = 10**decimals
    rounded = math.ceil(round(value * factor, 6)) / factor  # round() first: 0.04 * 100 is 4.000000000000001
    return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")


BLANK_SPREAD = 32  # grey levels away from the paper's (the median's) that count as ink
BLANK_INK_PIXELS = 4  # fewer such pixels in a 512-pixel copy: a blank page (a separator sheet, an empty back side)


def is_blank(image: Image.Image) -> bool:
    """No ink on the page: nothing clearly darker or lighter than the paper in a box-averaged 512-pixel grey copy
    (averaging keeps a thin stroke tens of levels away from the paper; scanner noise stays within a few)."""
    grey = image.convert("L")
    grey.thumbnail((512, 512), Image.Resampling.BOX)
    histogram = grey.histogram()
    half, seen, paper = sum(histogram) / 2, 0, 0
    for level, count in enumerate(histogram):
        seen += count
        if seen >= half:
            paper = level
            break
    ink = sum(histogram[: max(0, paper - BLANK_SPREAD)]) + sum(histogram[paper + BLANK_SPREAD + 1 :])
    return ink < BLANK_INK_PIXELS


def _pixel_reason(width: int, height: int) -> str | None:
    """Why an image of this size is refused, or None when it is acceptable."""
    if width * height <= MAX_PAGE_PIXELS:
        return None
    mp, limit = _number(width * height / 1e6), _number(MAX_PAGE_PIXELS / 1e6)
    return Text("too_many_pixels", width=width, height=height, mp=mp, limit=limit)


# ---------------------------------------------------------------------------------------------------------------
# Pixels.


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16-bit and float scaled (not clipped), alpha and transparency onto white."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode in ("I", "F"):
        _, high = image.getextrema()
        if image.mode == "F" and high <= 1.0:
            image = image.point(lambda v: v * 255)  # float samples in 0..1
        elif high > 255:
            # 16-bit samples: keep the top 8 bits. Converting directly would clip everything above 255 to white.
            image = image.point(lambda v: v / 256 if high <= 65535 else v * 255 / high)
        image = image.convert("L")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        # Transparent areas of scans and screenshots are paper: white, not black, or text on them disappears.
        flattened = Image.new("RGB", rgba.size, "white")
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    if image.mode != "RGB":
        # CMYK is converted without a colour profile: colours shift a little, which does not matter for OCR.
        image = image.convert("RGB")
    return image


def cap_pixels(
    image: Image.Image, max_pixels: int = MODEL_MAX_PIXELS, min_pixels: int = MODEL_MIN_PIXELS
) -> Image.Image:
    """Resize, keeping the aspect ratio, so that min_pixels <= width*height <= max_pixels (about, for min).

    Returns the same object when the image is already within bounds. No scale factor is returned on purpose:
    HunyuanOCR reports boxes as 0..1000 relative to the image it saw, and the engines turn those into pixels of
    the ORIGINAL page (value * original size / 1000), so the resized size never needs to be known afterwards.
    """
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
    width, height = image.size
    pixels = width * height
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
        # reducing_gap: a fast integer reduction first, then LANCZOS for the last step; same look, much faster.
        return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if 0 < pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
        size = (math.ceil(width * scale), math.ceil(height * scale))
        return image.resize(size, Image.Resampling.BICUBIC)
    return image


def pdf_render_scale(
    width_pt: float, height_pt: float, dpi: float | None = None, max_pixels: int | None = None
) -> float:
    """Scale (pixels per PDF point) for rendering a page: `dpi`, lowered so the bitmap stays within max_pixels."""
    dpi = PDF_DPI if dpi is None else dpi
    max_pixels = MAX_PAGE_PIXELS if max_pixels is None else max_pixels
    scale = dpi / 72  # PDF sizes are in points, 72 to the inch
    # PDFium rounds each side up, so step down until the rounded bitmap fits; it takes a few steps at most.
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > max_pixels:
        scale = min(scale * 0.99, math.sqrt(max_pixels / (width_pt * height_pt)))
    return scale


# ---------------------------------------------------------------------------------------------------------------
# Documents.


def _read_file(path: str | os.PathLike, name: str) -> bytes:
    """The file's bytes, or an InputError that says what is wrong with the path."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(name, "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or device would block or never end.
            raise InputError(name, "is not a regular file")
        check_size(info.st_size, name)
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # + 1: notice a file that grew after stat()
    except FileNotFoundError:
        raise InputError(name, f"file not found: {os.fspath(path)}") from None
    except PermissionError:
        raise InputError(name, "permission denied: this program may not read the file") from None
    except IsADirectoryError:
        raise InputError(name, "is a directory, not a file") from None
    except OSError as error:
        raise InputError(name, f"cannot read the file: {error.strerror or error}") from None
    check_size(len(data), name)
    return data


def check_size(size: int, name: str) -> None:
    if size == 0:
        raise InputError(name, Text("file_empty"))
    if size > MAX_FILE_BYTES:
        raise InputError(name, Text("file_too_big", size=_number(size / MiB), limit=_number(MAX_FILE_BYTES / MiB)))


class Document:
    """One input file: its kind, page count and checksum, and its pages decoded on demand.

    Use `Document.open(path_or_bytes)`; close it (or use `with`) to free the bytes and PDFium's handle.
    Pages are 0-based for `page(i)`; messages count pages from 1, as people do.
    """

    def __init__(self, name: str, kind: str, data: bytes, page_count: int, pdf: pdfium.PdfDocument | None = None):
        self.name = name
        self.kind = kind
        self.page_count = page_count
        self.size_bytes = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._data = data  # kept in memory: bounded by MAX_FILE_BYTES, and immune to the file changing meanwhile
        self._pdf = pdf
        self._closed = False

    @classmethod
    def open(cls, source: str | os.PathLike | bytes, name: str | None = None) -> Document:
        """Read and validate a file (path) or an upload (bytes); InputError with a reason a person can act on."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            name = name or "upload"
            data = bytes(source)
            check_size(len(data), name)
        else:
            name = name or os.path.basename(os.fspath(source)) or os.fspath(source)
            data = _read_file(source, name)

        kind, looks_like = sniff(data)
        if kind is None:
            code = "unsupported_image" if looks_like in _OTHER_IMAGE_FORMATS else "not_image"
            raise InputError(name, Text(code, looks_like=looks_like, formats=SUPPORTED_TEXT))

        if kind == "pdf":
            pdf, page_count = _open_pdf(data, name)
            return cls(name, kind, data, page_count, pdf)

        image = _open_raster(data, kind, name, page_number=None)
        reason = _pixel_reason(*image.size)
        if reason:
            raise InputError(name, reason)
        page_count = _count_frames(image, name) if kind in MULTI_PAGE else 1  # animated WebP/PNG: first frame only
        _check_page_count(page_count, kind, name)
        return cls(name, kind, data, page_count)

    # -- pages ------------------------------------------------------------------------------------------------

    def pages(self) -> Iterator[Image.Image]:
        """Each page as an RGB image, decoded (or rendered) one at a time as the caller iterates."""
        for index in range(self.page_count):
            yield self.page(index)

    def page(self, index: int, longest: int | None = None) -> Image.Image:
        """Page `index` (0-based) as an RGB image. IndexError outside 0..page_count-1.

        `longest`: a preview, at most this many pixels on its longest side, made without ever holding the full-size
        RGB page (a 100 MP page is 300 MB in RGB: PDFs render small, JPEGs decode at a fraction, other images
        shrink in their own mode before the conversion)."""
        if self._closed:
            raise ValueError(f"document {self.name} is closed")
        if not isinstance(index, int) or not 0 <= index < self.page_count:
            raise IndexError(f"page index {index} out of range: {self.name} has {self.page_count} page(s)")
        if self._pdf is not None:
            return self._render_pdf_page(index, longest)
        return self._decode_raster_page(index, longest)

    def _decode_raster_page(self, index: int, longest: int | None = None) -> Image.Image:
        number = index + 1
        # A fresh header parse per page: cheap, keeps no decoded frame alive between pages, and lets two threads
        # read different pages of one document.
        image = _open_raster(self._data, self.kind, self.name, page_number=number)
        try:
            if index:
                image.seek(index)
            reason = _pixel_reason(*image.size)  # each TIFF frame has its own size
            if reason:
                raise InputError(self.name, Text("page_reason", n=number, reason=reason))
            if longest:
                image.draft("RGB", (longest, longest))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                image.load()
                small = image.convert("L") if image.mode == "1" else image  # "1" cannot be resampled
                try:
                    factor = max(1, max(small.size) // longest)
                    small = small.reduce(factor) if factor > 1 else small
                    small.thumbnail((longest, longest))
                except ValueError:  # a mode Pillow cannot resample (16-bit): convert first, then shrink
                    small = to_rgb(small)
                    small.thumbnail((longest, longest))
                return to_rgb(ImageOps.exif_transpose(small))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except InputError:
            raise
        except MemoryError:
            raise
        except Exception as error:  # a decoder fed a damaged file can raise almost anything
            label = SUPPORTED[self.kind]
            reason = Text("corrupt_file", label=label, error=str(error))
            raise InputError(self.name, Text("page_reason", n=number, reason=reason)) from error
        finally:
            image.close()

    def _render_pdf_page(self, index: int, longest: int | None = None) -> Image.Image:
        number = index + 1
        with _PDFIUM_LOCK:
            if self._pdf is None:  # closed by another thread since page() checked
                raise ValueError(f"document {self.name} is closed")
            try:
                page = self._pdf[index]
            except pdfium.PdfiumError as error:
                reason = Text("pdf_page_unreadable", error=str(error))
                raise InputError(self.name, Text("page_reason", n=number, reason=reason)) from error
            try:
                width_pt, height_pt = page.get_size()
                if width_pt < 1 or height_pt < 1:
                    raise InputError(self.name, f"page {number}: PDF page has no area ({width_pt}x{height_pt} pt)")
                scale = pdf_render_scale(width_pt, height_pt)
                if longest:
                    scale = min(scale, longest / max(width_pt, height_pt))
                bitmap = page.render(scale=scale)  # white background, forms drawn
                try:
                    image = bitmap.to_pil()  # BGR bitmap -> a copied RGB image, independent of the bitmap
                finally:
                    bitmap.close()
            except InputError:
                raise
            except MemoryError:
                raise
            except Exception as error:
                reason = Text("pdf_page_unrenderable", error=str(error))
                raise InputError(self.name, Text("page_reason", n=number, reason=reason)) from error
            finally:
                page.close()
        return to_rgb(image)

    # -- lifetime ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pdf is not None:
            with _PDFIUM_LOCK:
                self._pdf.close()
            self._pdf = None
        self._data = b""

    def __enter__(self) -> Document:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Document {self.name!r} {self.kind}, {self.page_count} page(s), {self.size_bytes} bytes>"


def _count_frames(image: ImageFile.ImageFile, name: str) -> int:
    try:
        return image.n_frames  # walks the TIFF's page directory chain, decodes nothing
    except Exception as error:
        raise InputError(name, f"corrupt or truncated TIFF: cannot count the pages ({error})") from None


def _check_page_count(page_count: int, kind: str, name: str) -> None:
    if page_count > MAX_PAGES:
        raise InputError(name, Text("too_many_pages", kind=SUPPORTED[kind], pages=page_count, limit=MAX_PAGES))


def _open_raster(data: bytes, kind: str, name: str, page_number: int | None) -> ImageFile.ImageFile:
    """Parse the image header only (no pixels). page_number only changes how errors are worded."""
    where = f"page {page_number}: " if page_number else ""
    label = SUPPORTED[kind]
    if kind == "webp":
        # libwebp allocates the whole canvas while Pillow parses the header, so check the size before that.
        size = _webp_size(data[:64])
        reason = size and _pixel_reason(*size)
        if reason:
            raise InputError(name, Text("page_reason", n=page_number, reason=reason) if page_number else reason)
    try:
        return _PIL_CLASSES[kind](io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InputError(name, f"{where}image is too large to decode safely ({error})") from None
    except MemoryError:
        raise
    except Exception as error:
        reason = Text("corrupt_header", label=label, error=str(error) or type(error).__name__)
        raise InputError(name, Text("page_reason", n=page_number, reason=reason) if page_number else reason) from None


def _open_pdf(data: bytes, name: str) -> tuple[pdfium.PdfDocument, int]:
    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as error:
            code = getattr(error, "err_code", None)
            if code == pdfium.raw.FPDF_ERR_PASSWORD:
                reason = Text("pdf_encrypted")
            elif code == pdfium.raw.FPDF_ERR_SECURITY:
                reason = Text("pdf_encryption_unsupported")
            else:
                # PDFium also ends up here for a PDF with zero pages.
                reason = Text("pdf_corrupt")
            raise InputError(name, reason) from None
        page_count = len(pdf)
        if page_count > MAX_PAGES:
            pdf.close()
    _check_page_count(page_count, "pdf", name)
    return pdf, page_count
