"""What the core says to people (errors, failed jobs, the engine choice, the scan folder), with an id and values, so
a UI can say it in its own language.

A `Text` is the English sentence (what logs, the CLI and the API's `detail` show) that remembers its id and values;
a value may itself be a `Text` (a file's name + the reason it was refused). `say(text, lang)` renders it in
English or Chinese; plain strings pass as they are. `to_dict`/`from_dict` store one beside its English words (a
job's `error_code` + `error_params`), and webui.i18n adds this table to the UI's catalogue.
"""

from __future__ import annotations

import re

LANGS = ("en", "zh")

MESSAGES = {
    # a file that cannot be read (appliance.ocr.images, webui.errors)
    "input": ("{name}: {reason}", "{name}：{reason}"),
    "page_reason": ("page {n}: {reason}", "第 {n} 页：{reason}"),
    "file_empty": ("empty file (0 bytes)", "空文件（0 字节）"),
    "upload_empty": ("{name}: the file is empty", "{name}：文件是空的"),
    "file_too_big": ("file is {size} MB; the limit is {limit} MB", "文件大小为 {size} MB，上限为 {limit} MB"),
    "too_many_pages": (
        "{kind} has {pages} pages; the limit is {limit}",
        "该 {kind} 文件有 {pages} 页，上限为 {limit} 页",
    ),
    "job_page_limit": (
        "{pages} pages; one job may have at most {limit} pages (so that one file cannot keep everyone else waiting)",
        "共 {pages} 页；每个任务最多 {limit} 页（以免一个文件让其他人长时间等待）",
    ),
    "too_many_pixels": (
        "image is {width}x{height} pixels ({mp} MP); the limit is {limit} MP",
        "图片为 {width}x{height} 像素（{mp} 百万像素），上限为 {limit} 百万像素",
    ),
    "not_image": (
        "not an image or PDF (looks like: {looks_like}); supported formats: {formats}",
        "不是图片或 PDF（看起来是：{looks_like}）；支持的格式：{formats}",
    ),
    "unsupported_image": (
        "unsupported image format ({looks_like}); convert it to PNG or JPEG; supported formats: {formats}",
        "不支持的图片格式（{looks_like}）；请转换为 PNG 或 JPEG；支持的格式：{formats}",
    ),
    "not_supported_type": (
        "{name} is not an image or PDF ({formats}); it looks like: {looks_like}. Save or convert it as one of these",
        "{name} 不是图片或 PDF（{formats}），看起来是：{looks_like}。请另存或转换为其中一种格式",
    ),
    "pdf_encrypted": (
        "PDF is encrypted/password-protected; save an unprotected copy and try again",
        "PDF 已加密或设有密码；请另存一份未加密的副本后再试",
    ),
    "pdf_encryption_unsupported": (
        "PDF uses an unsupported encryption scheme; save an unprotected copy and try again",
        "PDF 使用了不支持的加密方式；请另存一份未加密的副本后再试",
    ),
    "pdf_corrupt": ("corrupt or truncated PDF, or a PDF with no pages", "PDF 文件损坏、不完整或没有页面"),
    "corrupt_file": ("corrupt or truncated {label}: {error}", "{label} 文件损坏或不完整：{error}"),
    "corrupt_header": (
        "corrupt or truncated {label}: cannot read the header ({error})",
        "{label} 文件损坏或不完整：无法读取文件头（{error}）",
    ),
    "pdf_page_unreadable": ("cannot read this PDF page ({error})", "无法读取此 PDF 页面（{error}）"),
    "pdf_page_unrenderable": ("cannot render this PDF page ({error})", "无法渲染此 PDF 页面（{error}）"),
    # the task and its options (appliance.ocr.tasks), a file on the USB stick (webui.usb)
    "unknown_task": ("unknown task '{name}'; choose one of: {choices}", "未知的任务“{name}”；可选：{choices}"),
    "extract_needs_fields": (
        "task 'extract' needs field names, e.g. --fields 'name,date,total'",
        "字段提取任务需要字段名，例如 --fields 'name,date,total'",
    ),
    "unknown_target_lang": (
        "unknown target language '{lang}'; choose one of: {choices}",
        "未知的目标语言“{lang}”；可选：{choices}",
    ),
    "usb_gone": ("'{path}' is no longer there; was the USB stick removed?", "“{path}”已不存在；U 盘是否已拔出？"),
    "usb_not_a_file": ("'{path}' is not a file", "“{path}”不是文件"),
    # what to do about an error (webui.errors adds it after the error's own words)
    "with_advice": ("{message}; {advice}", "{message}；{advice}"),
    "advice_damaged": (
        "check the file opens on another computer, or scan it again",
        "请确认该文件能在其他电脑上打开，或重新扫描",
    ),
    "advice_limit": (
        "scan or save it at a lower resolution (300 dpi is plenty), or split it",
        "请以较低分辨率扫描或保存（300 dpi 足够），或将其拆分",
    ),
    "advice_engine": ("see the status page or GET /health", "请查看“系统状态”页面或 GET /health"),
    "upload_too_large": (
        "the upload is over the size limit ({limit}); send a smaller file or fewer pages",
        "上传的文件超过大小上限（{limit}）；请发送较小的文件或较少的页数",
    ),
    "too_many_form_parts": (
        "the form has too many fields; send the file with a few fields",
        "表单字段太多；请只带少量字段发送文件",
    ),
    "queue_full": (
        "the OCR queue is full ({limit} jobs waiting); try again in about {seconds} s",
        "识别队列已满（{limit} 个任务在等待）；请约 {seconds} 秒后再试",
    ),
    "sync_busy": (
        "{slots} synchronous requests are already waiting for their results; try again in about {seconds} s, or "
        "send the file to POST /jobs and poll it",
        "已有 {slots} 个同步请求在等待结果；请约 {seconds} 秒后再试，或改用 POST /jobs 提交并轮询",
    ),
    "internal_error": ("{kind}: {error}; the log has the details", "{kind}：{error}；详情见日志"),
    # the engine (appliance.ocr.errors, appliance.jobs)
    "task_not_supported": (
        "task '{task}' needs the HunyuanOCR model, not running here; the '{engine}' engine only does: {tasks}",
        "任务“{task}”需要 HunyuanOCR 模型，但此处未运行该模型；“{engine}”引擎只能完成：{tasks}",
    ),
    "engine_unavailable": ("engine '{engine}' is not available: {reason}", "“{engine}”引擎不可用：{reason}"),
    "engine_not_started": ("the OCR engine did not start: {error}", "识别引擎未能启动：{error}"),
    "engine_failed_to_start": ("it failed to start", "它未能启动"),
    "engine_lost_requeued": (
        "the OCR engine stopped answering ({why}); queued again",
        "识别引擎没有响应（{why}）；已重新排队",
    ),
    "engine_lost_gave_up": (
        "the OCR engine stopped answering on this file {n} times; not retried again ({why})",
        "处理此文件时识别引擎已 {n} 次没有响应；不再重试（{why}）",
    ),
    # a job's end (appliance.jobs)
    "job_crashed": (
        "this file stopped the OCR service {n} times; it was set aside",
        "此文件已 {n} 次导致 OCR 服务中断，已被搁置",
    ),
    "job_interrupted": ("interrupted by a restart; queued again", "因重新启动而中断；已重新排队"),
    "job_cancelled_queued": ("cancelled before it started", "在开始前已取消"),
    "job_cancelled_running": ("cancelled while running", "在识别过程中已取消"),
    "job_cancelled_after": (
        "cancelled after {done} of {total} pages; the pages read are kept",
        "在第 {done} 页（共 {total} 页）后取消；已识别的页面已保留",
    ),
    "job_not_found": ("no job '{id}' (it may have been deleted)", "没有任务“{id}”（可能已被删除）"),
    "job_internal": ("internal error: {kind}: {error}", "内部错误：{kind}：{error}"),
    "job_took_turn": (
        "other jobs were waiting: this one let them take a turn after page {done} and goes on from page {next}",
        "有其他任务在等待：本任务在第 {done} 页后让它们先处理，之后从第 {next} 页继续",
    ),
    # which engine runs and why (appliance.ocr.engines.select, the status page's "Why" line)
    "clauses": ("{first}; {second}", "{first}；{second}"),
    "gpu_no_driver": ("no NVIDIA kernel driver loaded ({path} missing)", "未加载 NVIDIA 内核驱动（缺少 {path}）"),
    "gpu_none_reported": ("NVIDIA driver loaded but it reports no GPU", "NVIDIA 驱动已加载，但它没有报告任何 GPU"),
    "gpu_found": ("NVIDIA GPU found: {name}", "找到 NVIDIA GPU：{name}"),
    "choice_explicit": ("chosen explicitly", "由启动参数指定"),
    "choice_no_model": (
        "{why}, but no HunyuanOCR model directory was given (--model DIR)",
        "{why}，但未指定 HunyuanOCR 模型目录（--model DIR）",
    ),
    "choice_vllm_answers": ("{why}; vLLM server answers at {url}", "{why}；vLLM 服务在 {url} 响应"),
    "choice_vllm_starting": ("{why}; the model server ({unit}) is starting", "{why}；模型服务（{unit}）正在启动"),
    "choice_vllm_not_running": (
        "{why}, but the model server ({unit}) is not running (journalctl -u {unit})",
        "{why}，但模型服务（{unit}）未运行（journalctl -u {unit}）",
    ),
    "choice_transformers": (
        "{why}; no vLLM server running, using transformers in-process",
        "{why}；没有运行中的 vLLM 服务，改为在进程内使用 transformers",
    ),
    "choice_cpu": ("{why}; the CPU engine does spotting and plain text", "{why}；由 CPU 引擎完成文字定位和纯文本"),
    "llama_tasks": (
        "every task on the CPU, rapidocr keeping spotting and plain text",
        "所有任务都在 CPU 上运行，文字定位和纯文本仍由 rapidocr 完成",
    ),
    "choice_llama_answers": ("{why}; llama.cpp answers at {url}: {tasks}", "{why}；llama.cpp 在 {url} 响应：{tasks}"),
    "choice_llama_starting": (
        "{why}; llama.cpp ({unit}) is starting: {tasks}",
        "{why}；llama.cpp（{unit}）正在启动：{tasks}",
    ),
    "choice_llama_not_running": (
        "{why}; the llama.cpp server for {file} is not running (journalctl -u {unit} says why); the CPU engine does "
        "spotting and plain text",
        "{why}；{file} 的 llama.cpp 服务未运行（原因见 journalctl -u {unit}）；由 CPU 引擎完成文字定位和纯文本",
    ),
    "ram_short": (
        "HunyuanOCR on the CPU needs about {need} GB of free memory and this PC has {free} GB free: close other "
        "programs or add memory; the fast CPU engine still does plain text and line boxes",
        "在 CPU 上运行 HunyuanOCR 约需 {need} GB 可用内存，而这台电脑只有 {free} GB 可用：请关闭其他程序或增加内存；"
        "快速 CPU 引擎仍可完成纯文本和文字行定位",
    ),
    # the scan folder (appliance.scan)
    "scan_settling": ("waiting until the file stops changing", "等待文件写入完成"),
    "scan_not_open_yet": ("waiting: does not open yet ({reason})", "等待中：暂时还打不开（{reason}）"),
    "scan_gave_up": ("{reason} (unchanged for {seconds} s)", "{reason}（已 {seconds} 秒没有变化）"),
    "scan_empty_waiting": (
        "empty so far (0 bytes): waiting for its writer (scanners create the file first and fill it later)",
        "目前是空文件（0 字节）：等待写入（扫描仪会先创建文件，稍后再写入内容）",
    ),
    "scan_still_open": (
        "still open for writing by another program (a scanner or a PC): waiting until it is closed",
        "仍被其他程序（扫描仪或电脑）以写入方式打开：等待其关闭",
    ),
    "scan_refused_link": (
        "refused: a symbolic link; copy the file itself into the inbox",
        "已拒绝：这是符号链接；请把文件本身复制到收件箱",
    ),
    "scan_refused_special": (
        "refused: not a regular file (device, FIFO or socket); copy the file itself into the inbox",
        "已拒绝：不是普通文件（设备、管道或套接字）；请把文件本身复制到收件箱",
    ),
    "scan_parked": (
        "processing stopped the watcher {n} times (crash or power loss); parked here rather than tried again",
        "处理此文件时监视程序已 {n} 次中断（崩溃或断电）；已放在这里，不再重试",
    ),
    "scan_disappeared_inbox": ("disappeared from the inbox", "已从收件箱中消失"),
    "scan_disappeared_stick": ("disappeared before it was copied off", "在复制出来之前已消失"),
    "scan_copy_failed": ("could not be copied off: {error}", "无法复制出来：{error}"),
    "scan_stick_pulled": (
        "USB stick {stick} was removed before its results were written; they are in {folder}",
        "U 盘 {stick} 在结果写入前被拔出；结果在 {folder}",
    ),
    # scanners (appliance.scanner): what stopped a scan, said so that a person can act on it
    "scanner_no_sane": ("scanning is not available: SANE's scanimage is missing", "无法扫描：缺少 SANE 的 scanimage"),
    "scanner_timeout": ("the scanner did not answer within {seconds} s", "扫描仪在 {seconds} 秒内没有响应"),
    "scanner_cancelled": ("scan cancelled; the pages scanned before it are kept", "扫描已取消；之前扫好的页面已保留"),
    "scanner_busy": (
        "the scanner is busy (another program is using it); try again in a moment",
        "扫描仪正忙（另一个程序正在使用）；请稍后再试",
    ),
    "scanner_busy_here": ("a scan is running; wait for it or cancel it", "正在扫描；请等待完成或取消"),
    "scanner_busy_other": (
        "this scanner is scanning for someone else; try again when it has finished",
        "该扫描仪正在为他人扫描；请在完成后再试",
    ),
    "scanner_jammed": (
        "paper jam in the feeder: clear it, put back the pages not yet scanned, and scan again",
        "进纸器卡纸：请清除卡纸，放回尚未扫描的页面，然后重新扫描",
    ),
    "scanner_no_paper": (
        "no paper in the feeder: load the pages (or choose the flatbed) and scan again",
        "进纸器中没有纸：请放入纸张（或选择平板）后重新扫描",
    ),
    "scanner_cover_open": (
        "the scanner's cover is open: close it and scan again",
        "扫描仪盖板打开：请合上后重新扫描",
    ),
    "scanner_io_error": (
        "the scanner stopped answering (cable pulled or switched off?): check it and scan again",
        "扫描仪停止响应（数据线被拔出或已关机？）：请检查后重新扫描",
    ),
    "scanner_no_memory": (
        "the scanner ran out of memory: choose a lower resolution",
        "扫描仪内存不足：请选择较低的分辨率",
    ),
    "scanner_denied": (
        "access to the scanner was refused (it may need a password or be locked on its panel)",
        "扫描仪拒绝访问（可能需要密码，或在面板上被锁定）",
    ),
    "scanner_gone": (
        "the scanner {device} is not there any more (unplugged or switched off?): {detail}",
        "扫描仪 {device} 已不在（已拔出或关机？）：{detail}",
    ),
    "scanner_failed": (
        "the scan failed (SANE status {status}): {detail}",
        "扫描失败（SANE 状态 {status}）：{detail}",
    ),
    "scanner_stalled": (
        "the scanner showed no progress for {seconds} s and was stopped; the pages before it are kept",
        "扫描仪 {seconds} 秒没有进展，已停止；之前的页面已保留",
    ),
    "scanner_unknown": (
        "no scanner {device} here: look for scanners again",
        "这里没有扫描仪 {device}：请重新查找扫描仪",
    ),
    "scan_full": (
        "this scan has {limit} pages, the most one job may have",
        "本次扫描已有 {limit} 页，已达单个任务上限",
    ),
    "scan_no_pages": ("nothing scanned yet", "还没有扫描任何页面"),
    "scan_not_found": ("no scan {id} (finished or deleted)", "没有扫描 {id}（已完成或已删除）"),
    "scan_page_not_found": ("no page {n} in this scan", "本次扫描中没有第 {n} 页"),
    # persistent storage on the boot stick (appliance.persistence)
    "persist_possible": (
        "{size} MiB free on {disk} after the appliance's partitions: persistent storage can be made there",
        "{disk} 上本设备分区之后有 {size} MiB 可用空间：可以在那里创建持久存储",
    ),
    "persist_exists": (
        "persistent storage is on this stick ({device})",
        "此 U 盘上已有持久存储（{device}）",
    ),
    "persist_incomplete": (
        "persistent storage was started on {device} but not finished (power cut or stick pulled?): it can be "
        "finished now",
        "{device} 上的持久存储已开始创建但未完成（断电或 U 盘被拔出？）：现在可以完成它",
    ),
    "persist_not_live": (
        "not running from the appliance's boot medium",
        "当前不是从本设备的启动介质运行",
    ),
    "persist_not_disk": (
        "the boot medium is not on a disk here (started with “copy to RAM”, or over the network)",
        "启动介质不在本机磁盘上（使用了“复制到内存”启动，或通过网络启动）",
    ),
    "persist_iso_file": (
        "started from an ISO file on a disk (Ventoy or a GRUB loopback entry): persistent storage cannot be added "
        "from here (Ventoy has its own persistence plugin)",
        "从磁盘上的 ISO 文件启动（Ventoy 或 GRUB loopback）：无法在此添加持久存储（Ventoy 有自带的持久化插件）",
    ),
    "persist_whole_disk": (
        "the boot medium is a whole disk (a CD or DVD), not a partition on a stick",
        "启动介质是整个磁盘（光盘），而不是 U 盘上的分区",
    ),
    "persist_unreadable": (
        "cannot read the partition table of {disk}: {error}",
        "无法读取 {disk} 的分区表：{error}",
    ),
    "persist_read_only": (
        "the stick {disk} is read-only (a write-protect switch?): nothing can be written to it",
        "U 盘 {disk} 是只读的（写保护开关？）：无法写入",
    ),
    "persist_table": (
        "the partition table of {disk} is {label}, not the MBR this appliance's image has: nothing is changed",
        "{disk} 的分区表是 {label}，不是本设备镜像使用的 MBR：不做任何更改",
    ),
    "persist_table_full": (
        "the partition table of {disk} has no room for another partition: nothing is changed",
        "{disk} 的分区表已无法再添加分区：不做任何更改",
    ),
    "persist_no_space": (
        "no free space on {disk} after the appliance's partitions (written by copying files, e.g. Rufus in ISO mode "
        "or UltraISO?): write the ISO in DD mode, or use the .img",
        "{disk} 上本设备分区之后没有可用空间（是否用复制文件的方式写入，例如 Rufus 的 ISO 模式或 UltraISO？）："
        "请以 DD 模式写入 ISO，或使用 .img 镜像",
    ),
    "persist_too_small": (
        "only {free} MiB free after the appliance's partitions; persistent storage needs at least {minimum} MiB",
        "本设备分区之后只有 {free} MiB 可用空间；持久存储至少需要 {minimum} MiB",
    ),
    "persist_tool_missing": ("{tool} is not installed", "未安装 {tool}"),
    "persist_tool_failed": ("{tool} failed: {detail}", "{tool} 执行失败：{detail}"),
    "persist_no_node": (
        "partition {number} of {disk} was written but its device did not appear",
        "{disk} 的第 {number} 个分区已写入，但其设备没有出现",
    ),
    "persist_failed": (
        "making persistent storage failed: {error}",
        "创建持久存储失败：{error}",
    ),
}

_FIELD = re.compile(r"{(\w+)}")


def params_of(template: str) -> set[str]:
    """The {names} a message's template uses (the tests check both languages use the same ones)."""
    return set(_FIELD.findall(template))


class Text(str):
    """A message from MESSAGES as English text, keeping its id (`code`) and values (`params`)."""

    code: str
    params: dict

    def __new__(cls, code: str, **params):
        text = super().__new__(cls, MESSAGES[code][0].format(**params))
        text.code, text.params = code, params
        return text

    def to_dict(self) -> dict:
        """{"code", "params"}, a value that is a Text as such a dict too: JSON for a job row or an API body."""
        return {"code": self.code, "params": {k: _stored(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, data) -> Text | None:
        """The Text `to_dict` stored; None when its id (or a nested one) is unknown to this version."""
        try:
            params = {k: _loaded(v) for k, v in (data.get("params") or {}).items()}
            return cls(data["code"], **params)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            return None


def _stored(value):
    return value.to_dict() if isinstance(value, Text) else value if isinstance(value, (int, float)) else str(value)


def _loaded(value):
    if isinstance(value, dict):
        text = Text.from_dict(value)
        if text is None:
            raise KeyError(value.get("code"))
        return text
    return value


def say(text, lang: str = "en") -> str:
    """A Text in `lang` (nested ones too); anything else as its string."""
    if not isinstance(text, Text):
        return "" if text is None else str(text)
    template = MESSAGES[text.code][LANGS.index(lang) if lang in LANGS else 0]
    return template.format(**{k: say(v, lang) for k, v in text.params.items()})


def message_of(error: BaseException) -> str:
    """An exception's words: its Text when it was raised with one (keeping the id), else its English string."""
    first = getattr(error, "message", None) or (error.args[0] if len(error.args) == 1 else None)
    return first if isinstance(first, Text) else str(error)
