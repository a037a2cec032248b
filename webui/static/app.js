// The kiosk's one script: upload form helpers, the USB browser, job progress polling, result boxes, tabs, copy.
// Loaded with `defer` from 'self' only (CSP); texts come from the page's #messages block in the UI language.
"use strict";

const messages = JSON.parse(document.getElementById("messages").textContent);
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const format = (text, values) => text.replace(/\{(\w+)\}/g, (_, key) => values[key]);

// ---- home: file choice (drop, pick, or USB) and task options ---------------------------------------------------
function setupUpload(form) {
  const fileInput = $("#file", form), usbPath = $("#usb-path", form), scanId = $("#scan-id", form);
  const chosen = $("#chosen"), chosenName = $("#chosen-name");
  const show = (name) => { chosenName.textContent = name; chosen.hidden = !name; };

  const tooBig = $("#too-big"), maxBytes = Number(form.dataset.maxBytes);
  fileInput.addEventListener("change", () => {
    // Refused here, before the upload: the server's own refusal of an oversized body is a bare page.
    tooBig.hidden = !(fileInput.files.length && fileInput.files[0].size > maxBytes);
    if (!tooBig.hidden) { fileInput.value = ""; show(""); return; }
    if (fileInput.files.length) { usbPath.value = ""; scanId.value = ""; show(fileInput.files[0].name); }
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { fileInput.files = e.dataTransfer.files; fileInput.dispatchEvent(new Event("change")); }
  });

  const syncOptions = () => {
    const task = ($("input[name=task]:checked", form) || {}).value;
    $$(".option", form).forEach((el) => { el.hidden = el.dataset.for !== task; });
    $(".options", form).hidden = !$$(".option", form).some((el) => !el.hidden);
  };
  $$("input[name=task]", form).forEach((el) => el.addEventListener("change", syncOptions));
  syncOptions();
  $$(".preset", form).forEach((button) => button.addEventListener("click", () => {
    $("#fields", form).value = button.dataset.fields;
  }));

  setupUsb((path, name) => { usbPath.value = path; scanId.value = ""; fileInput.value = ""; show(path); });
}

// onPick(path, name) for a file; with onFolder(path) set, the dialog picks a folder instead ("Save here").
function setupUsb(onPick, onFolder) {
  const dialog = $("#usb"), list = $("#usb-list"), where = $("#usb-where"), here = $("#usb-here");
  let current = "";
  const icons = $("#usb-icons").content;
  const entry = (kind, label, extra, onClick) => {
    const li = document.createElement("li"), button = document.createElement("button");
    button.type = "button";
    button.className = "usb-entry " + kind;
    button.append($(`[data-icon=${kind}] svg`, icons).cloneNode(true), label);
    if (extra) { const size = document.createElement("span"); size.className = "size"; size.textContent = extra; button.append(size); }
    button.addEventListener("click", onClick);
    li.append(button);
    list.append(li);
  };
  const size = (bytes) => bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  const load = async (path) => {
    const response = await fetch(list.dataset.url + "?path=" + encodeURIComponent(path));
    const data = await response.json();
    list.replaceChildren();
    if (!response.ok) { entry("up", data.detail, "", () => load("")); return; }
    current = data.path;
    here.hidden = !onFolder || !data.path;  // a folder on a stick, not the list of sticks
    where.textContent = "/" + data.path;
    if (data.missing || (!data.path && !data.entries.length)) { list.append(Object.assign(document.createElement("li"), {className: "muted", textContent: messages.usb_none})); return; }
    if (data.parent !== null) entry("up", messages.usb_up, "", () => load(data.parent));
    data.entries.forEach((item) => {
      if (item.type === "dir") entry("dir", item.name, "", () => load(item.path));
      else if (!onFolder) entry("file", item.name, size(item.size), () => { onPick(item.path, item.name); dialog.close(); });
    });
    if (!data.entries.length) list.append(Object.assign(document.createElement("li"), {className: "muted", textContent: messages.usb_empty}));
  };
  $("#usb-open").addEventListener("click", () => { dialog.showModal(); load(current); });
  $("#usb-refresh").addEventListener("click", () => load(current));
  if (onFolder) here.addEventListener("click", () => { dialog.close(); onFolder(current); });
  $("#usb-close").addEventListener("click", () => dialog.close());
}

// ---- job page: poll the API until the job finishes, then show the server-rendered result -------------------------
function pollJob(main) {
  const bar = $("#progress"), text = $("#progress-text"), badge = $("#job-state");
  const tick = async () => {
    let job;
    try {
      const response = await fetch(main.dataset.statusUrl, {headers: {Accept: "application/json"}});
      job = await response.json();
      if (!response.ok) throw new Error(job.detail);
    } catch (err) { setTimeout(tick, 2000); return; }  // server restarting: keep trying
    if (["done", "failed", "cancelled"].includes(job.state)) { location.reload(); return; }
    badge.textContent = messages[job.state];
    const turn = $("#turn-note");  // a long job waiting while others take a turn (appliance.jobs, fair turns)
    if (turn) {
      turn.hidden = !(job.state === "queued" && job.error_code === "job_took_turn");
      if (!turn.hidden) turn.textContent = format(messages.turn_waiting, {done: job.pages_done, total: job.pages_total});
    }
    const cancel = $("#cancel");
    if (cancel && job.cancelling) { cancel.disabled = true; cancel.textContent = messages.cancelling; }
    bar.max = Math.max(job.pages_total, 1);
    bar.value = job.pages_done;
    text.textContent = job.position
      ? format(messages.queue_position, {n: job.position})
      : format(messages.page_progress, {done: Math.min(job.pages_done + 1, job.pages_total), total: job.pages_total});  // the page being read
    showLive(job.live);
    setTimeout(tick, 700);
  };
  tick();
}

// The page being read as the model writes it, and the time left (GET /jobs/<id>'s `live`, absent while queued).
function showLive(live) {
  const pre = $("#live-text"), left = $("#time-left");
  let say = "";
  if (live && live.longer_than_usual) say = messages.longer_than_usual;
  else if (live && live.seconds_left !== null) say = format(messages.time_left, {t: sayDuration(live.seconds_left)});
  if (left.textContent !== say) left.textContent = say;  // unchanged: not announced again
  const text = live ? live.text : "";
  if (pre.textContent === text) return;
  const following = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;  // at the end: stay there
  pre.textContent = text;
  pre.hidden = !text;
  if (following) pre.scrollTop = pre.scrollHeight;
}

// "about" figures in coarse steps, so the line (announced politely) changes seldom: 5 s under a minute, 10 s under
// five minutes, whole minutes above.
function sayDuration(seconds) {
  const step = seconds < 60 ? 5 : seconds < 300 ? 10 : 60;
  const rounded = Math.max(5, Math.round(seconds / step) * step);
  if (rounded < 60) return format(messages.seconds_short, {n: rounded});
  const m = Math.floor(rounded / 60), s = rounded % 60;
  return s ? format(messages.minutes_seconds, {m, s}) : format(messages.minutes_short, {n: m});
}

// ---- result: tap a box to read it, tabs, copy buttons -------------------------------------------------------------
function setupResult() {
  const caption = $("#box-text");
  $$(".box").forEach((box) => {
    const show = () => {
      $$(".box.active").forEach((b) => b.classList.remove("active"));
      box.classList.add("active");
      caption.textContent = box.dataset.text;
      caption.hidden = false;
    };
    box.addEventListener("click", show);
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); show(); return; }
      // One Tab stop per page; the arrow keys go from box to box (a page can hold hundreds).
      const step = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[e.key];
      if (!step) return;
      const boxes = $$(".box", box.closest("svg"));
      const next = boxes[boxes.indexOf(box) + step];
      if (next) { e.preventDefault(); box.tabIndex = -1; next.tabIndex = 0; next.focus(); }
    });
  });
  $$(".tabs [data-tab]").forEach((tab) => tab.addEventListener("click", () => {
    $$(".tabs [data-tab]").forEach((t) => t.setAttribute("aria-selected", String(t === tab)));
    $$("[data-panel]").forEach((panel) => { panel.hidden = panel.dataset.panel !== tab.dataset.tab; });
  }));
  $$(".copy").forEach((button) => button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).innerText;
    try { await navigator.clipboard.writeText(text); }
    catch (err) {  // no clipboard permission: select it so the user can copy by hand
      const range = document.createRange();
      range.selectNodeContents(document.getElementById(button.dataset.copy));
      getSelection().removeAllRanges(); getSelection().addRange(range);
      document.execCommand("copy");
    }
    button.textContent = messages.copied;
    setTimeout(() => { button.textContent = messages.copy; }, 1500);
  }));
}

// ---- result: formulas. webui/render.py wraps each in <span class="math" data-tex>source</span>; KaTeX (vendored,
// loaded by job.html with the Markdown tab) draws it. katex.render builds DOM nodes and sets styles through CSSOM;
// the few style attributes it writes need style-src-attr (see webui/security.py).
function renderFormulas() {
  if (typeof katex === "undefined") return;  // a page without Markdown does not load it
  $$(".markdown .math").forEach((el) => {
    const out = document.createElement("span");
    try {
      katex.render(el.dataset.tex, out, {displayMode: el.classList.contains("display"), throwOnError: true, strict: "ignore"});
      el.replaceChildren(out);
    } catch (err) {  // LaTeX KaTeX cannot read: the source stays as the model wrote it, the reason on hover
      el.classList.add("math-error");
      el.title = err.message;
    }
  });
}

// ---- home while the engine starts: follow GET /health, show its words, switch to the form when it is up ----------
function followEngine(main) {
  const words = $("#engine-progress"), percent = $("#engine-percent"), elapsed = $("#engine-elapsed");
  const started = Date.now() - Number(elapsed.dataset.elapsed) * 1000;  // the server's count: no clock skew
  setInterval(() => {
    elapsed.textContent = format(elapsed.dataset.text, {n: Math.round((Date.now() - started) / 1000)});
  }, 1000);
  const tick = async () => {
    try {
      const response = await fetch(main.dataset.healthUrl, {headers: {Accept: "application/json"}});
      const engine = (await response.json()).engine;
      if (engine.state !== "loading") { location.reload(); return; }  // ready or failed: the server renders it
      const step = messages.steps[engine.step];  // the step in the page's language; else the API's English words
      if (step || engine.progress) words.textContent = step ? format(step, engine.step_values || {}) : engine.progress;
      percent.hidden = typeof engine.percent !== "number";
      if (!percent.hidden) percent.value = engine.percent;
    } catch (err) { /* the web app is restarting: keep waiting */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

// ---- scan folder: poll GET /scan and update the counts, the file table and the lists in place (no reload) -------
const clock = (epoch) => {
  if (!epoch) return "";
  const d = new Date(epoch * 1000), two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
};
const element = (tag, className, text) => Object.assign(document.createElement(tag), className ? {className} : {}, text === undefined ? {} : {textContent: text});

function scanRow(template, f, words) {
  const row = template.content.firstElementChild.cloneNode(true);
  const slot = (name) => $(`[data-slot=${name}]`, row);
  slot("name").textContent = f.name;
  slot("source").textContent = f.source === "inbox" ? words.inbox : f.source;
  slot("state").className = "badge state-" + f.state;
  slot("state").textContent = words.states[f.state] || f.state;
  slot("task").textContent = f.task ? (words.tasks[f.task] || f.task) : "";
  const result = slot("result");
  result.replaceChildren();
  if (f.state === "done") {
    if (f.output_dir) result.append(element("span", "muted", f.output_dir + "/"), " ");
    result.append((f.output_names || []).join(" · "));
    if (f.reused) result.append(" ", element("small", "muted", `(${words.reused})`));
  } else {
    result.append(element("span", f.state === "failed" ? "danger" : "muted", f.detail_ui || f.detail || ""));
  }
  slot("when").replaceChildren(f.updated ? element("time", "", clock(f.updated)) : "");
  slot("action").replaceChildren();
  if (f.retry && f.id) {
    slot("action").append(Object.assign(element("button", "secondary", words.try_again), {type: "submit", name: "id", value: String(f.id)}));
  }
  return row;
}

function pollScan(main) {
  const words = JSON.parse($("#scan-messages").textContent), template = $("#scan-row");
  let last = "";
  const list = (ul, items, make) => ul.replaceChildren(...items.map(make));
  const render = (scan) => {
    $("#scan-running").hidden = !scan.running;
    $("#scan-stopped").hidden = scan.running;
    for (const [state, n] of Object.entries(scan.counts)) {
      const el = $(`[data-count=${state}]`);
      if (el) { el.textContent = n; el.parentElement.classList.toggle("zero", !n); }
    }
    $("#scan-files").replaceChildren(...scan.files.map((f) => scanRow(template, f, words)));
    $(".scan-files").hidden = !scan.files.length;
    $("#scan-empty").hidden = Boolean(scan.files.length);
    $("#scan-retry-all").hidden = !scan.files.some((f) => f.retry);
    $("#scan-unknown").hidden = !scan.unknown_folders.length;
    list($("#scan-unknown-list"), scan.unknown_folders, (folder) => { const li = element("li"); li.append(element("code", "", folder)); return li; });
    $("#scan-sticks-none").hidden = Boolean(scan.sticks.length);
    list($("#scan-sticks"), scan.sticks, (s) => {
      const li = element("li");
      li.append(element("strong", "", s.label), " ", element("span", "muted", s.path));
      if (s.read_only) li.append(" ", element("span", "stick-read-only", messages.stick_read_only));
      return li;
    });
    $("#scan-pulled").hidden = !scan.pulled.length;
    list($("#scan-pulled-list"), scan.pulled.slice().reverse(), (p) => {
      const li = element("li");
      li.append(element("strong", "", format(words.pulled_when, {stick: p.stick, when: clock(p.when)})));
      if (p.not_copied.length) li.append(element("br"), format(words.not_copied, {files: p.not_copied.join(", ")}));
      if (p.finished_locally.length) li.append(element("br"), format(words.finished_here, {stick: p.stick, files: p.finished_locally.join(", ")}));
      if ((p.failed_locally || []).length) li.append(element("br"), format(words.failed_here, {stick: p.stick, files: p.failed_locally.join(", ")}));
      return li;
    });
  };
  const tick = async () => {
    try {
      const response = await fetch(main.dataset.scanUrl, {headers: {Accept: "application/json"}});
      const text = await response.text();
      if (response.ok && text !== last) { last = text; render(JSON.parse(text)); }  // unchanged: touch nothing
    } catch (err) { /* server restarting: keep the last view and try again */ }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// ---- scanner page: find scanners, scan pages (flatbed one at a time, the feeder its whole stack), then hand the
// scan to the start page for the task choice. Everything goes through the API's /scanners routes.
function setupScanner(main) {
  const say = JSON.parse($("#scanner-messages").textContent);
  const device = $("#scanner-device"), looking = $("#scanner-looking"), none = $("#scanner-none");
  const settings = $("#scanner-settings"), source = $("#scanner-source"), resolution = $("#scanner-resolution");
  const mode = $("#scanner-mode"), start = $("#scanner-start"), preview = $("#scanner-preview");
  const cancel = $("#scanner-cancel"), progress = $("#scanner-progress"), error = $("#scanner-error");
  const note = $("#scanner-note"), pages = $("#scanner-pages"), pagesStep = $("#scanner-pages-step");
  let scanId = main.dataset.scanId || "", feeder = {}, timer = null, seq = 0;  // seq: only the newest answer shows
  const call = async (url, options = {}) => {
    const response = await fetch(url, {headers: {"Content-Type": "application/json", Accept: "application/json"}, ...options});
    const body = response.status === 204 ? {} : await response.json();
    if (!response.ok) throw new Error(body.text || body.detail || response.statusText);
    return body;
  };
  const showError = (text) => { error.textContent = text || ""; error.hidden = !text; };
  // The scan in the address, and in the language links' way back: a reload or a language switch keeps its pages.
  const remember = (search) => {
    history.replaceState(null, "", location.pathname + search);
    $$(".langs a").forEach((a) => {
      const url = new URL(a.href);
      url.searchParams.set("next", location.pathname + search);
      a.href = url.pathname + url.search;
    });
  };
  const fill = (select, values, chosen, label) => {
    select.replaceChildren(...values.map((value) => new Option(label(value), value, false, value === chosen)));
    select.closest("label").hidden = !values.length;
  };
  const sourceLabel = (s) => s.duplex ? `${say.duplex} (${s.name})` : s.feeder ? `${say.feeder} (${s.name})` : /flatbed|platen/i.test(s.name) ? say.flatbed : s.name;
  const modeLabel = (m) => ({gray: say.gray, grey: say.gray, grayscale: say.gray, color: say.color, colour: say.color, lineart: say.lineart, binary: say.lineart})[m.toLowerCase()] || m;

  const choose = async () => {
    settings.hidden = true;
    showError("");
    if (!device.value) return;
    try {
      const options = await call(`${main.dataset.optionsUrl}?device=${encodeURIComponent(device.value)}`);
      feeder = Object.fromEntries(options.sources.map((s) => [s.name, s.feeder]));
      fill(source, options.sources.map((s) => s.name), options.source, (name) => sourceLabel(options.sources.find((s) => s.name === name)));
      fill(resolution, options.resolutions.map(String), String(options.resolution), (r) => `${r} dpi`);
      fill(mode, options.modes, options.mode, modeLabel);
      syncPreview();
      settings.hidden = false;
    } catch (err) { showError(err.message); }
  };
  const syncPreview = () => { preview.hidden = Boolean(feeder[source.value]); };  // a preview would use up a sheet
  source.addEventListener("change", syncPreview);

  const find = async () => {
    looking.hidden = false; none.hidden = true; device.hidden = true;
    try {
      const found = (await call(main.dataset.listUrl)).scanners;
      const previous = device.value;
      device.replaceChildren(...found.map((s) => new Option(s.label, s.device)));
      if (found.some((s) => s.device === previous)) device.value = previous;
      device.hidden = !found.length; none.hidden = Boolean(found.length);
      await choose();
    } catch (err) { showError(err.message); }
    looking.hidden = true;
  };

  const show = (scan) => {
    const busy = scan.state === "scanning";
    start.disabled = preview.disabled = device.disabled = busy;
    cancel.hidden = !busy;
    progress.textContent = !busy ? "" : scan.preview_running
      ? format(say.previewing, {percent: Math.round(scan.progress || 0)})
      : format(say.scanning, {n: scan.pages + 1, percent: Math.round(scan.progress || 0)});
    showError(scan.error_text);
    note.textContent = scan.note_text || ""; note.hidden = !scan.note_text;
    const image = $("#scanner-preview-image");
    if (scan.preview_url && !busy) { image.src = `${scan.preview_url}?t=${Date.now()}`; image.hidden = false; }
    pagesStep.hidden = !scan.pages;
    $("#scanner-pages-title").textContent = format(say.pages_title, {n: scan.pages});
    $("#scanner-use").href = `${main.dataset.homeUrl}?scan=${scan.id}`;
    if (pages.dataset.shown !== `${scan.pages}`) {
      pages.dataset.shown = `${scan.pages}`;
      pages.replaceChildren(...scan.page_urls.map((url, i) => {
        const li = document.createElement("li"), img = document.createElement("img"), remove = document.createElement("button");
        img.src = `${url}?size=thumb&t=${Date.now()}`; img.alt = format(say.page, {n: i + 1});
        remove.type = "button"; remove.className = "secondary"; remove.textContent = say.remove;
        remove.addEventListener("click", () => { pages.dataset.shown = ""; ask(url, {method: "DELETE"}); });
        li.append(img, Object.assign(document.createElement("span"), {textContent: format(say.page, {n: i + 1})}), remove);
        return li;
      }));
    }
    clearTimeout(timer);
    if (busy) timer = setTimeout(poll, 500);
  };
  // Every request for the scan's state goes through here: an answer overtaken by a newer request is dropped.
  const ask = async (url, options) => {
    const mine = ++seq;
    try {
      const state = await call(url, options);
      if (mine === seq) show(state);
      return state;
    } catch (err) { if (mine === seq) showError(err.message); return null; }
  };
  const poll = () => ask(`${main.dataset.scansUrl}/${scanId}`);
  const scan = async (asPreview) => {
    showError("");
    const body = {device: device.value, source: source.value || null, mode: mode.value || null,
                  resolution: resolution.value ? Number(resolution.value) : null, preview: asPreview, scan: scanId || null};
    const state = await ask(main.dataset.scansUrl, {method: "POST", body: JSON.stringify(body)});
    if (state) { scanId = state.id; remember(`?scan=${scanId}`); }
  };
  start.addEventListener("click", () => scan(false));
  preview.addEventListener("click", () => scan(true));
  cancel.addEventListener("click", () => ask(`${main.dataset.scansUrl}/${scanId}/cancel`, {method: "POST"}));
  $("#scanner-discard").addEventListener("click", async () => {
    if (!confirm(say.confirm_discard)) return;
    try { await call(`${main.dataset.scansUrl}/${scanId}`, {method: "DELETE"}); } catch (err) { showError(err.message); }
    scanId = ""; remember(""); pagesStep.hidden = true; pages.dataset.shown = "";
  });
  device.addEventListener("change", choose);
  $("#scanner-refresh").addEventListener("click", find);
  find();
  if (scanId) poll();
}

// ---- the kiosk: pages opened by `appliance kiosk` (?kiosk=1, remembered for the tab) check in every few seconds,
// so the supervisor can restart a browser whose page died; while the web app is away they say so, and they reload
// once it is back (the start page, or this job's page).
function kioskCheckIn() {
  if (new URLSearchParams(location.search).has("kiosk")) sessionStorage.setItem("kiosk", "1");
  if (!sessionStorage.getItem("kiosk")) return;
  let lost = false;
  const tick = async () => {
    try {
      const response = await fetch("/kiosk/alive", {cache: "no-store"});
      if (!response.ok) throw new Error(String(response.status));
      if (lost) { location.reload(); return; }
    } catch (err) {
      lost = true;
      $("#reconnecting").hidden = false;
    }
    setTimeout(tick, 5000);
  };
  tick();
}

// ---- persistent storage: while the root service makes it, ask for its state and show the page again when it moves on
function followPersistence(main) {
  const tick = async () => {
    try {
      const response = await fetch(main.dataset.persistenceUrl, {cache: "no-store"});
      const state = await response.json();
      if (state.signature !== main.dataset.persistenceSeen) { location.reload(); return; }
    } catch (err) { /* the web app may be restarting: ask again */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  kioskCheckIn();
  const form = $("#upload-form");
  if (form) setupUpload(form);
  const main = $("main[data-job]");
  if (main && ["queued", "running"].includes(main.dataset.state)) pollJob(main);
  const starting = $("main[data-engine-state=loading]");
  if (starting) followEngine(starting);
  const scannerMain = $("main[data-scanner]");
  if (scannerMain) setupScanner(scannerMain);
  const persistenceMain = $("main[data-persistence-url]");
  if (persistenceMain) followPersistence(persistenceMain);
  const scanMain = $("main[data-scan-url]");
  if (scanMain) pollScan(scanMain);
  setupResult();
  renderFormulas();
  const saveForm = $("#save-usb-form");
  if (saveForm) setupUsb(null, (folder) => { $("#save-folder").value = folder; saveForm.submit(); });
  $$("form.confirm").forEach((f) => f.addEventListener("submit", (e) => { if (!confirm(messages.confirm_delete)) e.preventDefault(); }));
});
