"""The OCR tasks: one enum, the names the reference articles use, and HunyuanOCR's fixed prompts.

The model is sensitive to its prompts, so they are the official wordings (Tencent-Hunyuan/HunyuanOCR README and
inference/utils/tasks.py), never free text from the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from appliance.messages import Text


class Task(str, enum.Enum):
    SPOTTING = "spotting"  # text lines with boxes
    TEXT = "text"  # plain text
    DOC = "doc"  # Markdown, tables as HTML, formulas as LaTeX
    TABLE = "table"
    FORMULA = "formula"
    CHART = "chart"
    EXTRACT = "extract"  # caller-given field names -> JSON object
    SUBTITLES = "subtitles"
    TRANSLATE = "translate"  # to a target language

    def __str__(self) -> str:
        return self.value


# The task when a caller names none (API, CLI, the UI's preselect on a host without an image config): spotting gives
# the text and its line boxes on every engine, and the searchable PDF needs those boxes. The image's configured
# default_task (appliance.runtime) replaces it in the UI and the API.
DEFAULT_TASK = Task.SPOTTING


# Names used by the reference articles and other clients, mapped onto ours.
ALIASES = {
    "plain_ocr": Task.TEXT,
    "ocr": Task.TEXT,
    "doc_parser": Task.DOC,
    "doc_parse": Task.DOC,
    "translation": Task.TRANSLATE,
    "spotting_hunyuan": Task.SPOTTING,
    "chart_parse": Task.CHART,
    "ie": Task.EXTRACT,
}

# Target languages for translation: code -> (English name, the name the Chinese prompt uses).
LANGUAGES = {
    "en": ("English", "英文"),
    "zh": ("Chinese", "中文"),
    "ja": ("Japanese", "日文"),
    "ko": ("Korean", "韩文"),
    "fr": ("French", "法文"),
    "de": ("German", "德文"),
    "es": ("Spanish", "西班牙文"),
    "ru": ("Russian", "俄文"),
    "ar": ("Arabic", "阿拉伯文"),
    "pt": ("Portuguese", "葡萄牙文"),
    "it": ("Italian", "意大利文"),
    "vi": ("Vietnamese", "越南文"),
    "th": ("Thai", "泰文"),
    "ms": ("Malay", "马来文"),
}

PROMPTS = {
    Task.SPOTTING: "检测并识别图片中的文字，将文本坐标格式化输出。",
    Task.TEXT: "提取图中的文字。",
    Task.DOC: "提取文档图片中正文的所有信息用markdown格式表示，其中页眉、页脚部分忽略，表格用html格式表达，"
    "文档中公式用latex格式表示，按照阅读顺序组织进行解析。",
    Task.TABLE: "把图中的表格解析为HTML。",
    Task.FORMULA: "识别图片中的公式，用LaTeX格式表示。",
    Task.CHART: "解析图中的图表，对于流程图使用Mermaid格式表示，其他图表使用Markdown格式表示。",
    Task.SUBTITLES: "提取图片中的字幕。",
}
# Field sets for common documents: the UI's preset buttons and the scan folder's `inbox/extract-<name>/`. Chinese
# documents get the labels printed on them; the model answers best when asked for what it sees on the page.
EXTRACT_PRESETS = {
    "id": ("姓名", "性别", "民族", "出生", "住址", "公民身份号码"),
    "invoice": ("发票代码", "发票号码", "开票日期", "购买方名称", "销售方名称", "金额", "税额", "价税合计"),
    "receipt": ("merchant", "date", "items", "total", "payment method"),
}

_TRANSLATE_PROMPT = (
    "先提取文字，再将文字内容翻译为{lang}。若是文档，则其中页眉、页脚忽略。公式用latex格式表示，表格用html格式表示。"
)


def parse_task(name: str | Task) -> Task:
    """Our task names, their aliases, any case; a clear error listing the choices otherwise."""
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower().replace("-", "_")
    try:
        return Task(key)
    except ValueError:
        pass
    if key in ALIASES:
        return ALIASES[key]
    choices = ", ".join([t.value for t in Task] + sorted(ALIASES))
    raise ValueError(Text("unknown_task", name=str(name), choices=choices))


@dataclass(frozen=True)
class Request:
    """What the caller asks of one document: the task and its options."""

    task: Task
    fields: tuple[str, ...] = field(default_factory=tuple)  # for EXTRACT
    target_lang: str = "en"  # for TRANSLATE

    @classmethod
    def make(cls, task: str | Task, fields=None, target_lang: str | None = None) -> Request:
        """Validate and normalise: parse the task, split 'a,b' field lists, check the language code."""
        if not isinstance(task, str | Task):
            raise ValueError(f"the task must be a name such as 'text', not {type(task).__name__}")
        task = parse_task(task)
        if isinstance(fields, str):
            fields = fields.split(",")
        if fields is not None and not (isinstance(fields, list | tuple) and all(isinstance(f, str) for f in fields)):
            raise ValueError("fields must be names: a list of strings or one comma-separated string")
        if target_lang is not None and not isinstance(target_lang, str):
            raise ValueError("target_lang must be a language code such as 'en'")
        fields = tuple(f.strip() for f in (fields or ()) if f and f.strip())
        if task is Task.EXTRACT and not fields:
            raise ValueError(Text("extract_needs_fields"))
        lang = (target_lang or "en").strip().lower()
        if lang not in LANGUAGES:
            raise ValueError(Text("unknown_target_lang", lang=target_lang, choices=", ".join(LANGUAGES)))
        return cls(task=task, fields=fields if task is Task.EXTRACT else (), target_lang=lang)

    def options(self) -> dict:
        """The options that matter for this task (part of the result and of cache keys)."""
        if self.task is Task.EXTRACT:
            return {"fields": list(self.fields)}
        if self.task is Task.TRANSLATE:
            return {"target_lang": self.target_lang}
        return {}

    def prompt(self) -> str:
        """HunyuanOCR's fixed prompt for this request."""
        if self.task is Task.EXTRACT:
            if len(self.fields) == 1:
                return f"输出 {self.fields[0]} 的值。"
            keys = ",".join(f"'{f}'" for f in self.fields)
            return f"提取图片中的: [{keys}] 的字段内容，并按照JSON格式返回。"
        if self.task is Task.TRANSLATE:
            return _TRANSLATE_PROMPT.format(lang=LANGUAGES[self.target_lang][1])
        return PROMPTS[self.task]
