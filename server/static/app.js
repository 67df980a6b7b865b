// Watch the search: POST /solve and /generate with "stream": true, drawn as the Server-Sent Events arrive.
// No dependencies and no build step (issue 17); the event fields are documented in server/stream.py.
"use strict";

const $ = (id) => document.getElementById(id);
const PUZZLES = {
  "README's puzzle (easy)": "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79",
  "Inkala 2012 (hard)": "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..",
  "AI Escargot (hard)": "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
  "17 clues": "...8.1..........435............7.8........1...2..3....6......75..34........2..6..",
};
const COLORS = { "best q": "#1d4ed8", "mean agreement": "#16803d", "commit depth": "#b54708" };
let cells = [];
let series = {};
let controller = null;

// -- the grid ------------------------------------------------------------------------------------------------------

function buildGrid(rows, cols) {
  $("grid").className = "";
  cells = fillGrid($("grid"), rows, cols);
}

// rows x cols cells in `grid` (Sudoku's boxes ruled), returned in reading order
function fillGrid(grid, rows, cols) {
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `repeat(${cols}, auto)`;
  const boxes = rows === 9 && cols === 9;
  const made = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const cell = document.createElement("div");
      cell.className = "cell";
      cell.setAttribute("role", "gridcell");
      if (boxes && c % 3 === 2 && c < 8) cell.classList.add("box-right");
      if (boxes && r % 3 === 2 && r < 8) cell.classList.add("box-bottom");
      grid.appendChild(cell);
      made.push(cell);
    }
  }
  return made;
}

// With `solutions`: the distinct solutions side by side as small grids (when more than one), and the count and
// coverage; without, a hint when the puzzle has several. r: the /solve response (null clears).
function showSolutions(r, given = []) {
  const found = (r && r.solutions) || [];
  $("found").replaceChildren(...(found.length > 1 ? found.map((s, i) => miniGrid(s, i, given)) : []));
  let text = "";
  if (r && r.solutions) {
    text = `${found.length} distinct solution${found.length === 1 ? "" : "s"}`;
    if (r.coverage !== null) text += ` of the puzzle's ${r.count} (coverage ${Math.round(100 * r.coverage)}%)`;
    else text += " (the puzzle's count is not known)";
  } else if (r && r.count > 1) text = `The puzzle has ${r.count} solutions: ask for more with "solutions".`;
  $("coverage").textContent = text;
}

function miniGrid(s, i, given) {
  const figure = document.createElement("figure");
  const grid = document.createElement("div");
  const caption = document.createElement("figcaption");
  const digits = s.grid.flat();
  const n = Math.round(Math.sqrt(digits.length));
  figure.className = "solution";
  grid.className = "mini";
  grid.setAttribute("role", "grid");
  grid.setAttribute("aria-label", `solution ${i + 1}`);
  fillGrid(grid, n, n).forEach((cell, j) => {
    cell.textContent = digits[j] ? String(digits[j]) : "";
    cell.classList.toggle("given", !!given[j]);
  });
  caption.textContent = `#${i + 1}: ${s.samples} sample${s.samples === 1 ? "" : "s"}, score ${s.score.toFixed(3)}`;
  figure.append(grid, caption);
  return figure;
}

// digits, given: flat arrays; agreement: flat array or null; committed: a Set of flat cell indices
function paint(digits, given, agreement = null, committed = new Set()) {
  if (digits.length !== cells.length) buildGrid(Math.round(Math.sqrt(digits.length)), Math.round(Math.sqrt(digits.length)));
  cells.forEach((cell, i) => {
    cell.textContent = digits[i] ? String(digits[i]) : "";
    cell.classList.toggle("given", !!given[i]);
    cell.classList.toggle("committed", committed.has(i));
    cell.classList.toggle("open", !given[i] && !committed.has(i));
    const a = agreement && !given[i] && !committed.has(i) ? agreement[i] : 0;
    cell.style.backgroundColor = a ? `rgba(var(--agree), ${(0.06 + 0.5 * a).toFixed(3)})` : "";
  });
}

function parsePuzzle(text) {
  const s = text.replace(/\s+/g, "");
  if (s.length !== 81 || /[^0-9.]/.test(s)) return null;
  return [...s].map((ch) => (ch >= "1" && ch <= "9" ? Number(ch) : 0));
}

// -- the chart and the numbers -------------------------------------------------------------------------------------

function record(name, value) {
  (series[name] = series[name] || []).push(value);
}

function plot() {
  const W = 320, H = 150, P = 10;
  let svg = `<line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="#d0d5dd"/>`;
  const legend = [];
  for (const [name, ys] of Object.entries(series)) {
    const known = ys.filter((y) => y !== null && Number.isFinite(y));
    if (!known.length) continue;
    const min = Math.min(...known), max = Math.max(...known);
    let [lo, hi] = name === "mean agreement" ? [0, 1] : [min, max];
    if (hi - lo < 1e-9) [lo, hi] = [lo - 1, hi + 1];
    const n = Math.max(ys.length - 1, 1);
    const xy = ys
      .map((y, i) => (y === null ? null : [P + ((W - 2 * P) * i) / n, H - P - ((H - 2 * P) * (y - lo)) / (hi - lo)]))
      .filter(Boolean);
    const points = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const [x, y] = xy[xy.length - 1];
    svg += `<polyline fill="none" stroke="${COLORS[name]}" stroke-width="2" points="${points}"/>`;
    svg += `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3" fill="${COLORS[name]}"/>`;
    const last = known[known.length - 1];
    legend.push(`<li style="--c:${COLORS[name]}">${name}: ${fmt(last)} <span class="muted">(${fmt(min)} … ${fmt(max)})</span></li>`);
  }
  $("chart").innerHTML = svg;
  $("legend").innerHTML = legend.join("");
}

function fmt(x) {
  return Number.isInteger(x) ? String(x) : x.toFixed(2);
}

function stats(pairs) {
  $("stats").innerHTML = pairs
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`)
    .join("");
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function mean(xs) {
  return xs.reduce((s, x) => s + x, 0) / Math.max(xs.length, 1);
}

// -- Server-Sent Events over fetch (EventSource cannot POST) -------------------------------------------------------

async function* sse(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// A service with API keys answers 401: ask for the key once and keep it for this tab only (sessionStorage).
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = sessionStorage.getItem("trm-api-key");
    const headers = { ...(options.headers || {}), ...(key ? { authorization: `Bearer ${key}` } : {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401 || attempt > 0) return response;
    const given = window.prompt(key ? "That API key was refused. API key:" : "This service needs an API key:");
    if (!given) return response;
    sessionStorage.setItem("trm-api-key", given.trim());
  }
}

async function stream(path, body, onProgress, onResult) {
  controller = new AbortController();
  busy(true);
  series = {};
  plot();
  const started = performance.now();
  let events = 0;
  try {
    const response = await api(path, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ ...body, stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const e = (await response.json().catch(() => ({}))).error;
      throw new Error(e ? `${response.status} ${e.type}: ${e.message}` : `HTTP ${response.status}`);
    }
    for await (const ev of sse(response.body)) {
      const ms = performance.now() - started;
      if (ev.event === "progress") onProgress(JSON.parse(ev.data), ++events, ms);
      else if (ev.event === "result") onResult(JSON.parse(ev.data), events, ms);
      else if (ev.event === "error") {
        const e = JSON.parse(ev.data).error;
        throw new Error(`${e.type}: ${e.message}`);
      } else if (ev.event === "done") break;
    }
  } catch (e) {
    if (e.name === "AbortError") status("Stopped: the server cancelled the request's rows.");
    else status(e.message, true);
  } finally {
    busy(false);
    controller = null;
  }
}

function busy(on) {
  $("solve").disabled = $("generate").disabled = on;
  $("stop").disabled = !on;
  document.body.dataset.state = on ? "running" : "idle";
}

function progressStats(e, events, ms) {
  return [
    ["events", events],
    ["elapsed", `${(ms / 1000).toFixed(2)} s`],
    ["step", e.step],
    ["rows", e.rows],
    ["row-steps", e.row_steps],
    ["best q", e.best_q === null ? "–" : e.best_q.toFixed(2)],
    ["node", e.node],
    ["depth", e.depth],
    ["backtracks", e.backtracks],
    ["committed", e.committed ? e.committed.length : undefined],
    ["sample", e.sample],
  ];
}

function recordProgress(e) {
  record("best q", e.best_q);
  record("mean agreement", mean(e.agreement.flat()));
  if (e.depth !== undefined) record("commit depth", e.depth);
  plot();
}

// -- solve and generate --------------------------------------------------------------------------------------------

function solve() {
  const text = $("puzzle").value;
  const puzzle = parsePuzzle(text);
  if (!puzzle) return status("A puzzle is 81 cells: digits 1-9, and '.' or 0 for blanks.", true);
  const given = puzzle.map((v) => v > 0);
  buildGrid(9, 9);
  paint(puzzle, given);
  const search = { strategy: $("strategy").value, seed: Number($("seed").value) };
  for (const k of ["rollouts", "steps"]) if ($(k).value) search[k] = Number($(k).value);
  const body = { puzzle: text.replace(/\s+/g, ""), search };
  if (Number($("solutions").value) > 1) body.solutions = Number($("solutions").value); // 1: the plain answer
  showSolutions(null);
  status("Submitting…");
  stream(
    "solve",
    body,
    (e, events, ms) => {
      const consensus = e.grid.flat();
      const node = e.node_grid ? e.node_grid.flat() : null;
      const committed = new Set(e.committed || []);
      const digits = consensus.map((v, i) => (given[i] ? puzzle[i] : committed.has(i) ? node[i] : v));
      paint(digits, given, e.agreement.flat(), committed);
      recordProgress(e);
      stats(progressStats(e, events, ms));
      status(`Searching: step ${e.step}` + (e.node !== undefined ? `, node ${e.node}` : "") + "…");
    },
    (r, events, ms) => {
      paint(r.grid.flat(), given);
      showSolutions(r, given);
      $("grid").classList.toggle("verified", r.verified === true);
      $("grid").classList.toggle("wrong", r.verified === false);
      stats([
        ["events", events],
        ["elapsed", `${(ms / 1000).toFixed(2)} s`],
        ["finish", r.finish],
        ["rollouts", r.rollouts],
        ["steps", r.steps],
        ["row-steps", r.row_steps],
        ["confidence", r.confidence.toFixed(3)],
        ["agreement", r.agreement.toFixed(2)],
        ["selector", r.selector],
        ["nodes", r.strategy === "commit" ? r.nodes : undefined],
        ["backtracks", r.strategy === "commit" ? r.backtracks : undefined],
        ["server time", `${(r.timing.total_s * 1000).toFixed(0)} ms`],
      ]);
      if (r.verified) status(`Verified ✓ (${r.finish}, ${r.row_steps} row-steps)`);
      else status(r.verified === false ? `Not verified: ${r.fault}` : "Done (no verifier for this task).", r.verified === false);
    },
  );
}

function generate() {
  const kind = $("kind").value;
  buildGrid(9, 9);
  const none = new Array(81).fill(false);
  paint(new Array(81).fill(0), none);
  showSolutions(null);
  status("Generating…");
  const body = { count: 1, kind };
  if ($("gen-seed").value !== "") body.seed = Number($("gen-seed").value); // empty: a fresh grid every time
  if (kind === "puzzle") body.clues = Number($("clues").value);
  stream(
    "generate",
    body,
    (e, events, ms) => {
      const committed = new Set(e.committed || []);
      const node = e.node_grid ? e.node_grid.flat() : null;
      const digits = e.grid.flat().map((v, i) => (committed.has(i) ? node[i] : v));
      paint(digits, none, e.agreement.flat(), committed);
      recordProgress(e);
      stats(progressStats(e, events, ms));
      status(`Building sample ${e.sample}: ${committed.size} cells committed…`);
    },
    (r, events, ms) => {
      const item = r.items[0];
      stats([
        ["events", events],
        ["elapsed", `${(ms / 1000).toFixed(2)} s`],
        ["sampled", r.sampled],
        ["valid", r.valid],
        ["row-steps", r.row_steps],
        ["method", r.method],
        ["seed", r.seed],
      ]);
      if (!item) return status(`No valid grid within the budget (sampled ${r.sampled}).`, true);
      if (kind === "puzzle") {
        const puzzle = item.puzzle_grid.flat();
        paint(puzzle, puzzle.map((v) => v > 0));
        $("puzzle").value = item.puzzle;
        status(`A puzzle with ${item.clues} clues and a unique solution; it is in the box on the left, ready to solve.`);
      } else {
        paint(item.grid.flat(), none);
        $("grid").classList.add("verified");
        status("A valid grid ✓");
      }
    },
  );
}

async function init() {
  for (const [name, text] of Object.entries(PUZZLES)) $("pick").add(new Option(name, text));
  $("pick").addEventListener("change", () => ($("puzzle").value = $("pick").value));
  $("puzzle").value = $("pick").value;
  $("solve").addEventListener("click", solve);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  buildGrid(9, 9);
  paint(parsePuzzle($("puzzle").value), parsePuzzle($("puzzle").value).map((v) => v > 0));
  busy(false);
  try {
    const models = (await (await api("v1/models")).json()).data;
    const solver = models.find((m) => m.role === "solver");
    $("model").textContent = models.map((m) => `${m.id} (${m.role})`).join(", ");
    if (solver && solver.defaults) $("steps").value = solver.defaults.steps;
  } catch {
    $("model").textContent = "models: not ready yet";
  }
}

init();
