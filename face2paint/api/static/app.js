// face2paint's web page: plain JavaScript over the /v1 API, nothing to build.
//
// The API key lives in localStorage and goes out only as an Authorization header, so every
// request is a fetch(): images become blob: URLs, downloads are saved from blobs, and the
// job's live progress is a server-sent event stream read through fetch() (EventSource cannot
// send a header), with polling when the stream breaks.
"use strict";

const KEY_STORE = "face2paint.apiKey";
const STAGES = ["queued", "detecting", "parsing", "stylizing", "finalizing", "succeeded"];
const TERMINAL = new Set(["succeeded", "failed", "partially_succeeded", "canceled"]);
const POLL_MS = 1500;
const JOBS_PER_PAGE = Number(new URLSearchParams(location.search).get("jobs_per_page")) || 10;

const $ = (id) => document.getElementById(id);
const state = {
  key: null, files: [], style: null, schema: null, job: null, items: new Map(),
  watch: null, blobs: new Map(), pages: [null], page: 0,
};

// --- the key ---------------------------------------------------------------------------------

function takeKeyFromFragment() {
  // `face2paint up` may print http://127.0.0.1:PORT/#key=KEY: a fragment never reaches the
  // server or its logs; it is removed from the address bar at once.
  const m = location.hash.match(/^#key=([^&]+)/);
  if (!m) return;
  localStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${state.key}`, ...extra };
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try {
      const body = await r.json();
      if (body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    // A key revoked while the page is open: ask for another (not while one is being tried).
    if (r.status === 401 && !$("app").hidden) showKeyPanel(`The key was refused: ${detail}`);
    throw new ApiError(r.status, detail);
  }
  return r;
}
const apiJson = async (path, options) => (await api(path, options)).json();

function showKeyPanel(error) {
  state.key = null;
  $("app").hidden = true;
  $("key-status").hidden = true;
  $("key-panel").hidden = false;
  $("key-error").hidden = !error;
  $("key-error").textContent = error || "";
  $("key-input").focus();
}

async function useKey(key) {
  state.key = key;
  try {
    const [styles, schema] = await Promise.all([apiJson("/v1/styles"), apiJson("/v1/options")]);
    localStorage.setItem(KEY_STORE, key);
    $("key-panel").hidden = true;
    $("app").hidden = false;
    $("key-status").hidden = false;
    $("key-hint").textContent = `key …${key.slice(-4)}`;
    renderStyles(styles);
    renderOptions(schema);
    loadJobs(0);
  } catch (e) {
    if (e.status === 401) {
      localStorage.removeItem(KEY_STORE);
      showKeyPanel(`That key was refused: ${e.message}`);
    } else {
      showKeyPanel(`Could not reach the API: ${e.message}`);
    }
  }
}

// --- choosing photos, style and options ------------------------------------------------------

function addFiles(list) {
  for (const f of list) {
    if (!state.files.some((g) => g.name === f.name && g.size === f.size && g.lastModified === f.lastModified)) {
      state.files.push(f);
    }
  }
  renderChosen();
}

function renderChosen() {
  const ul = $("chosen");
  ul.replaceChildren();
  state.files.forEach((f, i) => {
    const li = document.createElement("li");
    li.textContent = `${f.name} (${(f.size / 1024).toFixed(0)} KB)`;
    const rm = document.createElement("button");
    rm.type = "button"; rm.className = "link"; rm.textContent = "remove";
    rm.addEventListener("click", () => { state.files.splice(i, 1); renderChosen(); });
    li.append(" ", rm);
    ul.append(li);
  });
  $("submit").disabled = state.files.length === 0;
  $("submit-status").textContent = state.files.length ? `${state.files.length} photo(s)` : "";
}

function styleCard(s, checked, value = s.name) {
  const label = document.createElement("label");
  label.className = "style";
  label.title = s.description;
  const input = document.createElement("input");
  input.type = "radio"; input.name = "style"; input.value = value; input.checked = checked;
  input.addEventListener("change", () => { state.style = value; });
  label.append(input);
  if (s.example_url) {
    const img = document.createElement("img");
    img.src = s.example_url; img.alt = `${s.name} example`;
    label.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "no-example"; none.textContent = "no example";
    label.append(none);
  }
  const name = document.createElement("strong");
  name.textContent = s.name;
  label.append(name);
  if (!s.commercial_use) {
    const nc = document.createElement("span");
    nc.className = "badge"; nc.textContent = "non-commercial";
    nc.title = `licence: ${s.licences.join(", ")}`;
    label.append(nc);
  }
  return label;
}

function renderStyles(styles) {
  // Named presets (several models each) first; single models folded away.
  const single = (s) => s.face_model === s.name && s.background_model === s.name;
  const auto = { name: "default", description: "the server's default style", example_url: null,
                 commercial_use: true, licences: [] };
  const named = $("styles"), rest = $("styles-single");
  named.replaceChildren(styleCard(auto, true, ""));
  state.style = "";
  for (const s of styles) (single(s) ? rest : named).append(styleCard(s, false));
}

function paramInput(name, spec) {
  const label = document.createElement("label");
  label.textContent = spec.title || name;
  const input = document.createElement("input");
  input.name = name;
  input.dataset.default = String(spec.default);
  if (spec.type === "boolean") {
    input.type = "checkbox"; input.checked = spec.default;
    label.className = "check";
    label.prepend(input);
  } else {
    input.type = "number";
    input.min = spec.minimum; input.max = spec.maximum;
    input.step = spec.type === "integer" ? "1" : "any";
    input.value = spec.default;
    label.append(input);
  }
  return label;
}

function renderOptions(schema) {
  state.schema = schema;
  const params = schema.$defs.ParamsOptions.properties;
  const box = $("params");
  box.replaceChildren(...Object.entries(params).map(([n, p]) => paramInput(n, p)));
  const fmt = $("output-format");
  fmt.replaceChildren(...schema.properties.output_format.enum.map((f) => {
    const o = document.createElement("option");
    o.value = f; o.textContent = f.toUpperCase(); o.selected = f === schema.properties.output_format.default;
    return o;
  }));
  fmt.dispatchEvent(new Event("change"));
}

function chosenOptions() {
  const params = {};
  for (const input of $("params").querySelectorAll("input")) {
    const value = input.type === "checkbox" ? input.checked : Number(input.value);
    if (String(value) !== input.dataset.default) params[input.name] = value;
  }
  const options = { face2paint: $("face2paint").checked, params,
                    output_format: $("output-format").value };
  if (state.style) options.style = state.style;
  if (options.output_format !== "png") options.output_quality = Number($("output-quality").value);
  return options;
}

async function submitJob(ev) {
  ev.preventDefault();
  const body = new FormData();
  for (const f of state.files) body.append("files", f, f.name);
  body.append("options", JSON.stringify(chosenOptions()));
  $("submit").disabled = true;
  $("submit-status").textContent = "uploading…";
  try {
    const job = await apiJson("/v1/jobs", { method: "POST", body,
      headers: { "Idempotency-Key": crypto.randomUUID() } });
    state.files = [];
    renderChosen();
    $("submit-status").textContent = "";
    openJob(job.id);
    loadJobs(0);
  } catch (e) {
    $("submit").disabled = false;
    $("submit-status").textContent = `Not submitted: ${e.message}`;
  }
}

// --- one job, live ---------------------------------------------------------------------------

function forgetBlobs() {
  for (const url of state.blobs.keys()) URL.revokeObjectURL(url);
  state.blobs.clear();
}

// An image the API sends (with the key in a header) as a blob: URL; its type is kept.
async function blobUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.blobs.set(url, blob.type);
  return url;
}

function stopWatching() {
  if (state.watch) state.watch.abort();
  state.watch = null;
}

async function openJob(jobId) {
  stopWatching();
  forgetBlobs();
  state.items = new Map();
  $("items").replaceChildren();
  $("job").hidden = false;
  $("job").scrollIntoView({ block: "start" });
  $("job-id").textContent = jobId;
  const watch = new AbortController();
  state.watch = watch;
  try {
    await streamEvents(jobId, watch.signal);
  } catch (e) {
    if (watch.signal.aborted) return;
    await pollJob(jobId, watch.signal, e);
  }
}

function setLive(text, cls) {
  const pill = $("job-live");
  pill.textContent = text;
  pill.className = `pill ${cls}`;
}

// text/event-stream over fetch(): blocks separated by a blank line, "event:" and "data:" fields.
async function streamEvents(jobId, signal) {
  const r = await api(`/v1/jobs/${jobId}/events`, { signal });
  if (!r.body) throw new Error("no stream");
  setLive("live", "live");
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", ended = false;
  for (;;) {
    const { value, done } = await reader.read();
    // The server closes the stream right after its last event; read on to that close, so the
    // request ends normally rather than being dropped.
    if (done && ended) return;
    if (done) throw new Error("the event stream closed before the job ended");
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") event = v;
        else if (field === "data") data.push(v);
      }
      if (!data.length) continue;
      const payload = JSON.parse(data.join("\n"));
      if (event === "item") renderItem(jobId, payload);
      else if (event === "job") renderJob(payload);
      else if (event === "end") { renderJob(payload); setLive("finished", "done"); ended = true; }
      else if (event === "gone") { setLive("deleted", "done"); ended = true; }
    }
  }
}

async function pollJob(jobId, signal, why) {
  setLive("polling", "poll");
  console.info("face2paint: live progress unavailable, polling instead:", why && why.message);
  while (!signal.aborted) {
    try {
      const [job, items] = await Promise.all([
        apiJson(`/v1/jobs/${jobId}`, { signal }), apiJson(`/v1/jobs/${jobId}/items`, { signal })]);
      for (const it of items) renderItem(jobId, it);
      renderJob(job);
      if (TERMINAL.has(job.status)) { setLive("finished", "done"); return; }
    } catch (e) {
      if (signal.aborted || e.status === 404 || e.status === 401) return;
    }
    await new Promise((res) => setTimeout(res, POLL_MS));
  }
}

function progressText(p) {
  let text = `${p.done}/${p.total} done`;
  if (p.failed) text += `, ${p.failed} failed`;
  if (p.canceled) text += `, ${p.canceled} canceled`;
  return text;
}

function renderJob(job) {
  const ended = TERMINAL.has(job.status) && !(state.job && state.job.id === job.id && TERMINAL.has(state.job.status));
  state.job = job;
  if (ended) loadJobs(state.page);  // the list shows the job's final state
  const p = job.progress;
  $("job-status").textContent = job.status.replace("_", " ");
  $("job-status").className = `status ${job.status}`;
  // Counted apart: a canceled job never reads "16/16 done".
  const parts = [`${p.done}/${p.total} done`];
  if (p.failed) parts.push(`${p.failed} failed`);
  if (p.canceled) parts.push(`${p.canceled} canceled`);
  if (p.pending) parts.push(`${p.pending} pending`);
  const models = Object.entries(job.models || {}).map(([role, ids]) => `${role}: ${ids.join(", ")}`);
  $("job-counts").textContent = parts.join(" · ") + (models.length ? ` — models ${models.join("; ")}` : "");
  $("job-progress").max = Math.max(1, p.total);
  $("job-progress").value = p.total - p.pending;
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  $("zip").disabled = job.succeeded === 0;
  $("cancel").hidden = TERMINAL.has(job.status);
}

function renderItem(jobId, it) {
  const old = state.items.get(it.id);
  state.items.set(it.id, it);
  let li = document.getElementById(`item-${it.id}`);
  if (!li) {
    li = document.createElement("li");
    li.id = `item-${it.id}`;
    li.className = "item";
    li.innerHTML = `<div class="thumb"></div><div class="meta"><strong class="name"></strong>
      <span class="state"></span><progress max="${STAGES.length - 1}" value="0"></progress>
      <span class="error"></span></div>`;
    li.querySelector(".name").textContent = it.filename || `photo ${it.index + 1}`;
    const list = $("items");
    const after = [...list.children].find((c) => state.items.get(c.id.slice(5)).index > it.index);
    list.insertBefore(li, after || null);
  }
  li.dataset.status = it.status;
  li.querySelector(".state").textContent = it.status + (it.face_count != null ? ` · ${it.face_count} face(s)` : "");
  const step = STAGES.indexOf(it.status);
  li.querySelector("progress").value = step < 0 ? STAGES.length - 1 : step;
  li.querySelector(".error").textContent = it.error || "";
  if (it.status === "succeeded" && !(old && old.status === "succeeded" && li.querySelector("img"))) {
    showThumb(jobId, it, li);
  }
}

async function showThumb(jobId, it, li) {
  try {
    const url = await blobUrl(`${it.result_url}?redirect=false`);
    const img = document.createElement("img");
    img.src = url; img.alt = `result of ${it.filename}`;
    const button = document.createElement("button");
    button.type = "button"; button.className = "open"; button.title = "Compare before and after";
    button.append(img);
    button.addEventListener("click", () => openViewer(jobId, it, url));
    li.querySelector(".thumb").replaceChildren(button);
  } catch (e) {
    li.querySelector(".error").textContent = `result not loaded: ${e.message}`;
  }
}

function resultName(filename, contentType) {
  const ext = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[contentType] || "png";
  const stem = (filename || "result").replace(/\.[^.]*$/, "") || "result";
  return `${stem}.${ext}`;
}

async function openViewer(jobId, it, afterUrl) {
  const dialog = $("viewer");
  $("viewer-title").textContent = it.filename;
  $("after").src = afterUrl;
  $("before").removeAttribute("src");
  $("slider").value = 50;
  setSplit(50);
  if (it.width && it.height) $("compare").style.setProperty("--ar", String(it.width / it.height));
  $("viewer-info").textContent =
    `${it.width}×${it.height} · ${it.face_count ?? 0} face(s) · ` +
    Object.entries(it.timings || {}).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  const link = $("viewer-download");
  link.href = afterUrl;
  link.download = resultName(it.filename, state.blobs.get(afterUrl));
  dialog.showModal();
  try {
    $("before").src = await blobUrl(`/v1/jobs/${jobId}/items/${it.id}/input`);
  } catch (e) {
    $("viewer-info").textContent += ` (original not shown: ${e.message})`;
  }
}

function setSplit(percent) {
  // The original covers the left part, the result the right.
  $("before").style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
  $("compare").style.setProperty("--split", `${percent}%`);
}

async function downloadZip() {
  const job = state.job;
  if (!job) return;
  $("zip").disabled = true;
  const label = $("zip").textContent;
  $("zip").textContent = "Preparing zip…";
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/results.zip`)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `face2paint-${job.id}.zip`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  } catch (e) {
    $("job-error").hidden = false;
    $("job-error").textContent = `zip not downloaded: ${e.message}`;
  } finally {
    $("zip").textContent = label;
    $("zip").disabled = false;
  }
}

async function cancelJob() {
  if (!state.job) return;
  try {
    renderJob(await apiJson(`/v1/jobs/${state.job.id}/cancel`, { method: "POST" }));
  } catch (e) {
    $("job-error").hidden = false;
    $("job-error").textContent = `not canceled: ${e.message}`;
  }
}

// --- earlier jobs ----------------------------------------------------------------------------

async function loadJobs(page) {
  const cursor = state.pages[page];
  const q = new URLSearchParams({ limit: String(JOBS_PER_PAGE) });
  if (cursor) q.set("cursor", cursor);
  let data;
  try {
    data = await apiJson(`/v1/jobs?${q}`);
  } catch (e) {
    return;
  }
  state.page = page;
  state.pages[page + 1] = data.next_cursor;
  state.pages.length = page + 2;
  const tbody = $("jobs");
  tbody.replaceChildren(...data.jobs.map((job) => {
    const tr = document.createElement("tr");
    const cells = [new Date(job.created_at).toLocaleString(), job.status.replace("_", " "),
      progressText(job.progress), job.options.style || "default"];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button"; open.className = "link"; open.textContent = "open";
    open.dataset.job = job.id;
    open.addEventListener("click", () => openJob(job.id));
    td.append(open);
    tr.append(td);
    return tr;
  }));
  if (!data.jobs.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 5; td.className = "muted"; td.textContent = "No jobs yet.";
    tr.append(td);
    tbody.append(tr);
  }
  $("jobs-newer").disabled = page === 0;
  $("jobs-older").disabled = !data.next_cursor;
}

// --- wiring ----------------------------------------------------------------------------------

function wire() {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useKey($("key-input").value.trim());
  });
  $("key-forget").addEventListener("click", () => {
    stopWatching();
    localStorage.removeItem(KEY_STORE);
    $("key-input").value = "";
    showKeyPanel();
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    addFiles(ev.dataTransfer.files);
  });
  $("files").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  $("submit-form").addEventListener("submit", submitJob);
  $("output-format").addEventListener("change", (ev) => { $("quality-box").hidden = ev.target.value === "png"; });
  $("output-quality").addEventListener("input", (ev) => { $("quality-value").value = ev.target.value; });
  $("params-reset").addEventListener("click", () => renderOptions(state.schema));
  $("face2paint").addEventListener("change", (ev) => { $("params-box").classList.toggle("off", !ev.target.checked); });
  $("zip").addEventListener("click", downloadZip);
  $("cancel").addEventListener("click", cancelJob);
  $("jobs-refresh").addEventListener("click", () => loadJobs(state.page));
  $("jobs-newer").addEventListener("click", () => loadJobs(Math.max(0, state.page - 1)));
  $("jobs-older").addEventListener("click", () => loadJobs(state.page + 1));
  $("slider").addEventListener("input", (ev) => setSplit(Number(ev.target.value)));
  $("viewer-close").addEventListener("click", () => $("viewer").close());
}

wire();
takeKeyFromFragment();
const saved = localStorage.getItem(KEY_STORE);
if (saved) useKey(saved); else showKeyPanel();
