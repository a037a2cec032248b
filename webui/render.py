"""What the pages need to show a result: download names, page previews, and safe Markdown HTML.

The downloadable forms themselves (txt, md, json, searchable PDF) come from `appliance.export`, the one exporter."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import html
import re
import secrets
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

from markdown_it import MarkdownIt
from PIL import Image

from appliance.ocr.images import Document

PREVIEW_PIXELS = 1600  # longest side of a page preview; boxes are drawn in the page's own pixels and scaled along


def attachment(source_name: str, fmt: str) -> str:
    """Content-Disposition for `<stem>.<fmt>`; RFC 5987 form so Chinese file names survive."""
    stem = Path(source_name).stem or "result"
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "result"
    return f"attachment; filename=\"{ascii_name}.{fmt}\"; filename*=UTF-8''{quote(stem)}.{fmt}"


# Decoding pages for previews and PDF exports is what costs the web app memory (not the OCR: that is the worker's,
# one page at a time). Two at once at most; other requests wait their turn. After each, the C heap's free pages go
# back to the system: glibc keeps them otherwise, and one 100 MP page would leave the app GBs larger for good.
_HEAVY = threading.BoundedSemaphore(2)
try:
    _libc = ctypes.CDLL("libc.so.6")  # glibc (Debian); by name: find_library would run ldconfig at import
except OSError:
    _libc = None


@contextlib.contextmanager
def heavy_work():
    with _HEAVY:
        try:
            yield
        finally:
            gc.collect()
            if _libc is not None and hasattr(_libc, "malloc_trim"):
                _libc.malloc_trim(0)


def page_preview(path: Path, name: str, number: int) -> Image.Image | None:
    """Page `number` (1-based) of the stored input, RGB, longest side at most PREVIEW_PIXELS; None if no such page."""
    with heavy_work(), Document.open(path, name=name) as document:
        if not 1 <= number <= document.page_count:
            return None
        return document.page(number - 1, longest=PREVIEW_PIXELS)


# ---- Markdown -> HTML ---------------------------------------------------------------------------------------------
# The model writes Markdown with HTML tables in it, so raw HTML must pass; but the text comes from a document the
# user did not write, so only table and text markup survives (CSP already stops scripts; this stops the rest).

_md = MarkdownIt("commonmark", {"html": True}).enable("table")
_ALLOWED = {
    "p",
    "br",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "strong",
    "em",
    "b",
    "i",
    "u",
    "s",
    "sub",
    "sup",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "th",
    "td",
    "caption",
    "span",
    "div",
}
_ALLOWED_ATTRS = {"colspan", "rowspan", "align"}
_DROP_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "svg", "math"}


class _Sanitizer(HTMLParser):
    def __init__(self, text_filter=lambda escaped: escaped):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.text_filter = text_filter  # gets the escaped text; puts the formulas back (see markdown_html)

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_WITH_CONTENT:
            self.skipping += 1
        elif not self.skipping and tag in _ALLOWED:
            kept = "".join(f' {k}="{html.escape(v or "")}"' for k, v in attrs if k in _ALLOWED_ATTRS)
            self.out.append(f"<{tag}{kept}>")

    def handle_endtag(self, tag):
        if tag in _DROP_WITH_CONTENT:
            self.skipping = max(0, self.skipping - 1)
        elif not self.skipping and tag in _ALLOWED and tag not in ("br", "hr"):
            self.out.append(f"</{tag}>")

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(self.text_filter(html.escape(data, quote=False)))


# ---- Formulas ------------------------------------------------------------------------------------------------------
# The model writes LaTeX in its Markdown: $...$, $$...$$, \(...\), \[...\]. Markdown would eat the backslashes,
# underscores and asterisks in it, so each formula is swapped for a placeholder before Markdown runs (in HTML tables
# too) and put back after sanitizing as <span class="math" data-tex="TeX">source as written</span>. The result page's
# script draws it with the vendored KaTeX (static/vendor/katex); LaTeX that KaTeX cannot read shows its source.

_MATH = re.compile(
    r"(?P<keep>^ {0,3}(?P<fence>`{3,}|~{3,}).*?(?:^ {0,3}(?P=fence)|\Z)"  # fenced code: left as it is
    r"|(?P<ticks>`+)(?!`).*?(?<!`)(?P=ticks)(?!`)"  # a code span
    r"|\\\$)"  # an escaped dollar
    # A formula holds no opening delimiter of its own kind: an unclosed one then costs one scan, not one per opener.
    r"|\$\$(?P<display>.+?)\$\$|\\\[(?P<display2>(?:(?!\\\[).)+?)\\\]|\\\((?P<inline>(?:(?!\\\().)+?)\\\)"
    # $x$ as pandoc reads it: no space just inside the dollars, no digit after, one line: "$5 and $6" is money.
    r"|\$(?P<inline2>[^\s$](?:[^$\n]*?[^\s$\\])?)\$(?!\d)",
    re.DOTALL | re.MULTILINE,
)


def _formula_html(source: str, tex: str, display: bool) -> str:
    kind = "math display" if display else "math"
    return f'<span class="{kind}" data-tex="{html.escape(tex)}">{html.escape(source, quote=False)}</span>'


def markdown_html(text: str | None) -> str:
    if not text:
        return ""
    formulas: list[str] = []
    mark = "m" + secrets.token_hex(4)  # letters and digits: Markdown leaves it alone; random: no document has it

    def swap(m: re.Match) -> str:
        if m["keep"] is not None:
            return m[0]
        display = m["display"] is not None or m["display2"] is not None
        tex = next(g for g in (m["display"], m["display2"], m["inline"], m["inline2"]) if g is not None)
        formulas.append(_formula_html(m[0], tex.strip(), display))
        return f"{mark}x{len(formulas) - 1}x"

    source = _MATH.sub(swap, text)
    placeholder = re.compile(mark + r"x(\d+)x")
    sanitizer = _Sanitizer(lambda escaped: placeholder.sub(lambda m: formulas[int(m[1])], escaped))
    sanitizer.feed(_md.render(source))
    sanitizer.close()
    return "".join(sanitizer.out)
