// convlayers explorer: draws what the server computes. No framework, no build step, nothing
// fetched from anywhere but this server. Every number and pixel comes from the /api endpoints.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

async function api(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(element, error) {
  if (error) {
    element.textContent = error.message || String(error);
    element.hidden = false;
  } else {
    element.textContent = "";
    element.hidden = true;
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// The image a panel works on: the chosen upload as the request body, or the bundled sample.
function imageRequest(sourceName, fileInput) {
  const source = document.querySelector(`input[name=${sourceName}]:checked`).value;
  if (source === "upload") {
    const file = fileInput.files[0];
    if (!file) throw new Error("choose an image file to upload, or pick the sample photo");
    return { body: file, params: {}, label: file.name.replace(/\.[^.]*$/, "") };
  }
  return { body: null, params: { sample: "chelsea" }, label: "chelsea" };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

async function postImage(url, image, params) {
  const response = await api(`${url}?${query({ ...image.params, ...params })}`, {
    method: "POST",
    body: image.body,
    headers: { "Content-Type": "application/octet-stream" },
  });
  return response;
}

// ---------------------------------------------------------------------------------- tabs
function setupTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === tab.dataset.panel);
    });
  }
}

// ---------------------------------------------------------------------------------- filters
const blobUrls = [];

function pictureFigure(title, blob, fileName, dataName) {
  const url = URL.createObjectURL(blob);
  blobUrls.push(url);
  const img = el("img", { src: url, alt: title, "data-filter": dataName });
  const link = el("a", { href: url, download: fileName, text: "Download PNG" });
  return el("figure", {}, img, el("figcaption", {}, el("span", { text: title }), link));
}

function kernelText(kernel) {
  return kernel.map((row) => row.map((v) => +v.toFixed(3)).join(" ")).join("\n");
}

async function setupFilters() {
  const catalog = await (await api("/api/filters")).json();
  const bank = $("f-bank");
  for (const [name, kernel] of Object.entries(catalog.filters)) {
    const box = el("input", { type: "checkbox", value: name, id: `f-bank-${name}` });
    if (name === "sobel_x" || name === "blur") box.checked = true;
    bank.append(el("label", { title: kernelText(kernel) }, box, ` ${name}`));
  }
  const fill = (id, values, chosen) => {
    for (const v of values) $(id).append(el("option", { value: v, text: v }));
    $(id).value = chosen;
  };
  fill("f-mode", catalog.modes, "same");
  fill("f-boundary", catalog.boundaries, "symm");
  fill("f-scale", catalog.scales, "auto");
  $("f-file").addEventListener("change", () => {
    document.querySelector("input[name=f-source][value=upload]").checked = true;
  });
  $("f-apply").addEventListener("click", applyFilters);
  await applyFilters(); // open with results: the default filters on the sample photo
}

async function applyFilters() {
  const error = $("f-error");
  const results = $("f-results");
  const status = $("f-status");
  showError(error, null);
  let image;
  try {
    image = imageRequest("f-source", $("f-file"));
  } catch (e) {
    showError(error, e);
    return;
  }
  const names = [...document.querySelectorAll("#f-bank input:checked")].map((b) => b.value);
  const kernel = $("f-kernel").value.trim();
  if (!names.length && !kernel) {
    showError(error, new Error("pick at least one filter or type a kernel"));
    return;
  }
  const options = {
    mode: $("f-mode").value, boundary: $("f-boundary").value, scale: $("f-scale").value,
    gray: $("f-gray").checked ? "true" : "",
  };
  $("f-apply").disabled = true;
  status.textContent = "computing…";
  const figures = [];
  try {
    const original = await postImage("/api/image", image, { gray: options.gray });
    figures.push(pictureFigure("original", await original.blob(), `${image.label}.png`, "original"));
    const jobs = names.map((n) => ({ title: n, params: { filter: n } }));
    if (kernel) jobs.push({ title: "your kernel", params: { kernel }, name: "kernel" });
    for (const job of jobs) {
      const response = await postImage("/api/filter", image, { ...options, ...job.params });
      const name = job.name || job.title;
      figures.push(pictureFigure(job.title, await response.blob(), `${image.label}_${name}.png`, name));
    }
    results.replaceChildren(...figures);
    status.textContent = `${jobs.length} filter(s) applied`;
    results.dataset.done = String(Date.now());
  } catch (e) {
    showError(error, e);
    status.textContent = "";
    if (figures.length) results.replaceChildren(...figures);
  } finally {
    $("f-apply").disabled = false;
  }
}

// ---------------------------------------------------------------------------------- networks
async function setupNetworks() {
  const select = $("n-model");
  const note = $("n-model-note");
  const { models } = await (await api("/api/models")).json();
  const notes = [];
  for (const m of models) {
    const option = el("option", { value: m.id, text: m.available ? m.title : `${m.title} (not available)` });
    if (!m.available) {
      option.disabled = true;
      notes.push(`${m.id}: ${m.reason}`);
    }
    select.append(option);
  }
  note.textContent = notes.join(" · ");
  const first = models.find((m) => m.available);
  for (const id of ["n-classify", "n-summary", "n-features", "n-kernels"]) $(id).disabled = !first;
  if (!first) {
    showError($("n-error"), new Error("no model is available: see the notes above"));
    return;
  }
  select.value = first.id;
  select.addEventListener("change", loadLayers);
  $("n-file").addEventListener("change", () => {
    document.querySelector("input[name=n-source][value=upload]").checked = true;
  });
  $("n-classify").addEventListener("click", () => guarded(classify));
  $("n-summary").addEventListener("click", () => guarded(showSummary));
  $("n-features").addEventListener("click", () => guarded(showFeatures));
  $("n-kernels").addEventListener("click", () => guarded(showKernels));
  await guarded(loadLayers);
}

async function guarded(action) {
  showError($("n-error"), null);
  try {
    await action();
  } catch (e) {
    showError($("n-error"), e);
  }
}

async function loadLayers() {
  const model = $("n-model").value;
  const { layers } = await (await api(`/api/models/${encodeURIComponent(model)}/layers`)).json();
  const select = $("n-layer");
  select.replaceChildren();
  for (const layer of layers) {
    const shape = layer.weight_shape ? ` ${layer.weight_shape.join("x")}` : "";
    select.append(el("option", { value: layer.name, "data-conv": layer.conv ? "1" : "", text: `${layer.name} (${layer.type}${shape})` }));
  }
  const firstConv = layers.find((l) => l.conv);
  if (firstConv) select.value = firstConv.name;
}

async function classify() {
  const image = imageRequest("n-source", $("n-file"));
  const model = encodeURIComponent($("n-model").value);
  const { top } = await (await postImage(`/api/models/${model}/classify`, image, { top: 5 })).json();
  const body = $("n-top").querySelector("tbody");
  body.replaceChildren(...top.map((t, k) => el("tr", {},
    el("td", { text: String(k + 1) }), el("td", { text: t.name }), el("td", { class: "num", text: String(t.index) }),
    el("td", { class: "num", text: `${(100 * t.probability).toFixed(2)} %` }))));
  $("n-top").hidden = false;
}

async function showFeatures() {
  const image = imageRequest("n-source", $("n-file"));
  const model = encodeURIComponent($("n-model").value);
  const layer = $("n-layer").value;
  const response = await postImage(`/api/models/${model}/features`, image, { layer, name: image.label });
  $("n-pictures").replaceChildren(pictureFigure(`feature maps of ${layer}`, await response.blob(), `features_${layer}.png`, "features"));
  $("n-pictures").classList.add("wide");
}

async function showKernels() {
  const model = encodeURIComponent($("n-model").value);
  const layer = $("n-layer").value;
  const response = await api(`/api/models/${model}/kernels?${query({ layer })}`);
  $("n-pictures").replaceChildren(pictureFigure(`kernels of ${layer}`, await response.blob(), `kernels_${layer}.png`, "kernels"));
  $("n-pictures").classList.add("wide");
}

async function showSummary() {
  const model = encodeURIComponent($("n-model").value);
  const { rows } = await (await api(`/api/models/${model}/summary`)).json();
  const head = el("tr", {}, ...["layer", "type", "output shape", "parameters", "multiply-adds"].map((h) => el("th", { text: h })));
  const fmt = (v) => (typeof v === "number" ? v.toLocaleString("en-US") : Array.isArray(v) ? v.join(" x ") : String(v ?? ""));
  const body = rows.map((r) => el("tr", {}, el("td", { text: r.name }), el("td", { text: r.type }),
    el("td", { text: fmt(r.output_shape) }), el("td", { class: "num", text: fmt(r.params) }),
    el("td", { class: "num", text: fmt(r.macs) })));
  $("n-summary-box").replaceChildren(el("table", { class: "table", id: "n-summary-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
}

// ---------------------------------------------------------------------------------- start
document.addEventListener("DOMContentLoaded", async () => {
  setupTabs();
  setupPlayground();
  try {
    await setupFilters();
  } catch (e) {
    showError($("f-error"), e);
  }
  try {
    await setupNetworks();
  } catch (e) {
    showError($("n-error"), e);
  }
  document.body.dataset.ready = "1";
});
