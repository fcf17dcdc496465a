// convlayers explorer, the Arithmetic panel: the sliding plan, the numbers and each window's
// sum, all computed by the server (/api/playground). Loaded after app.js, whose helpers
// ($, api, el, svg, query, showError) it uses; app.js calls setupPlayground() on load.
"use strict";

// ---------------------------------------------------------------------------------- playground
const pg = { data: null, step: 0, timer: null, asked: 0 };

function playgroundParams() {
  return {
    op: $("pg-op").value, input: $("pg-input").value, kernel: $("pg-kernel").value,
    stride: $("pg-stride").value, padding: $("pg-padding").value, dilation: $("pg-dilation").value,
    output_padding: $("pg-op").value === "conv_transpose" ? $("pg-output-padding").value : "",
    ceil_mode: $("pg-op").value.endsWith("_pool") && $("pg-ceil").checked ? "true" : "",
    input_values: rowsText($("pg-values").value),
    kernel_values: $("pg-op").value.endsWith("_pool") ? "" : rowsText($("pg-weights").value),
  };
}

// Numbers typed with new lines are sent as rows separated by ';' (the CLI's syntax).
function rowsText(text) {
  return text.trim().split(/\s*[\n;]+\s*/).filter((row) => row !== "").join(";");
}

function numbersText(rows) {
  return rows.map((row) => row.map((v) => +v.toFixed(4)).join(" ")).join("\n");
}

function fmt(v) {
  if (v === null || v === undefined) return "";
  return String(+(+v).toPrecision(3));
}

function updateOpControls() {
  const op = $("pg-op").value;
  const section = $("arithmetic");
  section.classList.toggle("show-pool", op.endsWith("_pool"));
  section.classList.toggle("show-transpose", op === "conv_transpose");
}

async function computePlayground() {
  stopPlaying();
  const ticket = ++pg.asked; // only the latest question's answer is drawn
  $("arithmetic").setAttribute("aria-busy", "true"); // until that answer is drawn
  let data;
  try {
    const response = await api(`/api/playground?${query(playgroundParams())}`);
    data = await response.json();
  } catch (e) {
    if (ticket !== pg.asked) return;
    showError($("pg-error"), e);
    $("pg-result").hidden = true;
    $("arithmetic").setAttribute("aria-busy", "false");
    return;
  }
  if (ticket !== pg.asked) return;
  showError($("pg-error"), null);
  pg.data = data;
  const d = pg.data;
  $("pg-size").textContent = `${d.output_size[0]} x ${d.output_size[1]}`;
  $("pg-formula").textContent = d.formula;
  $("pg-filled").textContent = d.filled[0];
  $("pg-grid-caption").textContent = d.op === "conv_transpose"
    ? "zero-inserted, padded input: the kernel slides here with stride 1, flipped"
    : "input with its padding";
  $("pg-result").hidden = false;
  pg.step = 0;
  drawPlayground();
  $("arithmetic").setAttribute("aria-busy", "false");
}

function cellSize(rows, cols) {
  return Math.max(8, Math.min(36, Math.floor(440 / Math.max(rows, cols))));
}

function drawGrid(container, rows, cols, cls, size, label) {
  const root = svg("svg", { width: cols * size + 2, height: rows * size + 2 });
  const cells = [];
  for (let r = 0; r < rows; r++) {
    cells.push([]);
    for (let c = 0; c < cols; c++) {
      const kind = cls(r, c);
      const rect = svg("rect", { x: c * size + 1, y: r * size + 1, width: size, height: size, class: `cell ${kind}` });
      root.append(rect);
      cells[r].push(rect);
      const text = label ? label(r, c) : "";
      if (text !== "" && size >= 16) {
        const t = svg("text", { x: c * size + 1 + size / 2, y: r * size + 1 + size / 2,
          class: kind === "pad" || kind === "zero" ? "num muted" : "num" });
        t.textContent = text;
        root.append(t);
      }
    }
  }
  container.replaceChildren(root);
  return { root, cells };
}

function drawPlayground() {
  const plan = pg.data.plan;
  const frames = plan.frames;
  const frame = frames[pg.step];
  const [gr, gc] = plan.grid_shape;
  const size = cellSize(gr, gc);
  const d = pg.data;
  const grid = drawGrid($("pg-grid"), gr, gc, (r, c) => plan.cells[r][c], size,
    (r, c) => fmt(d.grid[r][c]));
  const inWindow = new Set(frame.window.map(([r, c]) => `${r},${c}`));
  for (const [r, c] of frame.window) {
    grid.root.append(svg("rect", { x: c * size + 1, y: r * size + 1, width: size, height: size, class: "window" }));
  }
  grid.root.dataset.window = String(inWindow.size);
  const [or, oc] = plan.output_shape;
  const osize = cellSize(or, oc);
  const done = frame.index;
  drawGrid($("pg-out"), or, oc, (r, c) => {
    const k = r * oc + c;
    return k < done ? "done" : k === done ? "current" : "todo";
  }, osize, (r, c) => (r * oc + c <= done ? fmt(d.output[r][c]) : ""));
  if (d.kernel) {
    const [kh, kw] = plan.kernel_size;
    const shown = plan.kernel_flipped ? d.kernel.map((row) => row.slice().reverse()).reverse() : d.kernel;
    drawGrid($("pg-kernel-grid"), kh, kw, () => "current", cellSize(kh, kw), (r, c) => fmt(shown[r][c]));
    $("pg-kernel-caption").textContent = plan.kernel_flipped ? "kernel, flipped" : "kernel";
  } else {
    $("pg-kernel-grid").replaceChildren(el("p", { class: "size", text: plan.op === "max_pool" ? "max" : "mean" }));
    $("pg-kernel-caption").textContent = `${plan.kernel_size.join("x")} window`;
  }
  $("pg-sum").textContent = d.sums[pg.step];
  const kindsDrawn = new Set(plan.cells.flat());
  $("pg-legend-pad").hidden = !kindsDrawn.has("pad"); // the legend names only what is drawn
  $("pg-legend-zero").hidden = !kindsDrawn.has("zero");
  const rows = frame.window.map((w) => w[0]);
  const cols = frame.window.map((w) => w[1]);
  const kinds = {};
  for (const [r, c] of frame.window) kinds[plan.cells[r][c]] = (kinds[plan.cells[r][c]] || 0) + 1;
  const kindText = Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ");
  $("pg-step").textContent = `window ${frame.index + 1} of ${frames.length}`;
  $("pg-caption").textContent =
    `out[${frame.out_cell[0]},${frame.out_cell[1]}] reads grid rows ${Math.min(...rows)}..${Math.max(...rows)}, ` +
    `cols ${Math.min(...cols)}..${Math.max(...cols)} (${kindText} cells)` +
    (plan.kernel_flipped ? "; the kernel is applied flipped" : "");
}

function stepTo(k) {
  if (!pg.data) return;
  const n = pg.data.plan.frames.length;
  pg.step = ((k % n) + n) % n;
  drawPlayground();
}

function stopPlaying() {
  if (pg.timer) clearInterval(pg.timer);
  pg.timer = null;
  $("pg-play").textContent = "play";
}

function setupPlayground() {
  $("pg-op").addEventListener("change", () => { updateOpControls(); computePlayground(); });
  for (const id of ["pg-input", "pg-kernel", "pg-stride", "pg-padding", "pg-dilation", "pg-output-padding", "pg-ceil"]) {
    $(id).addEventListener("change", computePlayground);
  }
  $("pg-compute").addEventListener("click", computePlayground);
  for (const id of ["pg-values", "pg-weights"]) $(id).addEventListener("change", computePlayground);
  $("pg-edit").addEventListener("click", () => {
    if (!pg.data) return;
    $("pg-values").value = numbersText(pg.data.input);
    if (pg.data.kernel) $("pg-weights").value = numbersText(pg.data.kernel);
  });
  $("pg-first").addEventListener("click", () => { stopPlaying(); stepTo(0); });
  $("pg-prev").addEventListener("click", () => { stopPlaying(); stepTo(pg.step - 1); });
  $("pg-next").addEventListener("click", () => { stopPlaying(); stepTo(pg.step + 1); });
  $("pg-play").addEventListener("click", () => {
    if (pg.timer) { stopPlaying(); return; }
    $("pg-play").textContent = "pause";
    pg.timer = setInterval(() => stepTo(pg.step + 1), 600);
  });
  updateOpControls();
  computePlayground();
}
