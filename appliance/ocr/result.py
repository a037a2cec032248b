"""The one result model every engine fills and every consumer (CLI, API, scan folder, exports) reads.

JSON contract (documented in README.md, "Result JSON"); `SCHEMA_VERSION` changes only when a field changes meaning
or disappears. Adding a field is not a version change, so readers must ignore fields they do not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

SCHEMA = "appliance.ocr.result"
SCHEMA_VERSION = 1


@dataclass
class Block:
    """One recognised text line (spotting) or region: box is [x1, y1, x2, y2] in pixels of the original page."""

    text: str
    box: list[int] | None = None
    confidence: float | None = None  # 0..1, when the engine reports one


@dataclass
class Page:
    """What one page gave. `text` is always the page's plain-text reading, whatever the task."""

    text: str = ""
    blocks: list[Block] = field(default_factory=list)
    markdown: str | None = None  # doc, table, formula, chart
    fields: dict | None = None  # extract
    translation: str | None = None  # translate
    raw: str | None = None  # the model's answer before post-processing (HunyuanOCR engines)
    warnings: list[str] = field(default_factory=list)  # e.g. "repetition cut"
    number: int = 0  # 1-based, set by the pipeline
    width: int = 0  # pixels of the original (EXIF-rotated) page
    height: int = 0
    seconds: float = 0.0


@dataclass
class EngineInfo:
    name: str  # cpu | hunyuan-transformers | hunyuan-vllm
    model: str  # model id, e.g. tencent/HunyuanOCR or rapidocr/PP-OCRv6
    revision: str = ""  # weight revision or package version
    device: str = "cpu"


@dataclass
class OcrResult:
    source: str  # file name as given by the caller
    task: str
    options: dict
    engine: EngineInfo
    pages: list[Page]
    timings: dict = field(default_factory=dict)  # seconds: load (engine start, when paid here), ocr, total

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages if p.text)

    @property
    def markdown(self) -> str | None:
        parts = [p.markdown for p in self.pages if p.markdown]
        return "\n\n".join(parts) if parts else None

    @property
    def fields(self) -> dict | None:
        """Fields merged over pages: the first page that has a non-empty value for a key wins."""
        merged: dict = {}
        found = False
        for page in self.pages:
            if page.fields is None:
                continue
            found = True
            for key, value in page.fields.items():
                if merged.get(key) in (None, "", [], {}):
                    merged[key] = value
        return merged if found else None

    @property
    def translation(self) -> str | None:
        parts = [p.translation for p in self.pages if p.translation]
        return "\n\n".join(parts) if parts else None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "task": self.task,
            "options": self.options,
            "engine": asdict(self.engine),
            "text": self.text,
            "markdown": self.markdown,
            "fields": self.fields,
            "translation": self.translation,
            "pages": [asdict(p) for p in self.pages],
            "timings": self.timings,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> OcrResult:
        if data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"not an OCR result of schema {SCHEMA} v{SCHEMA_VERSION}: "
                f"{data.get('schema')} v{data.get('schema_version')}"
            )
        known = Page.__dataclass_fields__
        pages = []
        for p in data["pages"]:
            p = {k: v for k, v in p.items() if k in known}
            p["blocks"] = [Block(**b) for b in p.get("blocks", [])]
            pages.append(Page(**p))
        return cls(
            source=data["source"],
            task=data["task"],
            options=data.get("options", {}),
            engine=EngineInfo(**data["engine"]),
            pages=pages,
            timings=data.get("timings", {}),
        )
