"""The UI's one message catalogue, English and Chinese, and the language choice (cookie, else the image's configured
language, else the browser's).

`_("key", name=...)` in templates; a missing key is a KeyError, so a typo fails the page tests instead of showing
a raw key to a user. API error texts stay English: programs read them, not the kiosk.
"""

from __future__ import annotations

from flask import Flask, current_app, request

from appliance import gpu, messages
from appliance.ocr import steps
from webui import backend

LANGS = {"en": "English", "zh": "中文"}
COOKIE = "lang"

MESSAGES = {
    # frame
    "app_title": ("OCR appliance", "离线文字识别"),
    "nav_home": ("New scan", "新建识别"),
    "nav_history": ("History", "历史记录"),
    "nav_status": ("Status", "系统状态"),
    "nav_scan": ("Scan folder", "扫描文件夹"),
    "nav_scanner": ("Scanner", "扫描仪"),
    "offline_note": ("Works offline. Nothing leaves this machine.", "完全离线运行，文件不会离开本机。"),
    # home
    "step_file": ("1. Choose a file", "1. 选择文件"),
    "drop_here": ("Drop an image or PDF here, or tap to pick one", "将图片或 PDF 拖到这里，或点击选择"),
    "browse_usb": ("Browse USB stick", "浏览 U 盘"),
    "chosen": ("Chosen:", "已选择："),
    "choose_file_first": (
        "Choose a file first: drop one, pick one, or browse the USB stick.",
        "请先选择文件：拖入、点击选择，或从 U 盘中选取。",
    ),
    "upload_too_big": (
        "That file is larger than {mb} MB, the most one upload can take. Copy it to a USB stick and pick it with "
        "“Browse USB stick” (files up to 200 MB), or split it.",
        "该文件超过 {mb} MB，超出单次上传上限。请将其复制到 U 盘并通过“浏览 U 盘”选择（最大 200 MB），或将其拆分。",
    ),
    "step_task": ("2. What do you need?", "2. 需要什么结果？"),
    "model_license": ("Model licence", "模型许可"),
    "model_license_note": (
        (
            "The HunyuanOCR weights in this appliance are under the Tencent Hunyuan Community License; its text and "
            "the Notice file are below."
        ),
        "本设备中的 HunyuanOCR 模型权重依据《腾讯混元社区许可协议》提供；许可全文及 Notice 文件如下。",
    ),
    "needs_model": ("needs the HunyuanOCR model", "需要 HunyuanOCR 模型"),
    # A task card's time on this PC (appliance.ocr.pace): measured from finished pages, or estimated at start-up.
    "page_time_measured": ("{t} a page on this PC", "本机每页约 {t}"),
    "page_time_estimated": ("about {t} a page on this PC", "本机每页预计约 {t}"),
    "seconds_short": ("{n} s", "{n} 秒"),
    "minutes_short": ("{n} min", "{n} 分钟"),
    "step_options": ("3. Options", "3. 选项"),
    "fields_label": ("Fields to extract (comma separated)", "要提取的字段（用逗号分隔）"),
    "presets": ("Presets:", "预设："),
    "preset_id": ("ID card", "身份证"),
    "preset_invoice": ("VAT invoice", "增值税发票"),
    "preset_receipt": ("Receipt", "收据"),
    "target_lang": ("Translate into", "翻译为"),
    "start": ("Start", "开始识别"),
    "engine_starting_title": ("The OCR engine is starting", "识别引擎正在启动"),
    "engine_starting_hint": (
        "This takes a moment after power-on. This page switches to the upload form by itself when it is ready.",
        "开机后需要稍等片刻。引擎就绪后，本页会自动切换到上传界面。",
    ),
    "engine_starting_for": ("{n} s so far", "已等待 {n} 秒"),
    "engine_failed_title": ("The OCR engine did not start", "识别引擎未能启动"),
    "engine_failed": ("The OCR engine did not start: {error}", "识别引擎未能启动：{error}"),
    "engine_failed_none": (
        (
            "Nothing can be recognised until it starts. Restarting the appliance usually helps; the Status page "
            "has the details."
        ),
        "引擎启动前无法识别任何文件。通常重启本设备即可解决；详情请见“系统状态”页面。",
    ),
    "engine_still_works": (
        "These tasks still work with the {engine} engine: {tasks}.",
        "以下任务仍可使用 {engine} 引擎完成：{tasks}。",
    ),
    "engine_fallback": (
        "The {wanted} engine is not running ({reason}); the {engine} engine runs instead. These tasks work: {tasks}.",
        "{wanted} 引擎未运行（{reason}），改用 {engine} 引擎。可用的任务：{tasks}。",
    ),
    # tasks
    "task_spotting": ("Text with positions", "文字及位置"),
    "task_spotting_hint": ("Every line and where it is", "每行文字及其在图中的位置"),
    "task_text": ("Plain text", "纯文本"),
    "task_text_hint": ("Just the words, in reading order", "按阅读顺序输出文字"),
    "task_doc": ("Document to Markdown", "文档转 Markdown"),
    "task_doc_hint": ("Headings, paragraphs, tables, formulas", "标题、段落、表格、公式"),
    "task_table": ("Table", "表格"),
    "task_table_hint": ("Tables as HTML", "把表格转成 HTML"),
    "task_extract": ("Extract fields", "字段提取"),
    "task_extract_hint": ("Named values from ID cards, invoices, receipts", "从身份证、发票、收据中提取指定字段"),
    "task_translate": ("Translate", "翻译"),
    "task_translate_hint": ("Read, then translate", "识别后翻译"),
    "task_formula": ("Formula", "公式"),
    "task_formula_hint": ("Formulas as LaTeX", "公式转 LaTeX"),
    "task_chart": ("Chart", "图表"),
    "task_chart_hint": ("Charts and flowcharts as text", "图表与流程图转文本"),
    "task_subtitles": ("Subtitles", "字幕"),
    "task_subtitles_hint": ("Subtitles from a video frame", "提取视频画面中的字幕"),
    # usb dialog
    "usb_title": ("USB media", "U 盘文件"),
    "usb_up": ("Up", "上一级"),
    "usb_empty": ("No images or PDFs here.", "这里没有图片或 PDF。"),
    "usb_none": ("No USB stick found. Insert one and tap Refresh.", "未发现 U 盘。请插入后点击刷新。"),
    "usb_refresh": ("Refresh", "刷新"),
    "close": ("Close", "关闭"),
    "save_here": ("Save here", "保存到这里"),
    "save_to_usb": ("Save to USB", "保存到 U 盘"),
    "saved_to": ("Saved to {folder}: {files}", "已保存到 {folder}：{files}"),
    "save_failed": (
        "Could not save to {folder}: {error}. Is the stick write-protected or removed?",
        "无法保存到 {folder}：{error}。U 盘是否写保护或已拔出？",
    ),
    # job
    "state_queued": ("Waiting", "排队中"),
    "state_running": ("Working", "识别中"),
    "state_done": ("Done", "完成"),
    "state_failed": ("Failed", "失败"),
    "state_cancelled": ("Cancelled", "已取消"),
    "queue_position": ("Place in queue: {n}", "排队位置：{n}"),
    "page_progress": ("Page {done} of {total}", "第 {done} / {total} 页"),
    # While a page is read (the job page, from GET /jobs/<id>'s live; appliance.ocr.pace.seconds_left)
    "time_left": ("About {t} left", "预计还需约 {t}"),
    "longer_than_usual": ("This page is taking longer than usual", "此页耗时比平时长"),
    "minutes_seconds": ("{m} min {s} s", "{m} 分 {s} 秒"),
    "live_text": ("Text read so far", "已识别的文字"),
    "cancel": ("Cancel", "取消"),
    # the scanner page (templates/scanner.html, app.js setupScanner) and the start page's scanner button
    "use_scanner": ("Scan with a scanner", "用扫描仪扫描"),
    "scanned_pages": ("scanned pages ({n})", "扫描的页面（{n} 页）"),
    "scanner_title": ("Scan with a scanner", "用扫描仪扫描"),
    "scanner_step_device": ("1. Scanner", "1. 选择扫描仪"),
    "scanner_refresh": ("Look again", "重新查找"),
    "scanner_looking": ("Looking for scanners…", "正在查找扫描仪…"),
    "scanner_none": (
        "No scanner found. Connect a USB scanner and switch it on, wait a few seconds, and press “Look again”.",
        "未找到扫描仪。请连接 USB 扫描仪并打开电源，等待几秒后点击“重新查找”。",
    ),
    "scanner_step_settings": ("2. Settings", "2. 扫描设置"),
    "scanner_source": ("Paper from", "纸张来源"),
    "scanner_resolution": ("Resolution", "分辨率"),
    "scanner_mode": ("Colour", "颜色"),
    "scanner_preview": ("Preview", "预览"),
    "scanner_scan": ("Scan", "扫描"),
    "scanner_use": ("Next: choose what to read", "下一步：选择识别任务"),
    "scanner_discard": ("Discard these pages", "放弃这些页面"),
    "scanner_confirm_discard": ("Discard the scanned pages?", "确定放弃已扫描的页面吗？"),
    "scanner_pages_title": ("3. Scanned pages: {n}", "3. 已扫描 {n} 页"),
    "scanner_scanning": ("Scanning page {n}… {percent}%", "正在扫描第 {n} 页… {percent}%"),
    "scanner_previewing": ("Scanning a preview… {percent}%", "正在扫描预览… {percent}%"),
    "scanner_page": ("Page {n}", "第 {n} 页"),
    "scanner_remove": ("Remove", "删除"),
    "scanner_flatbed": ("Flatbed (glass)", "平板（玻璃面）"),
    "scanner_feeder": ("Document feeder: every sheet in it", "自动进纸器：扫描其中所有纸张"),
    "scanner_duplex": ("Document feeder, both sides", "自动进纸器（双面）"),
    "scanner_gray": ("Grey (best for text)", "灰度（最适合文字）"),
    "scanner_color": ("Colour", "彩色"),
    "scanner_lineart": ("Black and white", "黑白"),
    # fair turns (appliance.jobs): the limits, and a long job waiting while others take a turn
    "limits_note": (
        "One file may have up to {pages} pages. A long file lets waiting files go first every {minutes} min, then "
        "goes on where it was.",
        "每个文件最多 {pages} 页。较长的文件每处理 {minutes} 分钟会让排队的文件先处理，然后从中断处继续。",
    ),
    "turn_waiting": (
        "Waiting: other jobs take a turn. {done} of {total} pages are read; it goes on by itself.",
        "等待中：其他任务正在轮流处理。已识别 {done} / {total} 页，之后会自动继续。",
    ),
    "cancelling": ("Cancelling after this page…", "正在取消（本页完成后停止）…"),
    "job_cancelled": ("Cancelled before any page was read.", "已取消，尚未识别任何页面。"),
    "job_cancelled_partial": (
        "Cancelled after {done} of {total} pages: the pages read are below and can be copied or downloaded.",
        "已在第 {done} 页（共 {total} 页）后取消：已识别的页面如下，可复制或下载。",
    ),
    "cached_note": (
        "Same file and settings as before: the earlier result is shown.",
        "文件和设置与之前相同，直接显示之前的结果。",
    ),
    "tab_text": ("Text", "文本"),
    "tab_markdown": ("Markdown", "Markdown"),
    "tab_fields": ("Fields", "字段"),
    "tab_translation": ("Translation", "译文"),
    "copy": ("Copy", "复制"),
    "copied": ("Copied", "已复制"),
    "download": ("Download", "下载"),
    "field": ("Field", "字段"),
    "value": ("Value", "值"),
    "no_text": ("No text was found.", "未识别到文字。"),
    "page_n": ("Page {n}", "第 {n} 页"),
    "tap_box": ("Tap a box to see its text.", "点击方框查看文字。"),
    "new_scan": ("New scan", "再识别一个"),
    "try_again": ("Try again", "重试"),
    "skip_to_text": ("Skip to the text and downloads", "跳到文字和下载"),
    "reconnecting": (
        "The OCR service is restarting; this page comes back by itself in a moment. Nothing is lost.",
        "OCR 服务正在重新启动，本页面稍后会自动恢复，任务不会丢失。",
    ),
    "job_crashed": (
        "This file stopped the OCR service {n} times, so it was set aside; the queue went on. The file is kept.",
        "此文件已 {n} 次导致 OCR 服务中断，已被搁置，队列继续处理其他任务；原文件已保留。",
    ),
    "delete": ("Delete", "删除"),
    "confirm_delete": ("Delete this job and its files?", "删除此任务及其文件？"),
    # history
    "history_empty": ("Nothing yet.", "暂无记录。"),
    "col_file": ("File", "文件"),
    "col_task": ("Task", "任务"),
    "col_state": ("State", "状态"),
    "col_pages": ("Pages", "页数"),
    "col_when": ("When", "时间"),
    "open": ("Open", "打开"),
    # status
    "engine": ("Engine", "识别引擎"),
    "engine_in_use": ("In use", "当前使用"),
    "engine_why": ("Why", "原因"),
    "engine_state": ("State", "状态"),
    "engine_state_loading": ("starting", "启动中"),
    "engine_state_ready": ("ready", "就绪"),
    "engine_state_failed": ("failed", "失败"),
    "engine_state_stopped": ("stopped", "已停止"),
    "gpu": ("GPU", "GPU"),
    "gpu_none": ("none usable", "无可用 GPU"),
    "model": ("Model", "模型"),
    "revision": ("Revision", "版本"),
    "model_dir": ("Model folder", "模型目录"),
    "tasks_available": ("Tasks", "支持的任务"),
    "versions": ("Versions", "软件版本"),
    "storage": ("Storage", "存储"),
    "data_dir": ("Data folder", "数据目录"),
    "data_kept": ("Kept after power-off", "断电后是否保留"),
    "data_in_ram": (
        "Running from RAM: results are lost at power-off. Save what you need to a USB stick.",
        "正在内存中运行：断电后结果会丢失。请把需要的结果保存到 U 盘。",
    ),
    "data_on_disk": ("Yes: stored on a disk, not in RAM", "是：保存在磁盘上，而非内存中"),
    "data_unknown": ("Unknown (the mount could not be read)", "未知（无法读取挂载信息）"),
    "data_mount": ("{mount} ({fstype} on {device})", "{mount}（{fstype}，设备 {device}）"),
    "medium": ("Boot medium", "启动介质"),
    "medium_verified": ("verified", "已校验"),
    "medium_failed": ("check failed", "校验失败"),
    "medium_unchecked": ("not checked on this boot", "本次启动未校验"),
    "medium_none": ("not booted from the appliance's medium", "未从本设备的启动介质启动"),
    "medium_how": (
        'Choose "check medium integrity" in the boot menu to check it.',
        "可在启动菜单中选择“检查介质完整性”进行校验。",
    ),
    "free_space": ("Free space", "可用空间"),
    # persistent storage on the boot stick (the persistence page, the home page's RAM warning, the status page)
    "persistence": ("Persistent storage", "持久存储"),
    "persist_title": ("Keep results on this stick", "在此 U 盘上保留结果"),
    "persist_offer": ("Keep results on this stick…", "在此 U 盘上保留结果…"),
    "persist_none": (
        "Not available here: this is not running from the appliance's USB stick.",
        "此处不可用：当前不是从本设备的 U 盘运行。",
    ),
    "persist_intro": (
        "This USB stick has unused space after the appliance. Persistent storage there keeps your results, history "
        "and settings when the appliance is switched off.",
        "此 U 盘在本设备分区之后还有未使用的空间。在那里创建持久存储后，关机后结果、历史记录和设置都会保留。",
    ),
    "persist_will": ("What it will do", "将会执行"),
    "persist_will_partition": (
        "Make a new partition of {size} in the unused space of {stick} ({total}).",
        "在 {stick}（{total}）的未使用空间中创建一个 {size} 的新分区。",
    ),
    "persist_will_finish": (
        "Finish the persistent storage partition that was started on {disk} and not finished.",
        "完成 {disk} 上已开始但未完成的持久存储分区。",
    ),
    "persist_will_keep": (
        "From the next start, keep results, history and settings there.",
        "从下次启动起，将结果、历史记录和设置保存在那里。",
    ),
    "persist_will_not": ("What it will not do", "不会执行"),
    "persist_not_boot": (
        "It does not change or erase the appliance's own partitions: the stick starts as before.",
        "不会更改或删除本设备自身的分区：U 盘仍可照常启动。",
    ),
    "persist_not_other": ("It does not touch any other disk or stick.", "不会改动任何其他磁盘或 U 盘。"),
    "persist_not_now": (
        "It does not keep what is in RAM now: results made before the restart are lost at power-off, so save them "
        "to a USB stick first.",
        "不会保留当前内存中的内容：重新启动前产生的结果在关机后会丢失，请先保存到 U 盘。",
    ),
    "persist_not_encrypted": (
        "It is not encrypted: anyone who has the stick can read the results on it.",
        "数据不加密：拿到此 U 盘的人都可以读取其中的结果。",
    ),
    "persist_create": ("Create persistent storage", "创建持久存储"),
    "persist_finish": ("Finish persistent storage", "完成持久存储"),
    "persist_working": ("Making persistent storage…", "正在创建持久存储…"),
    "persist_keep_plugged": (
        "This takes about a minute. Do not pull the stick or switch off until it says it is ready.",
        "大约需要一分钟。在显示完成之前，请勿拔出 U 盘或关机。",
    ),
    "persist_step_partition": ("Adding the partition", "正在添加分区"),
    "persist_step_format": ("Formatting it", "正在格式化"),
    "persist_step_config": ("Writing its settings", "正在写入配置"),
    "persist_ready_restart": (
        "Persistent storage is ready on this stick. Restart the appliance: from then on results, history and "
        "settings are kept.",
        "此 U 盘上的持久存储已就绪。请重新启动本设备：之后结果、历史记录和设置都会保留。",
    ),
    "persist_in_use": (
        "Results, history and settings are kept on this stick's persistent storage.",
        "结果、历史记录和设置保存在此 U 盘的持久存储中。",
    ),
    "persist_not_needed": (
        "Results are already kept on a disk, not in RAM: there is nothing to do here.",
        "结果已保存在磁盘上（不在内存中）：此处无需操作。",
    ),
    "persist_cannot": ("Persistent storage cannot be made here:", "无法在此创建持久存储："),
    "persist_request_failed": (
        "The request could not be made ({error}). Restart and try again.",
        "无法提交请求（{error}）。请重新启动后再试。",
    ),
    "persist_stuck": (
        "The request was not picked up (the appliance-persistence service did not run). Restart and try again.",
        "请求未被处理（appliance-persistence 服务没有运行）。请重新启动后再试。",
    ),
    "free_of": ("{free} free of {total}", "共 {total}，可用 {free}"),
    "queue": ("Queue", "队列"),
    "queue_counts": (
        "{queued} waiting (limit {limit}), {done} done, {failed} failed",
        "{queued} 个排队（上限 {limit}），{done} 个完成，{failed} 个失败",
    ),
    "lan_mode": ("LAN access", "局域网访问"),
    "lan_on": ("on (token required from other machines)", "已开启（其他电脑需要令牌）"),
    "lan_off": ("off (this machine only)", "关闭（仅本机）"),
    # scan folder
    "scan_off": ("The scan folder is off.", "扫描文件夹未开启。"),
    "scan_off_how": (
        (
            "To turn it on, start the appliance with {command}. Scans dropped into ROOT/inbox then come out as "
            "text, Markdown, JSON and searchable PDF in ROOT/outbox, without using this screen."
        ),
        (
            "如需开启，请用 {command} 启动本设备。之后放入 ROOT/inbox 的扫描件会自动在 ROOT/outbox 中生成文本、"
            "Markdown、JSON 和可搜索 PDF，无需操作本界面。"
        ),
    ),
    "scan_inbox": ("Drop scans into", "把扫描件放入"),
    "scan_running": ("Watching: new files are picked up automatically.", "正在监视：新文件会被自动处理。"),
    "scan_stopped": (
        "The folder watcher is not running; files wait in the inbox until it starts again.",
        "文件夹监视未在运行；文件会留在收件箱中，直到监视重新启动。",
    ),
    "scan_waiting": ("Waiting", "等待中"),
    "scan_working": ("Working", "识别中"),
    "scan_recent": ("Recent files", "最近的文件"),
    "scan_empty": ("No files yet. Drop scans into the inbox folder.", "暂无文件。请把扫描件放入收件箱文件夹。"),
    "col_source": ("From", "来源"),
    "col_result": ("Result", "结果"),
    "scan_source_inbox": ("inbox", "收件箱"),
    "scan_reused": ("same file as before: result reused", "与之前的文件相同，已复用结果"),
    "scan_retry_all": ("Retry failed files", "重试失败的文件"),
    "scan_retried": (
        "Moved {n} file(s) back into the inbox; they will be tried again.",
        "已将 {n} 个文件移回收件箱，将重新识别。",
    ),
    "scan_retry_waiting": (
        "Not moved, waiting for their USB stick (insert it, then retry): {files}",
        "未移回，需等待对应的 U 盘（插入后再重试）：{files}",
    ),
    "scan_waiting_for_stick": (
        "It is on USB stick {stick}, which is not inserted: insert it, then retry.",
        "该文件在 U 盘 {stick} 上，此 U 盘未插入：请插入后再重试。",
    ),
    "scan_unknown": ("Unknown folders: their files are left alone", "无法识别的文件夹：其中的文件不会被处理"),
    "scan_unknown_hint": (
        "Rename each one to a folder name from the table below, or move its files into one of those folders.",
        "请把它们改名为下表中的文件夹名，或把文件移到这些文件夹中。",
    ),
    "scan_folders_help": ("Which inbox folder does what", "收件箱子文件夹与任务"),
    "scan_folder_col": ("Folder", "文件夹"),
    "scan_inbox_itself": ("(the inbox itself)", "（收件箱本身）"),
    "scan_sticks": ("USB sticks", "U 盘"),
    "scan_sticks_hint": (
        "A stick with an OCR-INBOX folder is processed when inserted; results go to its OCR-OUTBOX folder.",
        "插入含 OCR-INBOX 文件夹的 U 盘即自动处理，结果写入 U 盘上的 OCR-OUTBOX 文件夹。",
    ),
    "scan_stick_read_only": (
        "read-only: its OCR-INBOX is not watched (open its files on the New scan page; a stick Windows marked as "
        "not safely removed becomes writable again after Windows checks it)",
        "只读：不处理其 OCR-INBOX（可在“新建识别”页打开其中的文件；"
        "Windows 标记为未安全移除的 U 盘经 Windows 检查后可恢复写入）",
    ),
    "scan_sticks_none": ("No stick with an OCR-INBOX folder is inserted.", "未插入含 OCR-INBOX 文件夹的 U 盘。"),
    "scan_pulled": ("Sticks removed before their files were finished", "文件未处理完就被拔出的 U 盘"),
    "scan_pulled_when": ("{stick}, removed {when}", "{stick}，拔出于 {when}"),
    "scan_not_copied": (
        "Not copied off (still on the stick; insert it again to process them): {files}",
        "未复制（仍在 U 盘上，重新插入即可处理）：{files}",
    ),
    "scan_finished_here": (
        "Finished on this machine, results in outbox/usb-{stick}: {files}",
        "已在本机完成，结果在 outbox/usb-{stick}：{files}",
    ),
    "scan_failed_here": (
        "Failed on this machine, kept in failed/usb-{stick} (the stick keeps its original): {files}",
        "在本机识别失败，保存在 failed/usb-{stick}（原件仍在 U 盘上）：{files}",
    ),
    # errors, login
    "error_title": ("Something went wrong", "出错了"),
    # the error pages' headline: the API's stable `error` codes (webui.errors), said in words
    "error_unsupported_file_type": ("unsupported file type", "不支持的文件类型"),
    "error_too_many_pages": ("too many pages", "页数过多"),
    "error_unreadable_file": ("unreadable file", "无法读取的文件"),
    "error_bad_request": ("bad request", "请求有误"),
    "error_task_not_available": ("task not available", "任务不可用"),
    "error_busy": ("busy", "繁忙"),
    "error_engine_unavailable": ("engine unavailable", "识别引擎不可用"),
    "error_not_found": ("not found", "未找到"),
    "error_scanner_busy": ("scanner busy", "扫描仪正忙"),
    "error_scanner_error": ("scanner error", "扫描仪出错"),
    "error_internal_error": ("internal error", "内部错误"),
    "error_file_too_large": ("file too large", "文件过大"),
    "error_too_many_form_parts": ("too many form parts", "表单字段过多"),
    "back_home": ("Back to the start", "返回首页"),
    "login_title": ("Access token", "访问令牌"),
    "login_hint": (
        "This appliance is shared on the network. Enter the access token from its administrator.",
        "本设备已在网络上共享，请输入管理员提供的访问令牌。",
    ),
    "login_failed": ("That token is not right.", "令牌不正确。"),
    "login_wait": ("Too many wrong tokens. Try again in {n} seconds.", "令牌错误次数过多，请 {n} 秒后再试。"),
    "login": ("Continue", "继续"),
}


# Why a gpu image runs OCR on the CPU (the banner): kept with the checks that find the reason.
MESSAGES.update({f"gpu_{key}": texts for key, texts in {**gpu.REASONS, **gpu.MEANWHILE}.items()})


def say_reason(reason) -> str:
    """An appliance.gpu.Reason in the page's language (other text as it is)."""
    key = getattr(reason, "key", None)
    if key is None:
        return str(reason)
    first = gettext("gpu_" + key, **reason.values)
    return first + ("" if first.endswith("。") else " ") + gettext("gpu_" + reason.meanwhile)  # none after a CJK stop


# The engine's start-up steps (the start screen): kept with the code that reports them.
MESSAGES.update({f"step_{key}": texts for key, texts in steps.STEPS.items()})


def say_step(engine: dict) -> str:
    """What a loading engine is doing (GET /health's engine), in the page's language; its English words when the
    step is not one the catalogue knows."""
    key = engine.get("step")
    if key not in steps.STEPS:
        return engine.get("progress") or ""
    return gettext("step_" + key, **(engine.get("step_values") or {}))


def say_page_time(figure: dict | None) -> str:
    """A task card's "about 45 s a page on this PC" from the engine status's page_seconds entry; '' without one."""
    if not figure or not figure.get("seconds"):
        return ""
    seconds = float(figure["seconds"])
    t = (
        gettext("seconds_short", n=max(1, round(seconds)))
        if seconds < 90
        else gettext("minutes_short", n=round(seconds / 60, 1 if seconds < 600 else None))
    )
    return gettext("page_time_measured" if figure.get("measured") else "page_time_estimated", t=t)


# What the core says (errors, failed jobs, the engine choice, the scan folder): kept with the code that says it.
MESSAGES.update({f"msg_{key}": texts for key, texts in messages.MESSAGES.items()})


def say(text) -> str:
    """An appliance.messages.Text (a job's `error_text`, an error's detail) in the page's language; other text as
    it is."""
    return messages.say(text, current_lang())


def say_error(code: str) -> str:
    """An error page's headline: the API's stable `error` code in the page's language (others as they are)."""
    key = "error_" + code.replace(" ", "_")
    return gettext(key) if key in MESSAGES else code


def current_lang() -> str:
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGS:
        return chosen
    # The site's language (image config) beats the kiosk browser's built-in locale.
    configured = current_app.extensions[backend.KEY].runtime.language
    if configured in LANGS:
        return configured
    return request.accept_languages.best_match(list(LANGS)) or "en"


def gettext(key: str, **values) -> str:
    text = MESSAGES[key][list(LANGS).index(current_lang())]
    return text.format(**values) if values else text


def init_app(app: Flask) -> None:
    app.jinja_env.globals["_"] = gettext
    app.jinja_env.globals["say_step"] = say_step
    app.jinja_env.globals["say"] = say
    app.jinja_env.globals["say_page_time"] = say_page_time
    # The start screen's script follows GET /health and says each step with these ({placeholders} kept).
    app.jinja_env.globals["step_texts"] = lambda: {key: gettext("step_" + key) for key in steps.STEPS}

    @app.context_processor
    def language():
        return {"lang": current_lang(), "langs": LANGS}
