"""The OpenAPI 3.1 document for GET /openapi.json. Written by hand, next to the routes it describes; a test checks
that every API route appears here."""

from __future__ import annotations

from appliance import __version__, export
from appliance.ocr import pace
from appliance.ocr.images import SUPPORTED_TEXT
from appliance.ocr.tasks import ALIASES, LANGUAGES, Task


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _job_id() -> dict:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _scan_paths() -> dict:
    """The scanner routes (SANE): list, options, then a scan filled by one or more runs, then one job of its pages."""
    scan_id = {"name": "scan_id", "in": "path", "required": True, "schema": {"type": "string"}}
    number = {"name": "number", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
    scan = {
        "description": "the scan: `id`, `device`, `state` (scanning, ready, failed), `preview_running`, `pages`, "
        "`preview`, `progress` (percent of the page being scanned), `error` / `error_text` (jam, cover open, no "
        "paper, gone: what to do), `note` / `note_text` (cancelled), `page_urls`, `preview_url`",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    not_found = _error("no such scan or page")
    return {
        "/scanners": {
            "get": {
                "summary": "The scanners SANE finds now (USB; network scanners where discovery is on)",
                "responses": {"200": {"description": "`scanners`: `device`, `label`, `vendor`, `model`, `kind`"}},
            }
        },
        "/scanners/options": {
            "get": {
                "summary": "What one scanner offers: sources (`feeder`, `duplex`), modes, resolutions, defaults",
                "parameters": [{"name": "device", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the choices"}, "400": _error("not a scanner SANE found")},
            }
        },
        "/scanners/scans": {
            "post": {
                "summary": "Scan: JSON `device`, `source`, `resolution`, `mode`, `scan` (add pages to that scan), "
                "`preview` (a low-resolution preview, not a page). The flatbed scans one page, a feeder its stack",
                "responses": {
                    "202": scan,
                    "400": _error("not a scanner SANE found, or a bad option"),
                    "409": _error("this scan or this scanner is already scanning"),
                    "502": _error("the scanner failed"),
                },
            }
        },
        "/scanners/scans/{scan_id}": {
            "get": {
                "summary": "The scan's state",
                "parameters": [scan_id],
                "responses": {"200": scan, "404": not_found},
            },
            "delete": {
                "summary": "Discard the scan and its pages",
                "parameters": [scan_id],
                "responses": {"204": {"description": "gone"}, "404": not_found},
            },
        },
        "/scanners/scans/{scan_id}/pages/{number}": {
            "get": {
                "summary": "A page as JPEG (0: the preview); `?size=thumb` for a small one",
                "parameters": [scan_id, number],
                "responses": {"200": {"description": "image/jpeg"}, "404": not_found},
            },
            "delete": {
                "summary": "Remove a page (the later ones move up)",
                "parameters": [scan_id, number],
                "responses": {"200": scan, "404": not_found, "409": _error("scanning")},
            },
        },
        "/scanners/scans/{scan_id}/cancel": {
            "post": {
                "summary": "Stop the running scan; the pages finished before it stay",
                "parameters": [scan_id],
                "responses": {"200": scan, "404": not_found},
            }
        },
        "/scanners/scans/{scan_id}/job": {
            "post": {
                "summary": "The scan's pages as one multi-page TIFF job (JSON `task`, `fields`, `target_lang` as for "
                "POST /jobs); the scan is gone afterwards",
                "parameters": [scan_id],
                "responses": {
                    "202": {"description": "the job (poll GET /jobs/{job_id})"},
                    "404": not_found,
                    "400": _error("no pages yet"),
                    "409": _error("still scanning"),
                },
            }
        },
    }


def document(config, runtime) -> dict:
    """`runtime`: the image's runtime config (appliance.runtime.Runtime), for the defaults it sets."""
    tasks = [t.value for t in Task] + sorted(ALIASES)
    options = {
        "task": {
            "type": "string",
            "enum": tasks,
            "default": runtime.default_task,
            "description": "what to extract; `task_type` is accepted as another name for it (default: this "
            "appliance's configured default task)",
        },
        "task_type": {"type": "string", "enum": tasks, "description": "the reference articles' name for `task`"},
        "fields": {
            "description": "field names for task `extract`: a list or a comma-separated string",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "target_lang": {
            "type": "string",
            "enum": list(LANGUAGES),
            "default": "en",
            "description": "target language for task `translate`",
        },
    }
    submission = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": f"an image or PDF ({SUPPORTED_TEXT})",
                        },
                        **options,
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "the file's bytes, base64 (a data: URL is accepted too)",
                        },
                        "filename": {"type": "string"},
                        **options,
                    },
                }
            },
        },
    }
    submit_errors = {
        "400": _error("bad task or options, or the engine cannot do this task (the message says which engine can)"),
        "401": _error("LAN mode: `Authorization: Bearer <token>` missing or wrong"),
        "413": _error(
            f"body over the size limit ({config['MAX_CONTENT_LENGTH']} bytes), or (`error` 'too many pages') a "
            f"file with more pages than one job may have ({config['MAX_JOB_PAGES']}; GET /health `queue.max_pages`)"
        ),
        "415": _error("not an image or PDF"),
        "422": _error("an image or PDF that cannot be read (corrupt, truncated, empty)"),
        "503": _error(
            "queue full, or (POST /ocr) as many synchronous requests already waiting as the app allows "
            f"({config['SYNC_SLOTS']}; use POST /jobs instead): `Retry-After` says when to try again; or the engine "
            "is unavailable"
        ),
    }
    job_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OCR appliance API",
            "version": __version__,
            "description": "Offline OCR. Every request goes through one queue to the one engine. On loopback no "
            "authentication; in LAN mode other machines send `Authorization: Bearer <token>`. Fair turns: a file may "
            f"have at most {config['MAX_JOB_PAGES']} pages, and a job that has run for a turn "
            "(GET /health `queue.turn_seconds`) while others wait lets them go first after its current page: it "
            "goes back to the end of the queue (`state` queued, `error_code` job_took_turn, `pages_done` kept) and "
            "goes on from its next page; the result is the same as without the break. Messages: an error's `error` "
            "is a stable code and `detail` English words; `message` (errors) and `error_code` + `error_params` "
            "(jobs) give the words' id and values, which the kiosk's UI says in its own language.",
        },
        "components": {
            "securitySchemes": {"lanToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string", "description": "a stable code, e.g. `unreadable file`"},
                        "detail": {"type": "string", "description": "what to do, in English"},
                        "message": {"$ref": "#/components/schemas/Message"},
                    },
                },
                "Message": {
                    "type": "object",
                    "description": "the words' id and values (appliance.messages), where they have one; a value "
                    "may itself be a Message (a file's name and the reason it was refused)",
                    "properties": {"code": {"type": "string"}, "params": {"type": "object"}},
                },
                "Block": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "box": {
                            "type": ["array", "null"],
                            "items": {"type": "integer"},
                            "minItems": 4,
                            "maxItems": 4,
                            "description": "[x1, y1, x2, y2] in pixels of the page",
                        },
                        "confidence": {"type": ["number", "null"]},
                    },
                },
                "Page": {
                    "type": "object",
                    "properties": {
                        "number": {"type": "integer"},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "text": {"type": "string"},
                        "blocks": {"type": "array", "items": {"$ref": "#/components/schemas/Block"}},
                        "markdown": {"type": ["string", "null"]},
                        "fields": {"type": ["object", "null"]},
                        "translation": {"type": ["string", "null"]},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                        "seconds": {"type": "number"},
                    },
                },
                "Result": {
                    "type": "object",
                    "description": "schema appliance.ocr.result v1; ignore unknown fields",
                    "properties": {
                        "schema": {"type": "string"},
                        "schema_version": {"type": "integer"},
                        "source": {"type": "string"},
                        "task": {"type": "string"},
                        "options": {"type": "object"},
                        "engine": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "model": {"type": "string"},
                                "revision": {"type": "string"},
                                "device": {"type": "string"},
                            },
                        },
                        "text": {"type": "string", "description": "all pages' plain text"},
                        "markdown": {"type": ["string", "null"]},
                        "fields": {"type": ["object", "null"]},
                        "translation": {"type": ["string", "null"]},
                        "pages": {"type": "array", "items": {"$ref": "#/components/schemas/Page"}},
                        "timings": {"type": "object"},
                        "job_id": {"type": "string", "description": "POST /ocr only"},
                        "cached": {
                            "type": "boolean",
                            "description": "POST /ocr only: an identical earlier request's result",
                        },
                    },
                },
                "ScanState": {
                    "type": "object",
                    "required": ["enabled"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "detail": {"type": "string", "description": "when not enabled: how to turn it on"},
                        "root": {"type": "string"},
                        "inbox": {"type": "string"},
                        "running": {"type": "boolean"},
                        "engine": {"type": ["string", "null"]},
                        "counts": {
                            "type": "object",
                            "properties": {s: {"type": "integer"} for s in ("waiting", "working", "done", "failed")},
                        },
                        "files": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "integer", "description": "ledger row; absent while settling"},
                                    "name": {"type": "string", "description": "path under the inbox"},
                                    "source": {"type": "string", "description": "`inbox` or the USB stick's name"},
                                    "state": {"type": "string", "enum": ["waiting", "working", "done", "failed"]},
                                    "task": {"type": ["string", "null"]},
                                    "detail": {"type": "string", "description": "English"},
                                    "message": {"$ref": "#/components/schemas/Message"},
                                    "detail_ui": {"type": "string", "description": "`detail` in the UI's language"},
                                    "outputs": {"type": "array", "items": {"type": "string"}},
                                    "updated": {"type": "number"},
                                },
                            },
                        },
                        "unknown_folders": {"type": "array", "items": {"type": "string"}},
                        "sticks": {"type": "array", "items": {"type": "object"}},
                        "pulled": {"type": "array", "items": {"type": "object"}},
                        "folders": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "size": {"type": "integer"},
                        "sha256": {"type": "string"},
                        "task": {"type": "string"},
                        "options": {"type": "object"},
                        "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
                        "pages_done": {"type": "integer"},
                        "pages_total": {"type": "integer"},
                        "position": {"type": ["integer", "null"], "description": "place in the queue, 1 = next"},
                        "cancelling": {
                            "type": "boolean",
                            "description": "a cancel was asked; the job stops before its next page and keeps the "
                            "pages read as a partial result (GET /jobs/{id}/result)",
                        },
                        "live": {
                            "type": "object",
                            "description": "only while the job runs: the page being read, as a model engine "
                            "writes its answer (rapidocr and blank pages have no text here), and the time left",
                            "properties": {
                                "page": {"type": "integer", "description": "the page being read, from 1"},
                                "text": {
                                    "type": "string",
                                    "description": f"the end of that page's answer so far (at most {pace.TAIL_CHARS} "
                                    "characters; raw model output, before parsing)",
                                },
                                "chars": {"type": "integer", "description": "the answer's whole length so far"},
                                "tokens": {"type": "integer", "description": "tokens of that answer so far"},
                                "seconds_left": {
                                    "type": ["integer", "null"],
                                    "description": "until the whole job is done, from this answer's decode rate, "
                                    "the task's usual answer length and this PC's seconds per page; null when "
                                    "there is no honest figure (nothing measured yet, or longer than usual)",
                                },
                                "longer_than_usual": {
                                    "type": "boolean",
                                    "description": "this page already takes longer, or its answer is already "
                                    "longer, than usual for the task: no time left can be given",
                                },
                            },
                        },
                        "error": {
                            "type": ["string", "null"],
                            "description": "why it failed or was cancelled, or (queued) why it waits again; English",
                        },
                        "error_code": {
                            "type": ["string", "null"],
                            "description": "`error`'s message id, e.g. job_cancelled_running, job_took_turn",
                        },
                        "error_params": {"type": ["object", "null"], "description": "`error`'s values (see Message)"},
                        "error_kind": {"type": ["string", "null"]},
                        "cached": {"type": "boolean"},
                        "retries": {"type": "integer"},
                        "engine": {"type": ["string", "null"]},
                        "created": {"type": "number"},
                        "started": {"type": ["number", "null"]},
                        "finished": {"type": ["number", "null"]},
                        "links": {"type": "object"},
                    },
                },
            },
        },
        "security": [{}, {"lanToken": []}],
        "paths": {
            "/ocr": {
                "post": {
                    "summary": "Recognise one file and wait for the result (the reference articles' API)",
                    "requestBody": submission,
                    "responses": {
                        "200": {
                            "description": "the result",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
                        },
                        **submit_errors,
                        "409": _error("the job was cancelled"),
                        "500": _error("OCR failed"),
                        "504": _error("still running after the wait limit; poll the `Location` job"),
                    },
                }
            },
            "/jobs": {
                "post": {
                    "summary": "Queue a file; poll the job for progress",
                    "requestBody": submission,
                    "responses": {
                        "202": {"description": "queued (or already done from the cache)", "content": job_ref},
                        **submit_errors,
                    },
                },
                "get": {
                    "summary": "Past and current jobs, newest first",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                    ],
                    "responses": {"200": {"description": "`jobs` and `counts` per state"}},
                },
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "State and page progress",
                    "parameters": [_job_id()],
                    "responses": {
                        "200": {"description": "the job", "content": job_ref},
                        "404": _error("no such job"),
                    },
                },
                "delete": {
                    "summary": "Forget the job and delete its files (cancels it if running)",
                    "parameters": [_job_id()],
                    "responses": {"204": {"description": "deleted"}, "404": _error("no such job")},
                },
            },
            "/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel: at once when queued, before the next page when running",
                    "parameters": [_job_id()],
                    "responses": {
                        "200": {"description": "the job", "content": job_ref},
                        "404": _error("no such job"),
                    },
                }
            },
            "/jobs/{job_id}/result": {
                "get": {
                    "summary": "The result as JSON, plain text, Markdown or a searchable PDF "
                    "(the pages with an invisible text layer)",
                    "parameters": [
                        _job_id(),
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": list(export.FORMATS),
                                "default": runtime.result_format,
                            },
                            "description": "any of the formats works; without one: json, or this appliance's "
                            "first configured output format when json is not among them (its UI offers only "
                            f"those: {', '.join(runtime.outputs)})",
                        },
                        {
                            "name": "download",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "any value: send as an attachment named after the input",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the result",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Result"}},
                                "text/plain": {"schema": {"type": "string"}},
                                "text/markdown": {"schema": {"type": "string"}},
                                "application/pdf": {},
                            },
                        },
                        "400": _error("unknown format"),
                        "404": _error("no such job"),
                        "409": _error("the job is not done (yet)"),
                    },
                }
            },
            "/jobs/{job_id}/pages/{number}": {
                "get": {
                    "summary": "Page `number` (1-based) of the input as a JPEG preview (boxes scale to its size)",
                    "parameters": [
                        _job_id(),
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                    "responses": {
                        "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                        "404": _error("no such job or page"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Readiness: `web.ready` (this app) and `engine.ready` / `engine.state` separately",
                    "responses": {
                        "200": {
                            "description": "`web`, `engine` (state loading|ready|failed|stopped, `since`, "
                            "while loading the engine's `progress` words and any extra keys it reports, "
                            "which engine and why), `queue` (`waiting`, `limit`, `max_pages`: pages one job may "
                            "have, `turn_seconds`: how long a job runs while others wait before they go first), "
                            "`kiosk` (`seen`: when the kiosk's page last checked in)"
                        }
                    },
                }
            },
            "/kiosk/alive": {
                "get": {
                    "summary": "The kiosk's page checks in (this machine's browser only; appliance.kiosk watches it)",
                    "responses": {"204": {"description": "noted"}, "403": {"description": "not from this machine"}},
                }
            },
            "/scan": {
                "get": {
                    "summary": "The scan folder's queue (`appliance serve --scan ROOT`): counts and recent files",
                    "responses": {
                        "200": {
                            "description": "`enabled` false (and `detail`) when the app runs without a scan folder; "
                            "else `running`, `engine`, `counts` (waiting, working, done, failed), `files` (newest "
                            "first: `id`, `name`, `source`, `state`, `step`, `task`, `detail`, `outputs`, "
                            "`original`, `updated`), `unknown_folders`, `sticks`, `pulled` (sticks removed with "
                            "files unfinished: `not_copied`, `finished_locally`) and `folders` (inbox subfolder -> "
                            "task, options, `available` on the running engine)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScanState"}}},
                        }
                    },
                }
            },
            **_scan_paths(),
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
    }
