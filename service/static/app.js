// ganserve's page: a playground for /generate and /interpolate, and a dashboard of /train.
// Plain JavaScript, no build step; every request goes to the API that served this page.
"use strict";

const $ = (id) => document.getElementById(id);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const KEY_STORAGE = "ganserve-api-key";

/** A query string of the params that are set. */
function query(params) {
  const set = Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined);
  return new URLSearchParams(set.map(([k, v]) => [k, String(v)])).toString();
}

/** The API's error (`{"error", "message", "detail"}`) as text, with one line per invalid field. */
async function errorText(response) {
  try {
    const body = await response.json();
    if (response.status === 422 && Array.isArray(body.detail) && body.detail.length) {
      return body.detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${e.msg}`);
    }
    return [body.message || `${response.status} ${response.statusText}`];
  } catch {
    return [`${response.status} ${response.statusText}`];
  }
}

/** Show `url` in `img`; when it fails, the API's reason in `status`. */
function showImage(img, url, status) {
  img.onload = () => { img.hidden = false; };
  img.onerror = async () => {
    img.hidden = true;
    const response = await fetch(url);
    status.textContent = (await errorText(response)).join("; ");
  };
  img.src = url;
}

// --- tabs ------------------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectTab(tab) {
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  tab.focus();
  if (tab.id === "tab-train") loadJobs();
}

tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length]);
  });
});

// --- playground ------------------------------------------------------------------------------------

let models = [];

function currentModel() {
  return models.find((m) => m.name === $("model").value);
}

async function loadModels(select) {
  const response = await fetch("/models");
  if (!response.ok) {
    $("play-status").textContent = (await errorText(response)).join("; ");
    return;
  }
  // A model with no servable version (`latest_version` null: every version damaged) cannot be played with.
  models = (await response.json()).models.filter((m) => m.kind !== "points" && m.latest_version !== null);
  const picker = $("model");
  const keep = select || picker.value;
  picker.replaceChildren(
    ...models.map((m) => {
      const fid = m.card && typeof m.card.fid === "number" ? `, FID ${m.card.fid.toFixed(1)}` : "";
      return new Option(`${m.name} (v${m.latest_version}${m.conditional ? ", conditional" : ""}${fid})`, m.name);
    }),
  );
  if (models.some((m) => m.name === keep)) picker.value = keep;
  if (!models.length) $("play-status").textContent = "No image model is served yet: train one in the Training tab.";
  modelChanged();
}

/** A model's card in brief (GET /models' `card`) as three lines: its recipe, its sample quality next to what
 * real data scores at the same n, and where the figures come from. */
function cardLines(card) {
  const c = card || {};
  const num = (x, digits) => (typeof x === "number" ? x.toFixed(digits) : "–");
  let quality = "FID not measured";
  if (typeof c.fid === "number" || typeof c.precision === "number") {
    const floor = typeof c.fid_floor === "number"
      ? `real data: ${num(c.fid_floor, 1)} at n = ${c.n}`
      : `at n = ${c.n}; real data not measured at this n`;
    quality = `FID ${num(c.fid, 1)} (${floor}); precision ${num(c.precision, 2)}, recall ${num(c.recall, 2)}`;
    if (c.extractor) quality += ` (${c.extractor} features)`;
  }
  let source = "none";
  if (c.source === "evaluation") source = "the newest evaluation of this version (POST /models/{name}/evaluate)";
  else if (c.source) source = `model card ${c.source} (in the repository; not served here)`;
  return { recipe: c.recipe || "none named", quality, source };
}

function showCard(model) {
  $("model-card").hidden = !model;
  if (!model) return;
  const lines = cardLines(model.card);
  $("card-recipe").textContent = lines.recipe;
  $("card-quality").textContent = lines.quality;
  $("card-source").textContent = lines.source;
}

function modelChanged() {
  const model = currentModel();
  showCard(model);
  const labels = $("label");
  const classes = model && model.conditional ? model.num_classes || 0 : 0;
  $("label-field").hidden = classes === 0;
  labels.replaceChildren(new Option("any (seed mod classes)", ""));
  for (let c = 0; c < classes; c++) labels.add(new Option(String(c), String(c)));
  generate();
}

function generate() {
  const model = currentModel();
  if (!model) return;
  const seed = Number($("seed").value);
  $("play-status").textContent = "";
  const params = { model: model.name, seed, label: $("label").value };
  const url = `/generate?${query(params)}`;
  showImage($("image"), url, $("play-status"));
  $("download").href = url;
  $("download").download = `${model.name}-${seed}.png`;
  showImage($("grid"), `/generate?${query({ ...params, count: 16 })}`, $("play-status"));
  $("grid-seeds").textContent = `${seed} … ${seed + 15}`;
  $("curl").textContent = `curl -o ${model.name}-${seed}.png '${location.origin}${url}'`;
  if ($("interp-curl").textContent) interpolate(); // keep the interpolation of the model shown
}

$("play-form").addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
$("model").addEventListener("change", modelChanged);
$("label").addEventListener("change", generate);
$("seed").addEventListener("change", generate);
$("roll").addEventListener("click", () => {
  $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
  generate();
});

function interpolate() {
  const model = currentModel();
  if (!model) return;
  $("interp-status").textContent = "";
  const params = {
    model: model.name, from: $("from").value, to: $("to").value, steps: $("steps").value, label: $("label").value,
  };
  const strip = `/interpolate?${query({ ...params, format: "png" })}`;
  const anim = `/interpolate?${query({ ...params, format: $("anim-format").value })}`;
  showImage($("strip"), strip, $("interp-status"));
  showImage($("anim"), anim, $("interp-status"));
  $("interp-curl").textContent =
    `curl -o strip.png '${location.origin}${strip}'\ncurl -o animation.${$("anim-format").value} '${location.origin}${anim}'`;
}

$("interp-form").addEventListener("submit", (e) => {
  e.preventDefault();
  interpolate();
});

// --- training --------------------------------------------------------------------------------------

$("key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
  loadJobs();
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  $("key").dispatchEvent(new Event("change"));
});
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  $("key").value = "";
});

/** fetch() with the API key in the Authorization header (never in a URL). */
function authFetch(path, options = {}) {
  const key = $("key").value.trim();
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(path, { ...options, headers });
}

$("train-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const body = {};
  for (const [name, value] of form) {
    if (value === "") continue;
    body[name] = e.target.elements[name].type === "number" ? Number(value) : value;
  }
  if ("steps" in body) delete body.epochs; // steps replace epochs
  const errors = $("train-errors");
  errors.replaceChildren();
  const response = await authFetch("/train", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status !== 202) {
    const list = document.createElement("ul");
    for (const line of await errorText(response)) list.append(Object.assign(document.createElement("li"), { textContent: line }));
    errors.append(list);
    return;
  }
  const job = await response.json();
  $("jobs-status").textContent = `Job ${job.id.slice(0, 8)} queued.`;
  updateRow(job);
  watch(job.id);
});

$("refresh-jobs").addEventListener("click", loadJobs);

/** The recipe picker: GET /recipes, each with what it reached here (or "not measured yet"); its fields are the
 * job's defaults, and a field filled in on the form overrides them. Left at "the dataset's default", the server
 * picks the dataset's best measured recipe. */
async function loadRecipes() {
  const response = await fetch("/recipes");
  if (!response.ok) return; // a private server answers 401 without a generate key: the default stays
  const picker = $("recipe");
  const known = await response.json();
  for (const r of known.recipes) {
    const fid = r.quality && r.quality.metrics.fid;
    const q = r.quality ? `FID ${typeof fid === "number" ? fid : "–"} at n = ${r.quality.samples}` : "not measured yet";
    const option = new Option(`${r.name} (${r.datasets.join(", ")}; ${q})`, r.name);
    option.title = r.description;
    picker.add(option);
  }
  const defaults = Object.entries(known.defaults).map(([dataset, name]) => `${dataset}: ${name}`);
  if (defaults.length) picker.options[0].textContent = `the dataset's default (${defaults.join(", ")})`;
}

async function loadJobs() {
  if (!$("key").value.trim()) {
    $("jobs-status").textContent = "Enter an API key to see the jobs.";
    return;
  }
  const response = await authFetch("/train");
  if (!response.ok) {
    $("jobs-status").textContent = (await errorText(response)).join("; ");
    return;
  }
  const { jobs } = await response.json();
  $("jobs-status").textContent = jobs.length ? `${jobs.length} job${jobs.length > 1 ? "s" : ""}.` : "No jobs yet.";
  for (const job of [...jobs].reverse()) {
    updateRow(job);
    if (!FINISHED.has(job.status)) watch(job.id);
  }
}

function cell(text) {
  return Object.assign(document.createElement("td"), { textContent: text });
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(3) : "–";
}

/** The job's row, made or brought up to date (newest first). */
function updateRow(job) {
  const tbody = $("jobs").tBodies[0];
  let row = tbody.querySelector(`tr[data-id="${job.id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = job.id;
    tbody.prepend(row);
  }
  const p = job.progress;
  const progress = document.createElement("progress");
  progress.max = 1;
  progress.value = job.status === "succeeded" ? 1 : p ? p.fraction : 0;
  progress.setAttribute("aria-label", `Progress of job ${job.id.slice(0, 8)}`);
  const progressCell = cell(p ? ` epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.total_steps}` : "");
  progressCell.prepend(progress);
  const status = cell(job.status);
  status.className = `job-status ${job.status}`;
  if (job.error) status.title = job.error;
  const actions = document.createElement("td");
  const show = Object.assign(document.createElement("button"), { type: "button", textContent: "Details" });
  show.addEventListener("click", () => showDetail(job.id));
  actions.append(show);
  if (!FINISHED.has(job.status)) {
    const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
    cancel.addEventListener("click", () => cancelJob(job.id));
    actions.append(cancel);
  }
  const losses = job.metrics || {};
  row.replaceChildren(
    cell(job.id.slice(0, 8)),
    cell(job.config.model_name + (job.model ? ` → v${job.model.version}` : "")),
    status,
    progressCell,
    cell(`D ${fmt(losses.d_loss)}  G ${fmt(losses.g_loss)}`),
    actions,
  );
  row.dataset.status = job.status;
  if (detailId === job.id) refreshDetail(job);
}

async function cancelJob(id) {
  const response = await authFetch(`/train/${id}`, { method: "DELETE" });
  if (response.ok) updateRow(await response.json());
  else $("jobs-status").textContent = (await errorText(response)).join("; ");
}

// Live progress: GET /train/{id}/events read with fetch() streaming, so the key stays in a header.
const watching = new Map();

async function watch(id) {
  if (watching.has(id)) return;
  const controller = new AbortController();
  watching.set(id, controller);
  let finished = false;
  try {
    const response = await authFetch(`/train/${id}/events`, { signal: controller.signal });
    if (!response.ok) throw new Error((await errorText(response)).join("; "));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event.data || event.type !== "message") continue;
        const job = JSON.parse(event.data);
        updateRow(job);
        const row = $("jobs").querySelector(`tr[data-id="${id}"]`);
        if (row) row.dataset.events = event.id;
        if (FINISHED.has(job.status)) {
          finished = true;
          if (job.status === "succeeded" && job.model) {
            $("jobs-status").textContent = `${job.model.name} v${job.model.version} is served: try it in the Playground.`;
            loadModels();
          }
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") $("jobs-status").textContent = `Live updates of ${id.slice(0, 8)} stopped: ${err.message}`;
  } finally {
    watching.delete(id);
  }
  if (!finished && !controller.signal.aborted) setTimeout(() => watch(id), 2000); // the stream broke: resume
}

function parseEvent(block) {
  const event = { type: "message", data: "", id: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") event.data += (event.data ? "\n" : "") + value;
    else if (field === "event") event.type = value;
    else if (field === "id") event.id = value;
  }
  return event;
}

// The selected job's loss curve and latest sample grid: fetched with the key, shown as blob URLs.
let detailId = null;
let detailShown = "";

async function showDetail(id) {
  detailId = id;
  detailShown = "";
  const response = await authFetch(`/train/${id}`);
  if (response.ok) refreshDetail(await response.json());
}

async function authImage(img, path) {
  const response = await authFetch(path);
  if (!response.ok) {
    img.hidden = true;
    return;
  }
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await response.blob());
  img.hidden = false;
}

function refreshDetail(job) {
  $("job-detail").hidden = false;
  $("detail-id").textContent = `${job.id} (${job.config.model_name}, ${job.status})`;
  const shown = `${job.id}:${job.history.length}:${job.samples.length}`;
  if (shown === detailShown) return;
  detailShown = shown;
  if (job.history.length) authImage($("loss-plot"), `/train/${job.id}/plots/losses.png`);
  else $("loss-plot").hidden = true;
  // Quality curves once an evaluation has measured FID (jobs on tiny datasets skip it, and say why).
  const evaluated = job.history.some((e) => e.evaluation && typeof e.evaluation.fid === "number");
  $("fid-figure").hidden = !evaluated;
  if (evaluated) authImage($("fid-plot"), `/train/${job.id}/plots/fid.png`);
  const epochs = job.samples.map((s) => Number((s.match(/epoch-(\d+)\.png$/) || [])[1])).filter(Boolean);
  const select = $("sample-epoch");
  const wanted = select.dataset.job === job.id ? Number(select.value) : 0;
  select.dataset.job = job.id;
  select.replaceChildren(...[...epochs].sort((a, b) => b - a).map((e) => new Option(String(e), String(e))));
  select.hidden = !epochs.length;
  if (epochs.length) {
    select.value = String(epochs.includes(wanted) ? wanted : Math.max(...epochs));
    showSamples(job.id, Number(select.value));
  } else {
    $("samples").hidden = true;
  }
}

// The sample grid of one epoch (every `sample_every` epochs has one).
function showSamples(jobId, epoch) {
  $("samples-caption").textContent = `Samples after epoch ${epoch} (seeds 0–63)`;
  authImage($("samples"), `/train/${jobId}/samples/${epoch}.png`);
}

$("sample-epoch").addEventListener("change", (event) => {
  showSamples(event.target.dataset.job, Number(event.target.value));
});

loadModels();
loadRecipes();
