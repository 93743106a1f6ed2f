// The flow canvas shared by the editor and the run page: an X6 graph whose nodes
// are the flow's nodes, converted to and from the graph JSON the server stores.
/* global X6 */

// How nodes look comes with each catalogue entry ("look", from flows/nodes/base.py); these
// are only what an entry of an unknown type falls back to.
const FALLBACK_LOOK = { colour: "#64748b", width: 210, header: 44, port_row: 20 };

let registered = false;

// Edges leave an output port to the right and enter an input port from the left, whatever
// the nodes' positions: with X6's "smooth" connector an edge to a node below or to the left
// curved back under its source, so two branches of a condition looked alike. A forward edge
// is one curve; an edge to a node further left goes out, down (or up) between the two nodes,
// across and in, so it never crosses its own source. flows/editor/graph_svg.py draws the same.
const STUB = 24;

export function portPath(source, target) {
  if (target.x - source.x >= 2 * STUB) {
    const reach = Math.max(STUB, (target.x - source.x) / 2);
    return `M ${source.x} ${source.y} C ${source.x + reach} ${source.y} ${target.x - reach} ${target.y} ${target.x} ${target.y}`;
  }
  const middle = (source.y + target.y) / 2;
  return rounded([source, { x: source.x + STUB, y: source.y }, { x: source.x + STUB, y: middle },
    { x: target.x - STUB, y: middle }, { x: target.x - STUB, y: target.y }, target], 8);
}

// A polyline whose corners are rounded with radius r (less where a segment is shorter).
function rounded(points, r) {
  let d = `M ${points[0].x} ${points[0].y}`;
  for (let i = 1; i < points.length - 1; i += 1) {
    const [a, b, c] = [points[i - 1], points[i], points[i + 1]];
    const inLen = Math.hypot(b.x - a.x, b.y - a.y);
    const outLen = Math.hypot(c.x - b.x, c.y - b.y);
    const k = Math.min(r, inLen / 2, outLen / 2);
    if (!k) continue;
    const p = { x: b.x - ((b.x - a.x) / inLen) * k, y: b.y - ((b.y - a.y) / inLen) * k };
    const q = { x: b.x + ((c.x - b.x) / outLen) * k, y: b.y + ((c.y - b.y) / outLen) * k };
    d += ` L ${p.x} ${p.y} Q ${b.x} ${b.y} ${q.x} ${q.y}`;
  }
  const last = points[points.length - 1];
  return `${d} L ${last.x} ${last.y}`;
}

function registerShapes() {
  if (registered) return;
  registered = true;
  X6.Graph.registerConnector("ports", (source, target) => portPath(source, target), true);
  X6.Graph.registerNode("kwala-node", NODE_SHAPE, true);
}

// The node shape. X6 deep-copies a shape's defaults into every node it creates, and runs
// each of its attrs through its attribute pipeline for every node it draws: what never
// changes is written on the markup (set once as plain SVG attributes), and the shape does not
// inherit X6's "rect" (whose own attrs were copied and then overridden). With
// sharedOptionsView this brought the 200-node flow of bench/editor_load.py to
// DOMContentLoaded (the graph loaded) after 0.60-0.92 s instead of 1.03-1.06 s (medians of
// three alternating runs on the busy 2-core VM); X6's cell creation alone went from ~290 to
// ~230 ms in a DevTools profile. The drawn SVG is the same, attribute for attribute.
const PORT_CIRCLE = { r: 6, stroke: "#475569", "stroke-width": 1.5, fill: "#fff" };
const FONT = "Arial, helvetica, sans-serif";
const TEXT = { "text-anchor": "start", "font-family": FONT };
const NODE_SHAPE = {
  width: FALLBACK_LOOK.width,
  height: FALLBACK_LOOK.header,
  markup: [
    { tagName: "rect", selector: "body", className: "node-body", attrs: { rx: 8, ry: 8, fill: "#fff", stroke: "#94a3b8", "stroke-width": 1.5 } },
    { tagName: "rect", selector: "stripe", attrs: { width: 6, rx: 3, fill: "#64748b", stroke: "#333333", "stroke-width": 2 } },
    { tagName: "text", selector: "title", attrs: { ...TEXT, "font-size": 13, "font-weight": 600, fill: "#0f172a" } },
    { tagName: "text", selector: "subtitle", attrs: { ...TEXT, "font-size": 11, fill: "#475569" } },
    { tagName: "circle", selector: "badge", className: "node-badge", attrs: { r: 10, fill: "#dc2626", stroke: "#fff", "stroke-width": 2, visibility: "hidden" } },
    { tagName: "text", selector: "badgeText", attrs: { "font-size": 11, "font-weight": 700, fill: "#fff", "text-anchor": "middle", "font-family": FONT, visibility: "hidden" } },
    { tagName: "title", selector: "tip" },
  ],
  attrs: {
    body: { refWidth: "100%", refHeight: "100%" },
    stripe: { refHeight: "100%" },
    title: { refX: 16, refY: 16, textVerticalAnchor: "middle" },
    subtitle: { refX: 16, refY: 33, textVerticalAnchor: "middle" },
    // On the top border, clear of the output ports on the right edge (it covered `out` before).
    badge: { refX: "100%", refX2: -30, refY: 0 },
    badgeText: { refX: "100%", refX2: -30, refY: 0, textVerticalAnchor: "middle" },
  },
  ports: {
    groups: {
      in: {
        position: { name: "left" },
        markup: [{ tagName: "circle", selector: "circle", attrs: PORT_CIRCLE }],
        attrs: { circle: { magnet: "passive" } },
      },
      out: {
        position: { name: "right" },
        markup: [{ tagName: "circle", selector: "circle", attrs: PORT_CIRCLE }],
        label: {
          markup: { tagName: "text", selector: "text", attrs: { "font-size": 10, fill: "#475569" } },
          position: { name: "left", args: { x: -10 } },
        },
        attrs: { circle: { magnet: true } },
      },
    },
  },
};

// The node type's ports: those named by a list field of the config (a switch's cases), then
// its static ones; the rule is the node type's (NodeType.ports_from), not this file's.
export function outputPorts(type, config, catalogue) {
  const entry = catalogue[type];
  const statics = entry?.output_ports ?? ["out"];
  if (!entry?.ports_from) return statics;
  const [field, key] = entry.ports_from;
  const items = Array.isArray(config?.[field]) ? config[field] : [];
  const names = items.map((item) => item && item[key]).filter((n) => typeof n === "string" && n);
  return [...names, ...statics];
}

export function lookOf(entry) {
  return entry?.look ?? FALLBACK_LOOK;
}

export function nodeMeta(node, catalogue) {
  const entry = catalogue[node.type];
  const outs = outputPorts(node.type, node.config, catalogue);
  const ins = entry ? entry.input_ports : ["in"];
  const look = lookOf(entry);
  const height = look.header + (outs.length > 1 ? (outs.length - 1) * look.port_row + 8 : 0);
  const items = [
    ...ins.map((p) => ({ id: p, group: "in" })),
    ...outs.map((p) => ({ id: `out:${p}`, group: "out", attrs: { text: { text: outs.length > 1 || p !== "out" ? p : "" } } })),
  ];
  return { entry, height, items, width: look.width };
}

export function problemsByNode(problems) {
  const byNode = {};
  for (const p of problems) if (p.node_id) (byNode[p.node_id] ||= []).push(p);
  return byNode;
}

export function nodeCell(node, catalogue, problems = []) {
  const { entry, height, items, width } = nodeMeta(node, catalogue);
  const label = node.name || entry?.label || node.type;
  return {
    id: node.id,
    shape: "kwala-node",
    x: node.position?.x ?? 0,
    y: node.position?.y ?? 0,
    width,
    height,
    data: { type: node.type, name: node.name || "", config: node.config || {} },
    attrs: {
      title: { text: clip(label, 26) },
      subtitle: { text: entry ? `${entry.label} · ${node.id}` : `Unknown type ${node.type}` },
      stripe: { fill: lookOf(entry).colour },
      ...problemAttrs(problems, label),
    },
    ports: { items },
  };
}

export function edgeCell(edge) {
  return {
    id: edge.id,
    shape: "edge",
    source: { cell: edge.source, port: `out:${edge.source_port}` },
    target: { cell: edge.target, port: "in" },
    connector: { name: "ports" },
    attrs: { line: { stroke: "#64748b", strokeWidth: 1.5, targetMarker: { name: "block", width: 8, height: 6 } } },
    zIndex: 0,
  };
}

// The server's rule for node ids (flows/schemas/graph.schema.json, sent with the editor's
// rules); edge ids are at most 100 characters.
let NODE_ID = null;
export function useNodeIdRule(pattern) {
  NODE_ID = new RegExp(pattern);
}

// `wanted` itself when it is a valid id that is free, else `<wanted>_<n>` for the
// first free n (always numbered when `numbered`): valid under NODE_ID either way.
export function uniqueNodeId(wanted, isTaken, { numbered = false } = {}) {
  let base = String(wanted || "node").replace(/[^A-Za-z0-9_]/g, "_");
  if (!/^[A-Za-z_]/.test(base)) base = `n_${base}`;
  if (!numbered && NODE_ID !== null && NODE_ID.test(base) && !isTaken(base)) return base;
  if (!numbered) base = base.replace(/_\d+$/, "") || "node"; // "notify_1" pasted again becomes "notify_2"
  base = base.slice(0, 56);
  for (let n = 1; ; n += 1) {
    const id = `${base}_${n}`;
    if (!isTaken(id)) return id;
  }
}

export function freshEdgeId(isTaken) {
  for (let n = 1; ; n += 1) {
    const id = `e${n}`;
    if (!isTaken(id)) return id;
  }
}

// Nodes and edges copied from any flow (the clipboard is shared by every tab), ready to
// add to this one: each node keeps its id when that id is free here, else gets a new
// valid one; expressions of pasted nodes that read another pasted node follow the new
// id; edges are remapped and dropped when either end was not pasted.
export function prepareClipboard(clip, { isTaken, catalogue, offset = 40 }) {
  const mapping = {};
  const nodes = [];
  const taken = new Set();
  const busy = (id) => taken.has(id) || isTaken(id);
  for (const node of Array.isArray(clip?.nodes) ? clip.nodes : []) {
    if (!node || typeof node.id !== "string" || !catalogue[node.type] || node.id in mapping) continue;
    const id = uniqueNodeId(node.id, busy);
    taken.add(id);
    mapping[node.id] = id;
    const position = { x: (Number(node.position?.x) || 0) + offset, y: (Number(node.position?.y) || 0) + offset };
    const config = node.config && typeof node.config === "object" && !Array.isArray(node.config) ? node.config : {};
    nodes.push({ id, type: node.type, name: typeof node.name === "string" ? node.name : "", config, position });
  }
  const renamed = Object.entries(mapping).filter(([from, to]) => from !== to);
  if (renamed.length) {
    for (const node of nodes) {
      let text = JSON.stringify(node.config);
      for (const [from, to] of renamed) text = text.replace(new RegExp(`\\bsteps\\.${from}\\b`, "g"), `steps.${to}`);
      node.config = JSON.parse(text);
    }
  }
  const edges = [];
  for (const edge of Array.isArray(clip?.edges) ? clip.edges : []) {
    if (!edge || !mapping[edge.source] || !mapping[edge.target] || typeof edge.source_port !== "string") continue;
    edges.push({ source: mapping[edge.source], source_port: edge.source_port, target: mapping[edge.target] });
  }
  return { nodes, edges };
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

export function createGraph(container, { readonly = false, minimap = null } = {}) {
  registerShapes();
  const graph = new X6.Graph({
    container,
    autoResize: true,
    // Only the cells in (or near) the visible area get SVG elements; the rest are
    // drawn when panning or zooming brings them into view. Drawing the DOM of every
    // node is what costs most when a large flow opens (see bench/editor_load.py).
    virtual: true,
    createCellView: (cell) => sharedOptionsView(cell.isNode() ? X6.NodeView : X6.EdgeView),
    grid: { size: 10, visible: true, type: "dot", args: { color: "#cbd5e1" } },
    background: { color: "#f8fafc" },
    panning: { enabled: true, eventTypes: ["leftMouseDown"] },
    mousewheel: { enabled: true, modifiers: ["ctrl", "meta"], minScale: 0.2, maxScale: 2 },
    interacting: readonly ? { nodeMovable: false, edgeMovable: false, magnetConnectable: false } : true,
    connecting: {
      snap: { radius: 24 },
      allowBlank: false,
      allowLoop: false,
      allowNode: false,
      allowEdge: false,
      allowMulti: false,
      highlight: true,
      connector: { name: "ports" },
      // Edges start and end at the ports' centres (the circles are drawn over them), not where
      // a line would cross the circle, which moved the ends off the port by up to its radius.
      connectionPoint: "anchor",
      validateMagnet({ magnet }) {
        return !readonly && magnet.getAttribute("port-group") === "out";
      },
      validateConnection({ sourcePort, targetPort, targetMagnet }) {
        return Boolean(sourcePort && sourcePort.startsWith("out:") && targetPort === "in" && targetMagnet);
      },
      createEdge() {
        return this.createEdge(edgeCell({ source: "", source_port: "", target: "" }));
      },
    },
    highlighting: {
      magnetAvailable: { name: "stroke", args: { padding: 4, attrs: { stroke: "#2563eb", strokeWidth: 2 } } },
    },
  });
  if (minimap) deferMinimap(graph, minimap);
  return graph;
}

// X6 builds the options of every cell view afresh, a deep copy of the view class's
// defaults, and builds a view for every cell (also those out of view, which are not drawn):
// the views of the 200-node flow took 135-170 ms to build, 58 ms with this, in DevTools
// profiles (bench/editor_load.py). They are
// the same for every view of a class (the graph aside), so they are built once.
const sharedOptionsViews = new Map();

function sharedOptionsView(Base) {
  if (!sharedOptionsViews.has(Base)) {
    sharedOptionsViews.set(Base, class extends Base {
      ensureOptions(options) {
        const ctor = this.constructor;
        if (!Object.prototype.hasOwnProperty.call(ctor, "shared")) ctor.shared = super.ensureOptions({});
        return { ...ctor.shared, ...options };
      }
    });
  }
  return sharedOptionsViews.get(Base);
}

// The minimap draws a second copy of the graph. It waits until the browser is idle
// after the first paint, is skipped while its box is hidden (narrow screens), and
// draws each node as a plain rectangle without edges, ports or text.
function deferMinimap(graph, box) {
  let added = false;
  box.hidden = true;
  const add = () => {
    if (added) return;
    box.hidden = false;
    if (getComputedStyle(box).display === "none") { // the stylesheet hides it on narrow screens
      box.hidden = true;
      return;
    }
    added = true;
    graph.use(new X6.MiniMap({
      container: box, width: 180, height: 120, padding: 8, scalable: false,
      // One synchronous pass of plain rectangles is cheaper than many async frames.
      graphOptions: { async: false, createCellView: (cell) => (cell.isNode() ? MinimapNodeView() : null) },
    }));
  };
  const later = () => (window.requestIdleCallback ? window.requestIdleCallback(add, { timeout: 3000 }) : setTimeout(add, 500));
  // Late enough not to compete with the first clicks on a freshly opened flow.
  setTimeout(later, 1500);
  window.addEventListener("resize", () => { if (!added) later(); });
}

let minimapNodeView = null;

function MinimapNodeView() {
  if (!minimapNodeView) {
    minimapNodeView = class extends X6.NodeView {
      renderMarkup() {
        return this.renderJSONMarkup({ tagName: "rect", selector: "body" });
      }

      renderPorts() {}

      update() {
        super.update({ body: { refWidth: "100%", refHeight: "100%", rx: 8, fill: "#cbd5e1" } });
      }
    };
  }
  return minimapNodeView;
}

// The view a flow opens with: all of it when it fits at a readable size, otherwise
// its top-left part (where the trigger sits) at the smallest readable scale. The same
// as X6's zoomToFit (padding 40, at most 1:1), computed from a box so that loadGraph can
// set it before any cell exists.
export const READABLE_SCALE = 0.5;
const PADDING = 40;

export function viewFor(box, width, height, { minScale = READABLE_SCALE } = {}) {
  if (!box || !box.width || !box.height) return null;
  const scale = Math.min((width - 2 * PADDING) / box.width, (height - 2 * PADDING) / box.height, 1);
  if (scale < minScale) {
    return { scale: minScale, tx: PADDING - box.x * minScale, ty: PADDING - box.y * minScale };
  }
  return { scale, tx: width / 2 - (box.x + box.width / 2) * scale, ty: height / 2 - (box.y + box.height / 2) * scale };
}

function applyView(graph, view) {
  if (!view) {
    graph.centerContent();
    return;
  }
  graph.zoomTo(view.scale);
  graph.translate(view.tx, view.ty);
  // X6 moves its render area (what virtual rendering draws) on a 200 ms throttle, so a
  // view set right after the graph was made would first be drawn for the area the graph was
  // made with, and the nodes really in view only up to 200 ms later. Flushing the throttle
  // (a lodash throttle: X6 3.1.8's VirtualRender.resetRenderArea) moves the area now.
  graph.virtualRender?.resetRenderArea?.flush?.();
}

function boxOf(cells) {
  let [x1, y1, x2, y2] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const c of cells) {
    x1 = Math.min(x1, c.x);
    y1 = Math.min(y1, c.y);
    x2 = Math.max(x2, c.x + c.width);
    y2 = Math.max(y2, c.y + c.height);
  }
  return cells.length ? { x: x1, y: y1, width: x2 - x1, height: y2 - y1 } : null;
}

export function openView(graph, options = {}) {
  const nodes = graph.getNodes();
  const box = nodes.length ? graph.getCellsBBox(nodes) : null;
  const { width, height } = graph.container.getBoundingClientRect();
  applyView(graph, viewFor(box, width, height, options));
}

function cellsOf(data, catalogue, problems) {
  const byNode = problemsByNode(problems);
  return {
    nodes: data.nodes.map((n) => nodeCell(n, catalogue, byNode[n.id])),
    edges: data.edges.map((e, i) => edgeCell({ ...e, id: e.id || `e_${i}_${e.source}_${e.target}` })),
  };
}

// Loads a flow at its opening view (openView), set first, from the nodes' positions and
// sizes, so that X6 draws the cells in that view only and only once.
export function loadGraph(graph, data, catalogue, problems = []) {
  const { nodes, edges } = cellsOf(data, catalogue, problems);
  const { width, height } = graph.container.getBoundingClientRect();
  applyView(graph, viewFor(boxOf(nodes), width, height));
  graph.fromJSON({ cells: [...nodes, ...edges] });
}

// The same at a given view, a slice of cells at a time: between slices the page answers
// input (a click on the first paint's nodes). X6 builds a model cell and a view for every
// cell, ~0.5 ms each on the 2-core machine: a 1,000-node flow in one go blocked the page
// for over half a second (bench/editor_load.py).
const SLICE_MS = 30;

// `pause` is awaited before each slice: what the person asked for meanwhile goes first.
export async function loadGraphInSlices(graph, data, catalogue, problems, view, { pause = () => null } = {}) {
  const { nodes, edges } = cellsOf(data, catalogue, problems);
  applyView(graph, view);
  // X6 re-sorts all the cells by zIndex on every add unless told not to: once at the end is
  // enough (nodes get rising zIndexes as they are added, edges 0). Sorting on every add, the
  // 1,000-node flow of bench/editor_load.py spent 0.26 s of its 0.63 s of slices sorting.
  const unsorted = { sort: false };
  for (const [add, cells] of [[(c) => graph.addNodes(c, unsorted), nodes], [(c) => graph.addEdges(c, unsorted), edges]]) {
    let i = 0;
    while (i < cells.length) {
      await pause();
      const started = performance.now();
      while (i < cells.length && performance.now() - started < SLICE_MS) {
        add(cells.slice(i, i + 50));
        i += 50;
      }
      await nextTask();
    }
  }
  // Once, in the end: X6 gives a cell added later the last cell's zIndex + 1, and unsorted the
  // last cells are the edges (0), so a node dropped next would be drawn under the others.
  graph.model.collection.sort({ silent: true });
}

// A task of the ordinary priority, so that input, a fetch's answer and frames take their turns
// between slices (scheduler.yield() would put the slices ahead of them).
function nextTask() {
  if (globalThis.scheduler?.postTask) return globalThis.scheduler.postTask(() => {}, { priority: "user-visible" });
  return new Promise((resolve) => { setTimeout(resolve, 0); });
}

// -- the first paint ------------------------------------------------------------------------
// What the canvas shows before X6 has loaded: the nodes and edges in the opening view, drawn
// as plain SVG in one step from the flow's JSON, attribute for attribute as X6 draws them
// (NODE_SHAPE, portPath, the same view), with a click that selects a node. X6 (its ~0.6 MB
// script, a model cell and a view per cell) then builds the editable canvas underneath, in
// slices that leave the page answering input, and the picture is removed once X6 has drawn
// every node in view. bench/editor_load.py, 200-node flow: on screen after 0.28-0.35 s and a
// click shows its node's settings after 0.39-0.48 s, instead of 0.75-0.91 s and 0.87-1.07 s
// with X6 first; editable (drag, connect, pan, zoom) after ~1.0 s instead of ~0.8 s.
const SVG_NS = "http://www.w3.org/2000/svg";

function esc(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function attrsOf(markupAttrs, extra = {}) {
  return Object.entries({ ...markupAttrs, ...extra }).map(([k, v]) => `${k}="${esc(v)}"`).join(" ");
}

// Where X6's "left" and "right" port layouts put a port on its cell (port i of n of its group
// spread evenly down the edge); undefined for a port the cell does not have.
function portAt(cell, id) {
  const port = cell.ports.items.find((p) => p.id === id);
  if (!port) return undefined;
  const group = cell.ports.items.filter((p) => p.group === port.group);
  return { x: port.group === "in" ? 0 : cell.width, y: ((group.indexOf(port) + 0.5) / group.length) * cell.height };
}

export function firstPaint(container, data, catalogue, problems = [], { minScale = READABLE_SCALE } = {}) {
  const byNode = problemsByNode(problems);
  const cells = data.nodes.map((n) => nodeCell(n, catalogue, byNode[n.id]));
  const { width, height } = container.getBoundingClientRect();
  const view = { ...(viewFor(boxOf(cells), width, height, { minScale }) ?? { scale: 1, tx: width / 2, ty: height / 2 }), width, height };
  const area = { x: -view.tx / view.scale, y: -view.ty / view.scale, width: width / view.scale, height: height / view.scale };
  const inView = (c) => c.x < area.x + area.width && c.x + c.width > area.x && c.y < area.y + area.height && c.y + c.height > area.y;
  const drawn = new Map(cells.filter(inView).map((c) => [c.id, c]));
  const byId = new Map(cells.map((c) => [c.id, c]));
  const [body, stripe, title, subtitle, badge, badgeText] = NODE_SHAPE.markup.map((m) => m.attrs);
  const parts = [];
  for (const e of data.edges) {
    const source = byId.get(e.source);
    const target = byId.get(e.target);
    if (!source || !target || !(drawn.has(e.source) || drawn.has(e.target))) continue;
    const out = portAt(source, `out:${e.source_port}`);
    const into = portAt(target, "in");
    if (!out || !into) continue;
    const from = { x: source.x + out.x, y: source.y + out.y };
    const port = { x: target.x + into.x, y: target.y + into.y };
    // X6 ends the line 1.5 units short of the port, back along the straight line from the
    // source (where its arrowhead begins).
    const d = Math.hypot(port.x - from.x, port.y - from.y) || 1;
    const to = { x: port.x - (1.5 * (port.x - from.x)) / d, y: port.y - (1.5 * (port.y - from.y)) / d };
    parts.push(`<path data-edge-id="${esc(e.id ?? "")}" fill="none" stroke="#64748b" stroke-width="1.5" stroke-linejoin="round" d="${portPath(from, to)}" marker-end="url(#first-paint-arrow)"/>`);
  }
  for (const c of drawn.values()) {
    const a = c.attrs;
    const count = a.badgeText.text;
    const ports = c.ports.items.map((p) => {
      const { x, y } = portAt(c, p.id);
      const label = p.attrs?.text?.text ? `<text font-size="10" fill="#475569" y=".3em" transform="translate(-10,0)" text-anchor="end">${esc(p.attrs.text.text)}</text>` : "";
      return `<g transform="translate(${x},${y})"><circle data-port="${esc(p.id)}" ${attrsOf(PORT_CIRCLE)}/>${label}</g>`;
    }).join("");
    parts.push(
      `<g class="first-node" data-node-id="${esc(c.id)}" transform="translate(${c.x},${c.y})">`
      + `<rect class="node-body" ${attrsOf(body, { width: c.width, height: c.height })}/>`
      + `<rect ${attrsOf(stripe, { height: c.height, fill: a.stripe.fill })}/>`
      + `<text ${attrsOf(title)} transform="translate(16,16)"><tspan dy="0.3em">${esc(a.title.text)}</tspan></text>`
      + `<text ${attrsOf(subtitle)} transform="translate(16,33)"><tspan dy="0.3em">${esc(a.subtitle.text)}</tspan></text>`
      + (count ? `<circle ${attrsOf(badge, { visibility: "visible" })} transform="translate(${c.width - 30},0)"/>`
        + `<text ${attrsOf(badgeText, { visibility: "visible" })} transform="translate(${c.width - 30},0)"><tspan dy="0.3em">${esc(count)}</tspan></text>` : "")
      + `<title>${esc(a.tip.text)}</title>${ports}</g>`,
    );
  }
  // X6's dot grid: a dot of 1 unit every 10, scaled and moved with the view.
  const step = 10 * view.scale;
  const mod = (v) => ((v % step) + step) % step;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "first-paint");
  svg.innerHTML = `<defs><pattern id="first-paint-grid" patternUnits="userSpaceOnUse" x="${mod(view.tx)}" y="${mod(view.ty)}" width="${step}" height="${step}">`
    + `<rect width="${view.scale}" height="${view.scale}" rx="${view.scale}" ry="${view.scale}" fill="#cbd5e1"/></pattern>`
    + '<marker id="first-paint-arrow" refX="-1" overflow="visible" orient="auto" markerUnits="userSpaceOnUse"><path stroke="#64748b" fill="#64748b" transform="rotate(180)" d="M 0 0 L 8 -3 L 8 3 Z"/></marker></defs>'
    + '<rect width="100%" height="100%" fill="#f8fafc"/><rect width="100%" height="100%" fill="url(#first-paint-grid)"/>'
    + `<g transform="matrix(${view.scale},0,0,${view.scale},${view.tx},${view.ty})">${parts.join("")}</g>`;
  // Beside the canvas, not in it: X6 empties its container when it makes its graph.
  container.after(svg);
  let selected = null;
  return {
    svg,
    view,
    select(id) {
      selected?.classList.remove("selected");
      selected = id ? svg.querySelector(`[data-node-id="${CSS.escape(id)}"]`) : null;
      selected?.classList.add("selected");
    },
    get selected() { return selected?.dataset.nodeId ?? null; },
    remove() { svg.remove(); },
  };
}

export function serialize(graph) {
  const nodes = graph.getNodes().map((node) => {
    const data = node.getData() || {};
    const pos = node.getPosition();
    const out = { id: node.id, type: data.type, config: data.config || {}, position: { x: Math.round(pos.x), y: Math.round(pos.y) } };
    if (data.name) out.name = data.name;
    return out;
  });
  const edges = [];
  for (const edge of graph.getEdges()) {
    const source = edge.getSourceCellId();
    const target = edge.getTargetCellId();
    const port = edge.getSourcePortId();
    if (!source || !target || !port) continue;
    edges.push({ id: String(edge.id), source, source_port: port.replace(/^out:/, ""), target });
  }
  nodes.sort((a, b) => (a.id < b.id ? -1 : 1));
  return { nodes, edges };
}

const STATUS_COLOURS = {
  PENDING: ["#f1f5f9", "#94a3b8"],
  QUEUED: ["#eff6ff", "#60a5fa"],
  RUNNING: ["#fef9c3", "#ca8a04"],
  SUCCEEDED: ["#dcfce7", "#16a34a"],
  FAILED: ["#fee2e2", "#dc2626"],
  SKIPPED: ["#f1f5f9", "#cbd5e1"],
  CANCELLED: ["#f1f5f9", "#64748b"],
};

export function setStatus(node, status) {
  const [fill, stroke] = STATUS_COLOURS[status] ?? ["#fff", "#94a3b8"];
  node.attr("body", { fill, stroke, class: status ? `node-body status-${status.toLowerCase()}` : "node-body" }, { silent: false, history: false });
}

function problemAttrs(problems, label) {
  const count = problems.length;
  return {
    badge: { visibility: count ? "visible" : "hidden", class: count ? "node-badge has-problems" : "node-badge" },
    badgeText: { visibility: count ? "visible" : "hidden", text: count ? String(count) : "" },
    tip: { text: count ? problems.map((p) => p.message).join("\n") : label },
  };
}

export function setProblems(node, problems, catalogue) {
  const data = node.getData() || {};
  const attrs = problemAttrs(problems, data.name || catalogue[data.type]?.label || data.type);
  // Every save answers with the whole problem list: only redraw the nodes it changes.
  if (node.attr("badgeText/text") === attrs.badgeText.text && node.attr("tip/text") === attrs.tip.text) return;
  node.attr(attrs, { history: false });
}

export function refreshNode(node, catalogue) {
  const data = node.getData();
  const cell = nodeCell({ id: node.id, ...data, position: node.getPosition() }, catalogue);
  // The problem badge belongs to the last answer from the server, not to the node's data.
  const { badge, badgeText, tip, ...attrs } = cell.attrs;
  node.attr(attrs, { history: false });
  node.resize(cell.width, cell.height, { history: false });
  const wanted = cell.ports.items.map((p) => p.id).join("|");
  const have = node.getPorts().map((p) => p.id).join("|");
  if (wanted !== have) {
    node.removePorts({ history: false });
    node.addPorts(cell.ports.items, { history: false });
  }
}

export function wsUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

// A websocket that reconnects with backoff and calls onMessage for every message.
export function liveSocket(path, onMessage) {
  let socket = null;
  let delay = 500;
  let closed = false;
  const open = () => {
    socket = new WebSocket(wsUrl(path));
    socket.onmessage = (e) => {
      delay = 500;
      try {
        onMessage(JSON.parse(e.data));
      } catch (err) {
        console.warn("bad live message", err);
      }
    };
    socket.onclose = (e) => {
      if (closed || e.code === 4403) return;
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
  return { close() { closed = true; socket?.close(); } };
}
