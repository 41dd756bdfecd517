// biom3d gui: one page, five tabs, plain JavaScript (no build step, no CDN). Every request is relative ("api/..."),
// so the page works behind a reverse proxy under any prefix; the token is an HttpOnly cookie the server set.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000, JOB_POLL_MS = 1500;  // how often a running run's page and a job's line look again
const RETRY_MS = 5000;  // after a failed request: the next try, not the end of following
// a request worth trying again: the network or the server failed (restarting, busy), not the request itself
const transient = (e) => !e.status || e.status >= 500;
const state = { info: null, scan: null, runs: [], run: null, patchEdited: false, patchAsked: 0, plan: null, planFor: null,
                planning: null, planError: null, upload: "", lastPrediction: null, moreFor: null, timers: {}, following: {} };

// -- helpers -----------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, problems, status) { super(message); this.problems = problems || []; this.status = status; }
}

async function api(path, body, method) {
  const options = { method: method || (body === undefined ? "GET" : "POST"), credentials: "same-origin", headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["content-type"] = "application/json"; }
  const response = await fetch("api/" + path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!response.ok) throw new ApiError((data && (data.error || data.detail)) || response.statusText, data && data.problems, response.status);
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function say(text, ok) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = false;
  clearTimeout(state.timers.message);
  state.timers.message = setTimeout(() => { box.hidden = true; }, ok ? 4000 : 12000);
}

// four significant digits, not three decimals: a spacing of 0.0005 mm must not show as 0
const fmt = (values, sep) => (values || []).map((v) => (typeof v === "number" && !Number.isInteger(v) ? +v.toPrecision(4) : v)).join(sep || " × ");
const withUnit = (values, unit) => fmt(values) + (unit ? ` ${unit}` : "");
// a number field's value: null when empty, the text itself when it is not a number (the config check says why)
const num = (id) => { const v = $(id).value.trim(); if (v === "") return null; const n = Number(v); return Number.isNaN(n) ? v : n; };
const ago = (t) => { const s = Date.now() / 1000 - t; return s < 90 ? "just now" : s < 5400 ? `${Math.round(s / 60)} min ago` : s < 129600 ? `${Math.round(s / 3600)} h ago` : new Date(t * 1000).toLocaleString(); };
const basename = (p) => (p || "").replace(/\/+$/, "").split("/").pop();

// -- tabs ----------------------------------------------------------------------------------------------------
function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== "tab-" + name;
  if (name === "runs") refreshRuns();
  if (name === "predict") refreshRuns().then(renderPredictRuns);
  if (history.replaceState) history.replaceState(null, "", "#" + name);
}

// -- folder browser ----------------------------------------------------------------------------------------
const browser = { target: null, path: null, parent: null };

async function openBrowser(target) {
  browser.target = target;
  const start = $(target).value.trim();
  try { await browseTo(start || null); } catch (e) { await browseTo(null); }
  $("browser").showModal();
}

async function browseTo(path) {
  const data = await api("browse" + (path ? "?path=" + encodeURIComponent(path) : ""));
  browser.path = data.path; browser.parent = data.parent;
  $("browser-path").textContent = data.path || "Shared folders";
  $("browser-up").disabled = !data.path;
  $("browser-choose").disabled = !data.path;
  const list = $("browser-entries");
  list.replaceChildren(...data.entries.map((entry) => entry.dir
    ? el("li", { class: "dir", "data-path": entry.path, onclick: () => browseTo(entry.path).catch((e) => say(e.message)) }, "📁 " + entry.name)
    : el("li", { class: "file" }, (entry.image ? "🖼 " : "· ") + entry.name)));
  if (!data.entries.length) list.append(el("li", { class: "file", text: "(empty folder)" }));
}

function setupBrowser() {
  for (const button of document.querySelectorAll("[data-browse]")) button.addEventListener("click", () => openBrowser(button.dataset.browse).catch((e) => say(e.message)));
  $("browser-up").addEventListener("click", () => browseTo(browser.parent).catch((e) => say(e.message)));
  $("browser-cancel").addEventListener("click", () => $("browser").close());
  $("browser-choose").addEventListener("click", () => {
    $(browser.target).value = browser.path;
    $(browser.target).dispatchEvent(new Event("change"));
    $("browser").close();
  });
}

// Files go up in as few requests as the server's limit allows (a request over it would be refused whole).
function uploadBatches(files) {
  const limit = state.info.max_upload_mb * 1024 * 1024 - 1024 * 1024;  // room for the form's own bytes
  const batches = [];
  let current = [], size = 0;
  for (const file of files) {
    if (file.size > limit) throw new Error(`${file.name} is larger than this server accepts (${state.info.max_upload_mb} MiB); copy it into a shared folder instead`);
    if (current.length && size + file.size > limit) { batches.push(current); current = []; size = 0; }
    current.push(file); size += file.size;
  }
  if (current.length) batches.push(current);
  return batches;
}

function setupUploads() {
  for (const input of document.querySelectorAll("[data-upload]")) {
    input.addEventListener("change", async () => {
      if (!input.files.length) return;
      const target = input.dataset.upload;
      const kind = { images: "images", masks: "masks", "eval-truth": "truth" }[target] || "inputs";
      try {
        const batches = uploadBatches([...input.files]);
        let batch = kind === "images" || kind === "masks" ? state.upload : "", count = 0, folder = null;
        for (const files of batches) {
          const form = new FormData();
          for (const file of files) form.append("files", file);
          form.append("kind", kind);
          form.append("batch", batch);
          say(`uploading ${count + files.length} of ${input.files.length} file(s)…`, true);
          const data = await api("upload", form);
          batch = data.batch; folder = data.folder; count += data.files.length;
        }
        if (kind === "images" || kind === "masks") state.upload = batch;
        $(target).value = folder;
        say(`${count} file(s) uploaded`, true);
      } catch (e) { say(e.message); }
      input.value = "";
    });
  }
}

// -- preview -------------------------------------------------------------------------------------------------
async function showPreview(box, image, mask, title) {
  box.hidden = false;
  const img = el("img", { alt: "slice preview" });
  const slider = el("input", { type: "range", min: "0", max: "0", value: "0" });
  const caption = el("span", { class: "hint" });
  box.replaceChildren(el("h3", { text: title }), img, el("div", { class: "row" }, "slice ", slider, caption));
  let busy = false;
  async function load(index) {
    if (busy) return;
    busy = true;
    try {
      const query = "image=" + encodeURIComponent(image) + (mask ? "&mask=" + encodeURIComponent(mask) : "") + (index === null ? "" : "&slice=" + index);
      const response = await fetch("api/preview?" + query, { credentials: "same-origin" });
      if (!response.ok) { const data = await response.json().catch(() => ({})); throw new Error(data.error || response.statusText); }
      const depth = Number(response.headers.get("x-depth")), slice = Number(response.headers.get("x-slice"));
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(await response.blob());
      slider.max = String(depth - 1); slider.value = String(slice);
      caption.textContent = `${slice + 1} / ${depth}  (image ${response.headers.get("x-shape")})`;
    } catch (e) { say(e.message); } finally { busy = false; }
  }
  slider.addEventListener("change", () => load(Number(slider.value)));
  await load(null);
}

// -- 1. data -------------------------------------------------------------------------------------------------
async function scan() {
  clearErrors();
  const body = { images: $("images").value.trim(), masks: $("masks").value.trim(), num_classes: num("num_classes") || 1 };
  if (!body.images || !body.masks) { say("choose an images folder and a masks folder first"); return; }
  $("scan-busy").hidden = false; $("scan").disabled = true;
  try {
    const result = await api("scan", body);
    state.scan = result;
    renderScan(result);
    prefillTraining(result);
  } catch (e) { showProblems(e, $("scan-problems")); $("scan-result").hidden = false; } finally {
    $("scan-busy").hidden = true; $("scan").disabled = false;
  }
}

function renderScan(result) {
  $("scan-result").hidden = false;
  const fp = result.fingerprint, plan = result.plan;
  const card = (label, value) => el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
  $("scan-summary").replaceChildren(
    card("images", String(result.files.length)),
    ...(fp ? [card("median shape", fmt(fp.median_shape)), card("median spacing", fp.spacing ? withUnit(fp.spacing, fp.spacing_unit) : "unknown")] : []),
    ...(plan ? [card("patch size", fmt(plan.patch_size)), card("poolings", fmt(plan.num_pools)), card("batch size", String(plan.batch_size))] : []));
  $("scan-problems").replaceChildren(...result.problems.map((p) => el("li", { text: p })));
  $("scan-notes-box").hidden = !result.notes.length;
  $("scan-notes-title").textContent = `${result.notes.length} correction(s) preprocessing will make`;
  $("scan-notes").replaceChildren(...result.notes.map((n) => el("li", { text: n })));
  $("scan-files").querySelector("tbody").replaceChildren(...result.files.map((f) => el("tr", {},
    el("td", { text: f.key }), el("td", { text: f.shape ? fmt(f.shape) : "—" }), el("td", { text: f.spacing ? withUnit(f.spacing, f.spacing_unit) : "—" }),
    el("td", { text: f.channels ?? "—" }), el("td", { class: f.problem ? "error" : "hint", text: f.problem || (f.notes || []).join("; ") }),
    el("td", {}, el("button", { type: "button", onclick: () => showPreview($("data-preview"), f.image, f.mask, f.key) }, "Preview")))));
  $("to-train").disabled = !plan;
}

function prefillTraining(result) {
  if (!result.plan) return;
  state.plan = result.plan; state.patchEdited = false; state.planError = null; state.patchAsked++;  // earlier edits' answers: stale
  result.plan.patch_size.forEach((v, i) => { $("patch-" + i).value = v; });
  $("batch_size").value = result.plan.batch_size;
  $("patch-info").textContent = `poolings ${fmt(result.plan.num_pools)} (auto-configuration)`;
  const stem = (basename(result.images) || "run").replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "") || "run";
  if (!$("name").value) $("name").value = stem + "-" + new Date().toISOString().slice(0, 16).replace(/[-:T]/g, "");
  if (result.stack) $("stack").value = result.stack;
}

// -- 2. train ------------------------------------------------------------------------------------------------
function trainForm() {
  const patch = [0, 1, 2].map((i) => num("patch-" + i));
  const form = {
    name: $("name").value.trim(), images: $("images").value.trim(), masks: $("masks").value.trim(),
    num_classes: num("num_classes") || 1, stack: $("stack").value || null, small: $("small").checked,
    epochs: num("epochs"), batch_size: num("batch_size"), lr: num("lr"), device: $("device").value || null,
    iters_per_epoch: num("iters_per_epoch"), val_iters: num("val_iters"), workers: num("workers"), max_dim: num("max_dim"),
    test_images: $("test_images").value.trim() || null, test_masks: $("test_masks").value.trim() || null,
    cross_validation: $("cross_validation").checked,
  };
  if (state.patchEdited && patch.every((v) => v)) {
    form.patch_size = state.plan.patch_size; form.num_pools = state.plan.num_pools; form.aug_patch_size = state.plan.aug_patch_size;
  }
  return form;
}

async function patchChanged() {
  const patch = [0, 1, 2].map((i) => num("patch-" + i));
  if (!patch.every((v) => v)) return;
  if (!state.scan || !state.scan.fingerprint) { $("err-patch_size").textContent = NEEDS_SCAN; return; }
  $("err-patch_size").textContent = "";
  // edits in a row ask in a row, and the answers may come back in another order: the last edit's decides
  const asked = ++state.patchAsked;
  state.planning = (async () => {
    try {
      const fp = state.scan.fingerprint;  // the shape the scan's plan read
      const plan = await api("autoconfig", { median_shape: fp.plan_shape || fp.median_shape, num_images: fp.num_images,
                                             patch_size: patch, max_dim: num("max_dim") || 128 });
      if (asked !== state.patchAsked) return;
      state.plan = plan; state.patchEdited = true; state.planFor = patch.join(","); state.planError = null;
      const adjusted = plan.patch_size.some((v, i) => v !== patch[i]);
      $("patch-info").textContent = `poolings ${fmt(plan.num_pools)}` + (adjusted ? `; will train with ${fmt(plan.patch_size)} (a multiple of the poolings)` : "");
    } catch (e) { if (asked === state.patchAsked) { state.planError = e.message; $("err-patch_size").textContent = e.message; } }
  })();
  await state.planning;
}
const NEEDS_SCAN = "scan the data first: the poolings and the rotation patch follow from the patch size and the data";

// The patch in the fields has a plan (the scan's, or the last edit's answer): else training would take another.
function patchPlanned() {
  const typed = [0, 1, 2].map((i) => num("patch-" + i));
  if (!typed.some((v) => v !== null)) return true;  // empty: preprocessing chooses
  const planned = state.plan && (state.patchEdited ? state.planFor : state.plan.patch_size.join(","));
  if (typed.join(",") === planned) return true;
  $("err-patch_size").textContent = state.planError || (state.scan ? "this patch size has no plan yet: change it again" : NEEDS_SCAN);
  return false;
}

async function startTraining(event) {
  event.preventDefault();
  clearErrors();
  const useYaml = $("use-yaml").checked && $("yaml").value.trim();
  $("start").disabled = true;
  try {
    if (!useYaml) {
      await state.planning;  // an edit's plan still on its way: the one this form sends
      if (!patchPlanned()) { say("the patch size needs fixing: see the message next to it"); return; }
    }
    const result = await api("train", useYaml ? { yaml: $("yaml").value } : { form: trainForm() });
    say(`training ${result.run} started`, true);
    $("name").value = "";
    state.run = result.run;
    showTab("runs");
  } catch (e) { showProblems(e, useYaml ? $("yaml-problems") : $("train-problems")); } finally { $("start").disabled = false; }
}

function clearErrors() {
  for (const node of document.querySelectorAll(".error[id^=err-]")) node.textContent = "";
  for (const id of ["train-problems", "yaml-problems", "scan-problems"]) $(id).replaceChildren();
}

function showProblems(error, list) {
  const problems = error.problems || [];
  const rest = [];
  for (const p of problems) {
    const slot = p.field && $("err-" + p.field);
    if (slot && !$("use-yaml").checked) slot.textContent = p.message; else rest.push(p.path ? `${p.path}: ${p.message}` : p.message);
  }
  if (!problems.length) rest.push(error.message);
  list.replaceChildren(...rest.map((text) => el("li", { text })));
  if (!rest.length) say("some values need fixing: see the messages next to the fields");
}

async function yamlFill() {
  try { $("yaml").value = (await api("config/draft", trainForm())).yaml; } catch (e) { showProblems(e, $("yaml-problems")); }
}

async function yamlValidate() {
  const result = await api("config/validate", { yaml: $("yaml").value });
  $("yaml-problems").replaceChildren(...result.problems.map((p) => el("li", { text: p.path ? `${p.path}: ${p.message}` : p.message })));
  if (result.valid) say("the config is valid", true);
}

// -- 3. runs -------------------------------------------------------------------------------------------------
async function refreshRuns() {
  // a failed request (the server restarting, a network blip) tries again: stopping would freeze a running run's page
  try { state.runs = await api("runs"); } catch (e) { say(e.message); if (transient(e)) pollRuns(RETRY_MS); return state.runs; }
  const body = $("runs-table").querySelector("tbody");
  $("no-runs").hidden = state.runs.length > 0;
  body.replaceChildren(...state.runs.map((run) => el("tr", { class: run.id === state.run ? "selected" : null, "data-run": run.id },
    el("td", {}, el("a", { href: "#runs", onclick: (e) => { e.preventDefault(); selectRun(run.id); } }, run.id)),
    el("td", { class: "status status-" + run.status, text: run.status }),
    el("td", { class: "num", text: `${run.epochs_done}${run.epochs ? " / " + run.epochs : ""}` }),
    el("td", { class: "num", text: run.best && run.best.val_dice !== undefined ? run.best.val_dice.toFixed(3) : "—" }),
    el("td", { text: run.modified ? ago(run.modified) : "" }),
    el("td", {}, el("button", { type: "button", onclick: () => selectRun(run.id) }, "Open")))));
  if (state.run && !$("tab-runs").hidden) await loadRun(state.run);
  return state.runs;
}

async function selectRun(id) { state.run = id; await refreshRuns(); }

async function loadRun(id) {
  let run;
  try { run = await api("runs/" + encodeURIComponent(id)); } catch (e) {
    if (id !== state.run) return;
    if (e.status === 404) { $("run-detail").hidden = true; say(`run ${id} is gone: ${e.message}`); return; }
    say(e.message);
    if (transient(e)) pollRuns(RETRY_MS);
    return;
  }
  if (id !== state.run) return;  // another run was opened meanwhile: its own answer shows it
  $("run-detail").hidden = false;
  $("run-title").textContent = run.name && run.name !== run.id ? `${run.id} (${run.name})` : run.id;
  const active = run.status === "running" || run.status === "queued";
  const done = run.log.length;
  $("run-state").replaceChildren(el("span", { class: "status status-" + run.status, text: run.status }),
    ` — epoch ${done}${run.epochs ? " of " + run.epochs : ""}` + (run.message ? ` — ${run.message}` : ""));
  $("run-progress").max = run.epochs || 1; $("run-progress").value = Math.min(done, run.epochs || 1);
  $("run-stop").hidden = !active;
  $("run-resume").hidden = !run.resumable;
  $("run-extend").hidden = active || run.status !== "finished";
  $("run-more").parentElement.hidden = $("run-extend").hidden;
  if (state.moreFor !== run.id && run.epochs) { $("run-more").value = run.epochs * 2; state.moreFor = run.id; }
  $("run-predict").hidden = !run.has_checkpoint;
  state.runJob = run.job;
  drawChart($("chart-loss"), [series(run.log, "train_loss", "#2f6fdf"), series(run.log, "val_loss", "#e0772f")], {});
  const metrics = (run.metrics || []).filter((m) => m !== "val_loss");
  const palette = ["#1e8c4e", "#8e44ad", "#c0392b", "#16a085"];
  drawChart($("chart-metric"), metrics.map((m, i) => series(run.log, m, palette[i % palette.length])), { min: 0, max: 1 });
  renderSnapshots(run);
  $("job-log").textContent = (run.job_log || []).join("\n");
  $("run-eval").replaceChildren(...(run.eval ? [el("h4", { text: "Evaluation of the test images" }), evalTable(run.eval)] : []));
  if (active) pollRuns(POLL_MS); else clearTimeout(state.timers.run);
}

// the open run's page follows it while it runs (and retries a failed request) while the runs tab shows
function pollRuns(delay) {
  clearTimeout(state.timers.run);
  if (state.run && !$("tab-runs").hidden) state.timers.run = setTimeout(() => refreshRuns(), delay);
}

function series(rows, key, colour) {
  return { name: key, colour, points: rows.filter((r) => r[key] !== undefined).map((r) => [r.epoch + 1, r[key]]) };
}

function renderSnapshots(run) {
  const names = run.snapshots || [];
  $("snapshot-box").hidden = !names.length;
  if (!names.length) return;
  const select = $("snapshot-epoch");
  const chosen = select.dataset.run === run.id && select.value && names.includes(select.value) && select.dataset.follow !== "1" ? select.value : names[names.length - 1];
  select.dataset.run = run.id;
  select.replaceChildren(...names.map((n) => el("option", { value: n, selected: n === chosen }, n.replace(/\.png$/, ""))));
  select.dataset.follow = chosen === names[names.length - 1] ? "1" : "0";
  const src = `api/runs/${encodeURIComponent(run.id)}/files/snapshots/${encodeURIComponent(chosen)}?n=${names.length}`;
  if ($("snapshot").getAttribute("src") !== src) $("snapshot").setAttribute("src", src);
}

// An inline SVG line chart: axes, ticks, one polyline (and dots) per series, a legend.
function drawChart(svg, all, opts) {
  const NS = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; return n; };
  const W = 480, H = 270, L = 52, R = 12, T = 26, B = 34;
  svg.replaceChildren();
  const data = all.filter((s) => s.points.length);
  if (!data.length) { svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no epoch finished yet")); return; }
  const xs = data.flatMap((s) => s.points.map((p) => p[0])), ys = data.flatMap((s) => s.points.map((p) => p[1]));
  const x0 = 1, x1 = Math.max(2, ...xs);
  let y0 = opts.min ?? Math.min(...ys), y1 = opts.max ?? Math.max(...ys);
  if (opts.min === undefined) { const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(node("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid" }));
    svg.append(node("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, Math.abs(y1 - y0) < 0.05 ? y.toFixed(4) : y.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 8));
  for (let x = x0; x <= x1; x += step) svg.append(node("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle" }, String(x)));
  svg.append(node("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  svg.append(node("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(node("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "epoch"));
  data.forEach((s, i) => {
    svg.append(node("polyline", { class: "series", stroke: s.colour, "data-series": s.name, points: s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
    if (s.points.length <= 40) for (const p of s.points) svg.append(node("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.colour }));
    const lx = L + 8 + i * 120;
    svg.append(node("rect", { x: lx, y: 8, width: 14, height: 4, fill: s.colour }));
    svg.append(node("text", { x: lx + 18, y: 13 }, s.name));
  });
}

async function runAction(action) {
  const buttons = ["run-stop", "run-resume", "run-extend"].map($);
  if (buttons.some((b) => b.disabled)) return;  // one request at a time: a double click would ask twice
  buttons.forEach((b) => { b.disabled = true; });
  try {
    if (action === "stop") { await api(`jobs/${encodeURIComponent(state.runJob)}/stop`, {}); say("stopping… (it finishes its current step)", true); }
    if (action === "resume") { await api(`runs/${encodeURIComponent(state.run)}/resume`, {}); say("resumed", true); }
    if (action === "extend") { await api(`runs/${encodeURIComponent(state.run)}/resume`, { epochs: num("run-more") }); say("training further", true); }
  } catch (e) { say(e.message); } finally { buttons.forEach((b) => { b.disabled = false; }); }
  setTimeout(refreshRuns, 500);
}

// -- 4. predict ----------------------------------------------------------------------------------------------
function renderPredictRuns() {
  const trained = state.runs.filter((r) => r.has_checkpoint);
  const box = $("predict-runs");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  if (!checked.size && state.run) checked.add(state.run);
  box.replaceChildren(...(trained.length ? trained.map((r) => el("label", {}, el("input", { type: "checkbox", value: r.id, checked: checked.has(r.id) }),
    ` ${r.id} `, el("span", { class: "hint", text: `${r.status}, ${r.epochs_done} epochs` + (r.best && r.best.val_dice !== undefined ? `, best Dice ${r.best.val_dice.toFixed(3)}` : "") })))
    : [el("p", { class: "help", text: "No trained run yet." })]));
}

async function predict() {
  const runs = [...$("predict-runs").querySelectorAll("input:checked")].map((i) => i.value);
  const fast = $("predict-fast").checked;  // fast mode chooses its own flips (none)
  const body = { runs, input: $("predict-input").value.trim(), tta: fast ? null : $("predict-tta").checked, fast, device: $("predict-device").value || "auto" };
  if (!runs.length) { say("choose at least one run"); return; }
  if (!body.input) { say("choose the images to segment"); return; }
  try {
    const result = await api("predict", body);
    state.lastPrediction = { id: result.predictions, folder: result.folder, input: body.input };
    $("predict-result").hidden = true;
    followJob(result.job.id, $("predict-state"), renderPrediction);
  } catch (e) { say(e.message); }
}

function renderPrediction(job) {
  const pid = job.target.predictions;
  const folder = state.info.runs_dir + "/predictions/" + pid;
  $("predict-result").hidden = false;
  $("predict-zip").setAttribute("href", `api/predictions/${encodeURIComponent(pid)}/download`);
  $("eval-pred").value = folder;
  $("predict-files").querySelector("tbody").replaceChildren(...job.files.map((f) => el("tr", {},
    el("td", {}, el("a", { href: `api/predictions/${encodeURIComponent(pid)}/files/${f.name.split("/").map(encodeURIComponent).join("/")}`, download: basename(f.name), class: "mask-link" }, f.name)),
    el("td", { class: "num", text: `${(f.size / 1024).toFixed(1)} KiB` }),
    el("td", {}, el("button", { type: "button", onclick: () => showPreview($("predict-preview"), job.target.input.endsWith(f.name) ? job.target.input : job.target.input + "/" + f.name, folder + "/" + f.name, f.name + " with its prediction") }, "Preview")))));
}

// Poll a job until it ends; ``done`` gets the finished job.
function followJob(id, line, done) {
  clearTimeout(state.timers["job-" + line.id]);
  // a tick of the job this line followed before may be on its way: it ends there instead of re-arming
  const turn = state.following[line.id] = (state.following[line.id] || 0) + 1;
  const tick = async () => {
    let job;
    try { job = await api("jobs/" + encodeURIComponent(id)); } catch (e) {
      if (turn !== state.following[line.id]) return;
      line.textContent = e.message;
      if (transient(e)) state.timers["job-" + line.id] = setTimeout(tick, RETRY_MS);
      return;
    }
    if (turn !== state.following[line.id]) return;
    const last = (job.log || []).slice(-1)[0] || "";
    line.replaceChildren(el("span", { class: "status status-" + job.state, text: job.state }), " " + job.title + (job.state === "running" ? " — " + last : job.message ? " — " + job.message : ""));
    if (job.state === "queued" || job.state === "running") state.timers["job-" + line.id] = setTimeout(tick, JOB_POLL_MS);
    else if (job.state === "done") done(job);
  };
  tick();
}

// -- 5. evaluate ---------------------------------------------------------------------------------------------
async function evaluate() {
  const body = { pred: $("eval-pred").value.trim(), truth: $("eval-truth").value.trim(), distances: $("eval-distances").checked };
  if (!body.pred || !body.truth) { say("choose the predicted masks and the ground-truth masks"); return; }
  try {
    const result = await api("eval", body);
    $("eval-result").replaceChildren();
    followJob(result.job.id, $("eval-state"), (job) => $("eval-result").replaceChildren(job.eval ? evalTable(job.eval) : el("p", { class: "error", text: "the evaluation wrote no table" })));
  } catch (e) { say(e.message); }
}

function evalTable(report) {
  const metrics = [["dice", "Dice"], ["iou", "IoU"]];
  if (report.unit) metrics.push(["hd95", `HD95 (${report.unit})`], ["assd", `ASSD (${report.unit})`]);
  const shown = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(4)); // a distance with one mask empty
  const rows = report.rows.map((r) => el("tr", {}, el("td", { text: r.file }), el("td", { text: r.class }),
    ...metrics.map(([key]) => el("td", { class: "num", text: shown(r[key]) }))));
  rows.push(el("tr", {}, el("th", { text: "mean" }), el("th", { text: "all" }),
    ...metrics.map(([key]) => el("th", { class: "num", text: shown(report.mean[key]) }))));
  const head = ["file", "class", ...metrics.map(([, title]) => title)];
  return el("table", { class: "eval" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))), el("tbody", {}, rows));
}

// -- start ---------------------------------------------------------------------------------------------------
async function start() {
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  setupBrowser(); setupUploads();
  $("scan").addEventListener("click", scan);
  $("to-train").addEventListener("click", () => showTab("train"));
  $("train-form").addEventListener("submit", startTraining);
  for (const i of [0, 1, 2]) $("patch-" + i).addEventListener("change", patchChanged);
  $("yaml-fill").addEventListener("click", yamlFill);
  $("yaml-validate").addEventListener("click", () => yamlValidate().catch((e) => say(e.message)));
  $("run-stop").addEventListener("click", () => runAction("stop"));
  $("run-resume").addEventListener("click", () => runAction("resume"));
  $("run-extend").addEventListener("click", () => runAction("extend"));
  $("run-predict").addEventListener("click", () => showTab("predict"));
  $("snapshot-epoch").addEventListener("change", () => { $("snapshot-epoch").dataset.follow = "0"; const run = state.runs.find((r) => r.id === state.run); if (run) renderSnapshots({ ...run, snapshots: run.snapshots }); });
  $("predict").addEventListener("click", predict);
  $("evaluate").addEventListener("click", evaluate);
  try { state.info = await api("info"); } catch (e) { say(e.message); return; }
  $("server-info").textContent = `biom3d-gui ${state.info.version} · runs in ${state.info.runs_dir}`;
  $("stack").replaceChildren(...state.info.stacks.map((s, i) => el("option", { value: s.id, title: s.summary, selected: i === 0 }, s.id)));
  for (const id of ["device", "predict-device"]) $(id).replaceChildren(...state.info.devices.map((d) => el("option", { value: d }, d)));
  const tab = location.hash.slice(1);
  showTab(["data", "train", "runs", "predict", "evaluate"].includes(tab) ? tab : "data");
  const busy = (await refreshRuns()).filter((r) => r.status === "running" || r.status === "queued");
  if (busy.length && tab !== "runs") say(`${busy.length} training(s) going on: see the Runs tab (${busy.map((r) => r.id).join(", ")})`, true);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
