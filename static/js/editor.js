// The flow editor: palette, canvas, autosave with a revision check, inspector,
// problems, publish and test runs. The server holds the truth: every save answers
// with the new revision and the compile problems, which the canvas then shows.
/* global X6, htmx */
import {
  createGraph, edgeCell, firstPaint, freshEdgeId, liveSocket, loadGraphInSlices, nodeCell, openView, prepareClipboard,
  problemsByNode, refreshNode, serialize, setProblems, setStatus, uniqueNodeId, useNodeIdRule,
} from "./canvas.js";

const $ = (sel, root = document) => root.querySelector(sel);
const state = JSON.parse($("#flow-state").textContent);
const catalogueList = JSON.parse($("#flow-catalogue").textContent);
const rules = JSON.parse($("#flow-rules").textContent); // node-id rule, palette sections (flows.editor.rules)
useNodeIdRule(rules.node_id_pattern);
const urls = JSON.parse($("#flow-urls").textContent);
const catalogue = Object.fromEntries(catalogueList.map((e) => [e.key, e]));
const canEdit = $("#editor").dataset.canEdit === "1";
const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
const CLIPBOARD_KEY = "kwala.clipboard";
const SAVE_DELAY_MS = 500;
const DERIVED_KEYS = new Set(["attrs", "size", "ports", "zIndex", "tools", "view"]);

let revision = state.revision;
let problems = state.problems;
let conflict = false;
let saveTimer = null;
let saving = null; // the in-flight save promise
let dirty = false;
let loading = true;
let activeRun = null;
// The inspector's (see below): a node's settings can be opened on the first paint already.
let inspectedId = null;
let inspectorLoad = null;
let loadToken = 0;
let applying = null;

// -- opening ------------------------------------------------------------------------------
// The flow is drawn at once as a picture (canvas.js firstPaint) on which a click shows a
// node's settings; X6 loads after that first frame and builds the editable canvas beneath
// it, then takes its place. Until then the toolbar's buttons, the palette and the side panel
// are inert: what they do needs the editable canvas (a setting applied before X6 has loaded
// the graph would be overwritten by the graph it loads).

let graph = null; // X6's, once it has loaded
let selection = null;
let undoStack = null;
const container = $("#canvas");
const notYet = [...document.querySelectorAll(".editor-bar button, .palette, .side")];
for (const el of notYet) el.inert = true;
const first = firstPaint(container, state.graph, catalogue, state.problems);
first.svg.addEventListener("click", (e) => {
  const id = e.target.closest?.("[data-node-id]")?.dataset.nodeId ?? null;
  first.select(id);
  if (id) openInspector({ id }, false);
  else deselectInspector();
});
document.documentElement.dataset.canvasDrawn = "1";
buildPalette();
showStatus(state);
showProblems({ canvas: false }); // the first paint drew the badges

// The settings being loaded for a click on the first paint: X6's loading waits until they are
// on screen, or 0.3 s at most (a slow answer does not hold the editor back).
async function settingsLoad() {
  if (!inspectorLoad) return;
  await Promise.race([inspectorLoad.catch(() => {}), new Promise((resolve) => { setTimeout(resolve, 300); })]);
  await afterFrame();
}

// After the next frame has been painted; in a background tab, which paints no frames, at once.
// (Not "whichever comes first" with a timer: on a busy machine the timer could win, and X6's
// script would then run before the first paint was on screen.)
function afterFrame() {
  return new Promise((resolve) => {
    if (document.hidden) setTimeout(resolve, 0);
    else requestAnimationFrame(() => setTimeout(resolve, 0));
  });
}

try {
  await loadX6(container.dataset.x6);
} catch {
  $("#notice").textContent = "The canvas could not be loaded: reload the page to edit this flow.";
  $("#notice").hidden = false;
  throw new Error("X6 did not load");
}

// After the first frame (the picture above is on screen) and any node's settings asked for
// meanwhile, X6's script (~0.1 s to run).
async function loadX6(src) {
  await afterFrame();
  await settingsLoad();
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = reject;
    document.head.append(script);
  });
}

graph = createGraph(container, { readonly: !canEdit, minimap: $("#minimap") });
graph.use(new X6.Snapline({ enabled: canEdit }));
selection = new X6.Selection({
    enabled: true,
    multiple: true,
    rubberband: canEdit,
    modifiers: ["shift"],
    movable: canEdit,
    showNodeSelectionBox: true,
    pointerEvents: "none",
});
graph.use(selection);
undoStack = new X6.History({
    enabled: canEdit,
    beforeAddCommand(event, args) {
      if (args?.options?.ignoreHistory) return false;
      if (event === "cell:change:*" && DERIVED_KEYS.has(args.key)) return false;
      return true;
    },
});

// At the picture's view, a slice at a time (the page answers clicks meanwhile).
await loadGraphInSlices(graph, state.graph, catalogue, state.problems, first.view, { pause: settingsLoad });
// Only now: loading is not an undoable step, and recording it would cost a command per cell.
graph.use(undoStack);
loading = false;
// The canvas may have been resized since the first paint (the toolbar wraps once fonts
// settle): fit again, before X6's drawing replaces the picture.
const { width, height } = container.getBoundingClientRect();
if (first.view.width !== width || first.view.height !== height) openView(graph);
await drawnByX6();
const picked = first.selected && graph.getCellById(first.selected);
first.remove();
if (picked) selection.select(picked);
for (const el of notYet) el.inert = false;
document.documentElement.dataset.editorReady = "1";

// Resolves once X6 has drawn every node in its view (it draws them over a few frames).
function drawnByX6() {
  const area = graph.getGraphArea();
  const nodes = graph.getNodes().filter((n) => area.isIntersectWithRect(n.getBBox()));
  return new Promise((resolve) => {
    const check = () => {
      if (nodes.every((n) => graph.findViewByCell(n)?.container?.isConnected)) resolve();
      else requestAnimationFrame(check);
    };
    check();
  });
}

// -- saving ---------------------------------------------------------------------------

function setSaveState(text) {
  $("#save-state").textContent = text;
}

function scheduleSave() {
  if (loading || !canEdit || conflict) return;
  dirty = true;
  setSaveState("Unsaved changes…");
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => { saveNow(); }, SAVE_DELAY_MS);
}

async function saveNow() {
  clearTimeout(saveTimer);
  if (saving) {
    await saving;
  }
  if (!dirty || conflict) return;
  dirty = false;
  setSaveState("Saving…");
  saving = (async () => {
    try {
      const res = await post(urls.graph, { graph: serialize(graph), revision }, "PUT");
      const body = await res.json();
      if (res.status === 409) {
        showConflict(body.error.message);
        return;
      }
      if (!res.ok) {
        dirty = true;
        setSaveState("Not saved");
        notice(body.error?.message || "The flow could not be saved.", true);
        return;
      }
      revision = body.revision;
      problems = body.problems;
      showProblems();
      if (edgesChanged) {
        edgesChanged = false;
        refreshPicker();
      }
      if (!dirty) setSaveState("Saved");
      showStatus({ draft: body.differs_from_live, live: body.live_version });
    } catch (err) {
      dirty = true;
      setSaveState("Offline — will retry");
      saveTimer = setTimeout(() => { saveNow(); }, 3000);
    }
  })();
  try { await saving; } finally { saving = null; }
}

// Before anything that reads the draft on the server (inspector, publish, test).
export async function flush() {
  if (dirty) await saveNow();
  else if (saving) await saving;
}

// The API, acting in this flow's team with the session (CSRF-checked).
function post(url, data, method = "POST") {
  return fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, "X-Kwala-Team": urls.team },
    body: JSON.stringify(data),
    credentials: "same-origin",
  });
}

function showConflict(message) {
  conflict = true;
  const banner = $("#conflict-banner");
  if (message) $("#conflict-message").textContent = message.replace("Reload", "— reload").replace("— — ", "— ");
  banner.hidden = false;
  setSaveState("Not saved: changed elsewhere");
}

// A message that floats over the canvas and goes away by itself (an error stays a little longer).
let noticeTimer = null;
function notice(text, isError = false) {
  const box = $("#notice");
  box.textContent = text;
  box.classList.toggle("banner-error", isError);
  box.hidden = !text;
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => { box.hidden = true; }, isError ? 10_000 : 5_000);
}

const TWO_TRIGGERS = "A flow has exactly one trigger; this one will show as a problem until you remove one.";
const triggerCount = () => graph.getNodes().filter((n) => catalogue[n.getData().type]?.category === "trigger").length;

// An empty canvas says how to begin; a message about a second trigger goes once there is one again.
function showCanvasHint() {
  const hint = $("#canvas-hint");
  if (hint) hint.hidden = graph.getNodes().length > 0;
  if ($("#notice").textContent === TWO_TRIGGERS && triggerCount() <= 1) notice("");
}
graph.on("cell:added", showCanvasHint);
graph.on("cell:removed", showCanvasHint);
showCanvasHint();

function showStatus(s) {
  const badge = $("#flow-status");
  if (s.live && !s.draft) { badge.textContent = `Live v${s.live}`; badge.className = "badge badge-ok"; }
  else if (s.live) { badge.textContent = `Live v${s.live} · draft changes`; badge.className = "badge badge-warn"; }
  else { badge.textContent = "Draft"; badge.className = "badge"; }
  state.live = s.live;
  const unpublish = $("#unpublish-button");
  if (unpublish) unpublish.hidden = !s.live;
}

// -- graph events -----------------------------------------------------------------------

graph.on("cell:added", scheduleSave);
graph.on("cell:removed", scheduleSave);
graph.on("node:change:position", scheduleSave);
graph.on("node:change:data", ({ node }) => { refreshNode(node, catalogue); scheduleSave(); });
graph.on("edge:connected", scheduleSave);
graph.on("edge:change:source", scheduleSave);
graph.on("edge:change:target", scheduleSave);
// What a node can read (the data picker) depends on the edges into it: refresh it once they are saved.
let edgesChanged = false;
for (const event of ["edge:connected", "edge:removed", "edge:change:source", "edge:change:target"]) {
  graph.on(event, () => { edgesChanged = true; });
}
graph.on("history:change", updateHistoryButtons);

function updateHistoryButtons() {
  const undo = $('[data-cmd="undo"]');
  const redo = $('[data-cmd="redo"]');
  if (undo) undo.disabled = !undoStack.canUndo();
  if (redo) redo.disabled = !undoStack.canRedo();
}
updateHistoryButtons();

graph.on("node:click", ({ node }) => { container.focus({ preventScroll: true }); selectOnly(node); openInspector(node, false); });
graph.on("blank:click", () => {
  container.focus({ preventScroll: true });
  deselectInspector();
});

// Deselecting shows no node's settings (typed ones are applied first, as on a switch).
async function deselectInspector() {
  if ($("#inspector-form") && await applyPendingEdits(null)) clearInspector();
}
// Undo, redo or a delete can take away the node the side panel shows: the panel follows.
graph.on("node:removed", ({ node }) => {
  if ($("#inspector-form")?.dataset.node === node.id) clearInspector();
});

function clearInspector() {
  inspectedId = null;
  ++loadToken; // a load still on its way is for a node no longer shown
  $("#inspector").innerHTML = '<p class="empty">Select a node to see its settings.</p>';
}
graph.on("node:dblclick", ({ node }) => openInspector(node, true));
graph.on("selection:changed", ({ selected }) => {
  const nodes = selected.filter((c) => c.isNode());
  if (nodes.length === 1) openInspector(nodes[0], false);
});

function selectOnly(node) {
  selection.clean();
  selection.select(node);
}

// -- problems ---------------------------------------------------------------------------

function showProblems({ canvas = true } = {}) {
  if (canvas) {
    const byNode = problemsByNode(problems);
    for (const node of graph.getNodes()) setProblems(node, byNode[node.id] || [], catalogue);
  }
  const list = $("#problems");
  list.replaceChildren();
  for (const p of problems) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "problem";
    // Until X6 has loaded (the list is first shown with the first paint), names come from the flow.
    const cell = p.node_id && graph?.getCellById(p.node_id);
    const data = cell ? cell.getData() : state.graph.nodes.find((n) => n.id === p.node_id);
    const where = data ? (data.name || catalogue[data.type]?.label || p.node_id) : "Flow";
    button.textContent = `${where}${p.field ? ` (${p.field})` : ""}: ${p.message}`;
    button.dataset.node = p.node_id || "";
    button.addEventListener("click", () => {
      const node = p.node_id && graph.getCellById(p.node_id);
      if (!node) return;
      selectOnly(node);
      graph.centerCell(node);
      openInspector(node, true);
    });
    li.append(button);
    list.append(li);
  }
  if (!problems.length) list.innerHTML = '<li class="empty">No problems: the flow compiles.</li>';
  $("#problem-count").textContent = String(problems.length);
  $("#problem-count").classList.toggle("count-bad", problems.length > 0);
}

// -- inspector ------------------------------------------------------------------------------

// Typed settings are applied when the person moves on to another node, as the canvas
// autosaves: nothing typed is dropped without a word. Settings the server refuses stay on
// screen with their errors, and the panel stays on that node until they are fixed.
document.addEventListener("input", (e) => {
  const form = e.target.closest?.("#inspector-form");
  if (form && form.getAttribute("hx-post")) form.dataset.edited = "1";
});

// A field's error belongs to the value the server checked: once the person changes the field
// (types, or picks from a list), it no longer stands. The server checks again on apply.
function clearFieldError(e) {
  const field = e.target.closest?.("#inspector-form .field, #inspector-form .row-cell");
  if (!field?.classList.contains("field-invalid")) return;
  field.classList.remove("field-invalid");
  for (const error of field.querySelectorAll(":scope > .field-error")) error.remove();
}
document.addEventListener("input", clearFieldError);
document.addEventListener("change", clearFieldError);

// A click opens the inspector twice (the click and the selection change): both wait for one apply.
function applyPendingEdits(nextId) {
  const form = $("#inspector-form");
  if (applying) return applying;
  if (!form || form.dataset.edited !== "1" || form.dataset.node === nextId) return Promise.resolve(true);
  applying = applyForm(form).finally(() => { applying = null; });
  return applying;
}

async function applyForm(form) {
  await flush();
  if (conflict) return false;
  const res = await fetch(form.getAttribute("hx-post"), {
    method: "POST", body: new FormData(form), credentials: "same-origin",
    headers: { "X-CSRFToken": csrf, "X-Kwala-Revision": String(revision), "HX-Request": "true" },
  });
  const panel = $("#inspector");
  panel.innerHTML = await res.text();
  htmx.process(panel);
  const events = res.headers.get("HX-Trigger");
  for (const [name, detail] of Object.entries(events ? JSON.parse(events) : {})) {
    document.body.dispatchEvent(new CustomEvent(name, { detail }));
  }
  if (res.ok) return true;
  const note = document.createElement("p");
  note.className = "form-error";
  note.setAttribute("role", "alert");
  note.textContent = "These settings were not saved: fix them (or undo your edits) before leaving this node.";
  $("#inspector-form")?.prepend(note);
  return false;
}

async function openInspector(node, focus) {
  showTab("inspector");
  if (!(await applyPendingEdits(node.id))) {
    const current = $("#inspector-form")?.dataset.node;
    if (!graph) first.select(current);
    else if (graph.getCellById(current)) selectOnly(graph.getCellById(current));
    return;
  }
  if (activeRun) loadStep(node.id);
  const loaded = $("#inspector-form")?.dataset.node === node.id;
  if (!(loaded && !inspectorLoad) && !(inspectedId === node.id && inspectorLoad)) {
    inspectedId = node.id;
    const token = ++loadToken;
    inspectorLoad = (async () => {
      await flush();
      if (conflict || token !== loadToken) return;
      const res = await fetch(urls.node.replace("NODE", encodeURIComponent(node.id)), { credentials: "same-origin" });
      const html = await res.text();
      if (token !== loadToken) return; // another node was chosen meanwhile
      const panel = $("#inspector");
      panel.innerHTML = res.ok ? html : '<p class="form-error" role="alert">This node\'s settings could not be loaded.</p>';
      htmx.process(panel);
    })();
    inspectorLoad.finally(() => { if (token === loadToken) inspectorLoad = null; });
  }
  if (inspectorLoad) await inspectorLoad;
  if (focus) focusFirstField();
}

// The open inspector's "Insert data" list, from the server, without touching what is typed in the form.
async function refreshPicker() {
  const form = $("#inspector-form");
  const picker = form?.querySelector(".picker");
  if (!picker) return;
  const nodeId = form.dataset.node;
  const res = await fetch(urls.node.replace("NODE", encodeURIComponent(nodeId)), { credentials: "same-origin" });
  if (!res.ok || $("#inspector-form")?.dataset.node !== nodeId) return;
  const fresh = new DOMParser().parseFromString(await res.text(), "text/html").querySelector(".picker");
  if (!fresh) return;
  fresh.open = picker.open;
  picker.replaceWith(fresh);
}

function focusFirstField() {
  const field = $("#inspector-form input:not([type=hidden]), #inspector-form textarea, #inspector-form select");
  field?.focus();
}

document.body.addEventListener("htmx:configRequest", (e) => {
  e.detail.headers["X-Kwala-Revision"] = String(revision);
});

// Inspector submits wait for a pending canvas save so they name the latest revision.
document.body.addEventListener("htmx:confirm", (e) => {
  if (!(e.target instanceof HTMLFormElement) || e.target.id !== "inspector-form") return;
  if (!dirty && !saving) return;
  e.preventDefault();
  flush().then(() => { if (!conflict) e.detail.issueRequest(); });
});

document.body.addEventListener("kwala:node-saved", (e) => {
  const detail = e.detail;
  revision = detail.revision;
  problems = detail.problems;
  const node = graph.getCellById(detail.node.id);
  if (node) {
    const data = { ...node.getData(), name: detail.node.name, config: detail.node.config };
    // Not an undoable change of the canvas: the server already holds it.
    node.setData(data, { overwrite: true, ignoreHistory: true, silent: true });
    refreshNode(node, catalogue);
  }
  showProblems();
  showStatus({ draft: true, live: state.live });
  setSaveState("Saved");
});

document.body.addEventListener("kwala:conflict", (e) => showConflict(e.detail?.message));

// The data picker inserts into the expression field last focused.
let lastExpressionField = null;
document.addEventListener("focusin", (e) => {
  if (e.target.matches?.("#inspector-form [data-expression]")) lastExpressionField = e.target;
});
document.addEventListener("click", (e) => {
  const pick = e.target.closest?.(".pick");
  if (pick) {
    const field = lastExpressionField && document.contains(lastExpressionField) ? lastExpressionField : $("#inspector-form [data-expression]");
    if (!field) return;
    const expr = pick.dataset.expr;
    const text = field.dataset.kind === "expression" ? expr : `{{ ${expr} }}`;
    const start = field.selectionStart ?? field.value.length;
    const end = field.selectionEnd ?? field.value.length;
    field.value = field.value.slice(0, start) + text + field.value.slice(end);
    field.focus();
    field.selectionStart = field.selectionEnd = start + text.length;
    return;
  }
  const choose = e.target.closest?.(".abi-choose");
  if (choose) {
    const target = document.getElementById(choose.dataset.target);
    if (target) target.value = choose.dataset.signature;
    const args = choose.parentElement.querySelectorAll(".abi-arg");
    const argsField = $("#inspector-form #id_args");
    if (argsField && choose.dataset.inputs !== undefined) {
      argsField.value = JSON.stringify([...args].map((a) => a.value), null, 2);
    }
    target?.focus();
  }
});

// -- palette and drop -----------------------------------------------------------------------

function buildPalette() {
  const list = $("#palette-list");
  if (!list) return;
  for (const { key: category, label } of rules.categories) {
    const section = document.createElement("section");
    section.className = "palette-group";
    section.innerHTML = "<h2></h2>";
    section.querySelector("h2").textContent = label;
    const ul = document.createElement("ul");
    for (const entry of catalogueList.filter((e) => e.category === category)) {
      const li = document.createElement("li");
      const item = document.createElement("button");
      item.type = "button";
      item.className = `palette-item cat-${category}`;
      item.draggable = true;
      item.dataset.type = entry.key;
      item.dataset.search = `${entry.label} ${entry.description} ${entry.key}`.toLowerCase();
      item.title = `${entry.description} (drag onto the canvas, or press Enter to add)`;
      item.innerHTML = `<strong></strong><small></small>`;
      item.querySelector("strong").textContent = entry.label;
      item.querySelector("small").textContent = entry.description;
      item.addEventListener("dragstart", (e) => {
        e.dataTransfer.setData("application/x-kwala-node", entry.key);
        e.dataTransfer.effectAllowed = "copy";
      });
      item.addEventListener("click", () => {
        const area = graph.getGraphArea();
        addNode(entry.key, { x: area.center.x - 100, y: area.center.y - 22 }, true);
      });
      li.append(item);
      ul.append(li);
    }
    section.append(ul);
    list.append(section);
  }
  $("#palette-search").addEventListener("input", (e) => {
    const q = e.target.value.trim().toLowerCase();
    for (const item of list.querySelectorAll(".palette-item")) item.parentElement.hidden = q && !item.dataset.search.includes(q);
    for (const group of list.querySelectorAll(".palette-group")) group.hidden = !group.querySelector("li:not([hidden])");
  });
}

container.addEventListener("dragover", (e) => {
  if (e.dataTransfer.types.includes("application/x-kwala-node")) {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  }
});
container.addEventListener("drop", (e) => {
  const type = e.dataTransfer.getData("application/x-kwala-node");
  if (!type || !canEdit) return;
  e.preventDefault();
  const p = graph.clientToLocal(e.clientX, e.clientY);
  addNode(type, { x: Math.round(p.x - 105), y: Math.round(p.y - 22) }, true);
});

const isTaken = (id) => Boolean(graph.getCellById(id));

function newNodeId(type) {
  return uniqueNodeId(type, isTaken, { numbered: true });
}

function addNode(type, position, select) {
  if (!catalogue[type]) return null;
  if (catalogue[type].category === "trigger" && graph.getNodes().some((n) => catalogue[n.getData().type]?.category === "trigger")) {
    notice(TWO_TRIGGERS);
  }
  const node = graph.addNode(nodeCell({ id: newNodeId(type), type, config: {}, position }, catalogue));
  setProblems(node, [], catalogue);
  if (select) {
    selectOnly(node);
    container.focus({ preventScroll: true });
  }
  return node;
}

// -- commands ----------------------------------------------------------------------------------

function deleteSelection() {
  const cells = selection.getSelectedCells();
  if (!cells.length) return;
  graph.startBatch("delete");
  graph.removeCells(cells);
  graph.stopBatch("delete");
  clearInspector();
}

function copySelection() {
  const nodes = selection.getSelectedCells().filter((c) => c.isNode());
  if (!nodes.length) return;
  const ids = new Set(nodes.map((n) => n.id));
  const data = serialize(graph);
  const clip = {
    nodes: data.nodes.filter((n) => ids.has(n.id)),
    edges: data.edges.filter((e) => ids.has(e.source) && ids.has(e.target)),
  };
  localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(clip));
  notice(`Copied ${clip.nodes.length} node${clip.nodes.length === 1 ? "" : "s"}.`);
}

function paste() {
  let clip;
  try { clip = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "null"); } catch { clip = null; }
  const { nodes, edges } = prepareClipboard(clip, { isTaken, catalogue });
  if (!nodes.length) return;
  graph.startBatch("paste");
  const added = nodes.map((node) => graph.addNode(nodeCell(node, catalogue)));
  for (const edge of edges) graph.addEdge(edgeCell({ ...edge, id: freshEdgeId(isTaken) }));
  graph.stopBatch("paste");
  selection.clean();
  selection.select(added);
  // Shift the clipboard so pasting twice does not stack copies on top of each other.
  for (const node of clip.nodes) node.position = { x: (node.position?.x ?? 0) + 40, y: (node.position?.y ?? 0) + 40 };
  localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(clip));
}

function autoLayout() {
  const data = serialize(graph);
  const children = {};
  const indegree = {};
  for (const n of data.nodes) { children[n.id] = []; indegree[n.id] = 0; }
  for (const e of data.edges) {
    if (!(e.source in children) || !(e.target in indegree)) continue;
    children[e.source].push(e.target);
    indegree[e.target] += 1;
  }
  // Longest path from a source: each node sits one column right of its deepest parent.
  const depth = {};
  const queue = data.nodes.filter((n) => indegree[n.id] === 0).map((n) => n.id);
  for (const id of queue) depth[id] = 0;
  const remaining = { ...indegree };
  while (queue.length) {
    const id = queue.shift();
    for (const child of children[id]) {
      depth[child] = Math.max(depth[child] ?? 0, depth[id] + 1);
      remaining[child] -= 1;
      if (remaining[child] === 0) queue.push(child);
    }
  }
  const columns = {};
  for (const n of data.nodes) (columns[depth[n.id] ?? 0] ||= []).push(n);
  graph.startBatch("layout");
  for (const [col, nodes] of Object.entries(columns)) {
    nodes.sort((a, b) => a.position.y - b.position.y);
    nodes.forEach((n, row) => {
      const cell = graph.getCellById(n.id);
      cell.setPosition(80 + Number(col) * 280, 80 + row * 110);
    });
  }
  graph.stopBatch("layout");
  graph.zoomToFit({ padding: 40, maxScale: 1 });
}

function orderedNodes() {
  return graph.getNodes().slice().sort((a, b) => {
    const pa = a.getPosition();
    const pb = b.getPosition();
    return pa.x - pb.x || pa.y - pb.y;
  });
}

function moveSelection(step) {
  const nodes = orderedNodes();
  if (!nodes.length) return false;
  const current = selection.getSelectedCells().find((c) => c.isNode());
  let index = current ? nodes.indexOf(current) + step : step > 0 ? 0 : nodes.length - 1;
  if (index < 0 || index >= nodes.length) return false;
  const node = nodes[index];
  selectOnly(node);
  graph.centerCell(node);
  return true;
}

function nudgeSelection(dx, dy) {
  const nodes = selection.getSelectedCells().filter((c) => c.isNode());
  if (!nodes.length) return;
  graph.startBatch("nudge");
  for (const n of nodes) n.translate(dx, dy);
  graph.stopBatch("nudge");
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.matches("input, textarea, select") || target.isContentEditable);
}

document.addEventListener("keydown", (e) => {
  if (isTyping(e.target)) return;
  const mod = e.ctrlKey || e.metaKey;
  const inCanvas = container.contains(document.activeElement) || document.activeElement === container;
  const key = e.key.toLowerCase();
  if (mod && key === "z" && canEdit) { e.preventDefault(); e.shiftKey ? undoStack.redo() : undoStack.undo(); return; }
  if (mod && key === "y" && canEdit) { e.preventDefault(); undoStack.redo(); return; }
  if (!inCanvas) return;
  if (mod && key === "c") { e.preventDefault(); copySelection(); return; }
  if (mod && key === "v" && canEdit) { e.preventDefault(); paste(); return; }
  if (mod && key === "a") { e.preventDefault(); selection.select(graph.getNodes()); return; }
  if ((e.key === "Delete" || e.key === "Backspace") && canEdit) { e.preventDefault(); deleteSelection(); return; }
  if (e.key === "Enter") {
    const node = selection.getSelectedCells().find((c) => c.isNode());
    if (node) { e.preventDefault(); openInspector(node, true); }
    return;
  }
  if (e.key === "Escape") { selection.clean(); return; }
  if (e.key === "Tab") {
    // Tab walks the nodes, then lets focus leave the canvas at either end.
    if (moveSelection(e.shiftKey ? -1 : 1)) e.preventDefault();
    return;
  }
  const arrows = { ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1], ArrowUp: [0, -1] };
  if (e.key in arrows) {
    e.preventDefault();
    const [dx, dy] = arrows[e.key];
    if (e.altKey && canEdit) nudgeSelection(dx * 10, dy * 10);
    else moveSelection(dx + dy > 0 ? 1 : -1);
  }
});

// -- toolbar --------------------------------------------------------------------------------------

const commands = {
  undo: () => undoStack.undo(),
  redo: () => undoStack.redo(),
  layout: autoLayout,
  "zoom-in": () => graph.zoom(0.1),
  "zoom-out": () => graph.zoom(-0.1),
  fit: () => graph.zoomToFit({ padding: 40, maxScale: 1 }),
  publish,
  unpublish,
  test: () => showTab("test"),
};
for (const button of document.querySelectorAll("[data-cmd]")) {
  button.addEventListener("click", () => commands[button.dataset.cmd]?.());
}

async function publish() {
  await flush();
  if (conflict) return;
  const res = await post(`${urls.publish}?revision=${revision}`, {});
  const body = await res.json();
  if (res.status === 409 && body.error.code === "conflict") { showConflict(body.error.message); return; }
  if (!res.ok) {
    const unfit = body.error.code === "compile_error";
    if (unfit) { problems = body.error.details; showProblems(); showTab("problems"); }
    notice(unfit ? "The flow has problems; fix them to publish." : body.error.message, true);
    return;
  }
  revision = body.revision;
  problems = [];
  showProblems();
  showStatus({ live: body.number, draft: false });
  notice(`Version ${body.number} is live.`);
}

async function unpublish() {
  await flush();
  const res = await post(urls.unpublish, {});
  const body = await res.json();
  if (!res.ok) { notice(body.error?.message || "Could not unpublish.", true); return; }
  revision = body.revision;
  const was = state.live;
  showStatus({ live: null });
  notice(`Version ${was} is no longer live.`);
}

// -- side tabs -------------------------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    const panel = document.getElementById(`tab-${tab.dataset.tab}`);
    if (panel) panel.hidden = !on;
  }
  // A test run's step details go with the node's settings and the Test tab, not with the problems.
  const details = $("#step-details");
  if (details) details.hidden = name === "problems" || !activeRun || !details.hasChildNodes();
}
for (const tab of document.querySelectorAll("[data-tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));

// -- test runs -------------------------------------------------------------------------------------

async function startTest() {
  const status = $("#test-status");
  const text = $("#test-payload").value.trim() || "{}";
  let payload;
  try {
    payload = JSON.parse(text);
  } catch (err) {
    status.textContent = `The sample trigger is not valid JSON: ${err.message}`;
    return;
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    status.textContent = "The sample trigger must be a JSON object.";
    return;
  }
  await flush();
  if (conflict) return;
  status.textContent = "Starting…";
  // The sample goes as typed, not re-serialised: JSON.parse rounds integers above 2^53 (wei amounts).
  const res = await fetch(urls.test_run, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, "X-Kwala-Team": urls.team },
    body: `{"draft": true, "dry_run": ${$("#test-dry").checked}, "payload": ${text}}`,
    credentials: "same-origin",
  });
  const body = await res.json();
  if (!res.ok) {
    const unfit = body.error.code === "compile_error";
    status.textContent = unfit ? "Fix the flow's problems to test it." : body.error.message;
    if (unfit) { problems = body.error.details; showProblems(); }
    return;
  }
  watchRun(body.code, urls.run_page.replace("00000000-0000-0000-0000-000000000000", body.code));
}
$("#test-start")?.addEventListener("click", startTest);

// The sample is prefilled with what the trigger would hand a run now (the latest matching log,
// the latest block, a webhook request, the schedule's window), unless the person wrote their own.
let prefilled = null;
async function prefillSample() {
  const box = $("#test-payload");
  const url = $("#samples")?.getAttribute("hx-get");
  if (!box || !url || (box.value.trim() !== "{}" && box.value !== prefilled)) return;
  await flush(); // the sample is of the trigger as it is now, saved
  const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || !body.samples?.length) return;
  if (box.value.trim() !== "{}" && box.value !== prefilled) return; // typed into meanwhile
  box.value = prefilled = body.samples[0].json;
  box.dataset.sample = body.samples[0].label;
}
document.querySelector('[data-tab="test"]')?.addEventListener("click", prefillSample);
document.body.addEventListener("htmx:afterSwap", (e) => {
  if (e.detail.target.id !== "samples") return;
  const pick = $("#sample-pick");
  if (pick) $("#test-payload").value = prefilled = pick.value;
});

const refreshActive = debounce(() => { if (activeRun) refreshRun(activeRun); }, 80);

const seenRuns = new Set();

function watchRun(code, url, label = "Run started.") {
  // The run's first broadcast can beat the response of the request that started it:
  // a second watchRun for the same run must not paint finished nodes pending again.
  if (code === activeRun) { refreshRun(code); return; }
  activeRun = code;
  seenRuns.add(code);
  for (const node of graph.getNodes()) setStatus(node, "PENDING");
  const status = $("#test-status") || $("#live-run");
  if (status) {
    delete status.dataset.status;
    status.innerHTML = "";
    const link = document.createElement("a");
    link.href = url;
    link.textContent = "Open the run";
    status.append(`${label} `, link);
  }
  refreshRun(code);
}

// Every run of this flow lights the canvas up live; the newest one wins.
liveSocket(urls.ws_flow, (msg) => {
  if (!msg.run) return;
  if (msg.run !== activeRun) {
    if (seenRuns.has(msg.run)) return; // an older run still finishing
    seenRuns.add(msg.run);
    watchRun(msg.run, urls.run_page.replace("00000000-0000-0000-0000-000000000000", msg.run), "A run started.");
    return;
  }
  refreshActive();
});

// Refreshes can overlap (a start response and a broadcast, or two broadcasts): only the
// newest request's answer is shown, so an older snapshot never lands on a newer one.
let refreshSeq = 0;

async function refreshRun(code) {
  const seq = ++refreshSeq;
  const res = await fetch(urls.run_state.replace("00000000-0000-0000-0000-000000000000", code), { credentials: "same-origin" });
  if (!res.ok) return;
  const run = await res.json();
  if (code !== activeRun || seq !== refreshSeq) return;
  for (const node of graph.getNodes()) setStatus(node, run.steps[node.id]?.status || (catalogue[node.getData().type]?.category === "trigger" ? "SUCCEEDED" : "PENDING"));
  const box = $("#test-status") || $("#live-run");
  box.dataset.status = run.status;
  const label = box.querySelector(".run-status") || document.createElement("strong");
  label.className = "run-status";
  label.textContent = ` ${run.filtered ? "filtered" : run.status.toLowerCase()}${run.dry_run ? " (dry run)" : ""}${run.reorged ? " — reorged" : ""}`;
  label.title = run.filtered ? "The run succeeded, but a condition stopped it before any action." : "";
  box.append(label);
  const selected = selection.getSelectedCells().find((c) => c.isNode());
  if (selected) loadStep(selected.id);
}

function loadStep(stepId) {
  if (!activeRun) return;
  const panel = $("#step-details");
  panel.hidden = false;
  htmx.ajax("GET", urls.step.replace("00000000-0000-0000-0000-000000000000", activeRun).replace("STEP", encodeURIComponent(stepId)), { target: "#step-details", swap: "innerHTML" });
}

// A step's input or output, as the JSON text the server rendered (exact big ints).
async function copyText(button) {
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent);
  } catch {
    // No clipboard API outside secure contexts (plain http on a LAN): select the text to copy by hand.
    getSelection().selectAllChildren(source);
    button.textContent = "Selected: press Ctrl+C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// The page's small actions, wired here rather than in inline handlers (the Content-Security-Policy
// allows no inline script).
document.addEventListener("click", (e) => {
  const target = e.target.closest("[data-action]");
  if (!target) return;
  if (target.dataset.action === "reload") window.location.reload();
  if (target.dataset.action === "load-samples" || target.dataset.action === "reload-samples") {
    htmx.trigger(document.body, "kwala:load-samples");
  }
  if (target.dataset.action === "copy") copyText(target);
  if (target.dataset.action === "select") target.select();
});
document.addEventListener("change", (e) => {
  if (e.target.id === "sample-pick") $("#test-payload").value = e.target.value;
});

window.addEventListener("beforeunload", (e) => {
  if (dirty && !conflict) { saveNow(); e.preventDefault(); }
});
// For tests and the benchmark: the graph object, read-only use.
window.kwalaEditor = { graph, flush, get revision() { return revision; } };
