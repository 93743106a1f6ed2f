// The run page: the flow's graph, read-only, with each step's status updated live.
// The websocket only says "something changed"; the state is read back from the server.
/* global htmx */
import { createGraph, liveSocket, loadGraph, openView, setStatus } from "./canvas.js";

const $ = (sel) => document.querySelector(sel);
const graphData = JSON.parse($("#run-graph").textContent);
const urls = JSON.parse($("#run-urls").textContent);
let state = JSON.parse($("#run-state").textContent);
const catalogue = Object.fromEntries(JSON.parse($("#run-catalogue").textContent).map((e) => [e.key, e]));
const graph = createGraph($("#canvas"), { readonly: true });
loadGraph(graph, graphData, catalogue);
paint();
openView(graph);
requestAnimationFrame(() => openView(graph)); // once the page's layout has settled

function paint() {
  for (const node of graph.getNodes()) {
    const step = state.steps[node.id];
    const status = step ? step.status : node.id === triggerId() ? "SUCCEEDED" : "PENDING";
    setStatus(node, status);
    const label = document.querySelector(`[data-step-status="${CSS.escape(node.id)}"]`);
    if (label) label.textContent = status.toLowerCase();
  }
  const badge = $("#run-status");
  badge.textContent = state.status.charAt(0) + state.status.slice(1).toLowerCase();
  badge.className = `badge status-${state.status.toLowerCase()}`;
  $("#reorg-banner").hidden = !state.reorged;
  document.documentElement.dataset.runStatus = state.status;
}

function triggerId() {
  const targets = new Set(graphData.edges.map((e) => e.target));
  return graphData.nodes.find((n) => !targets.has(n.id))?.id;
}

let selected = null;
async function refresh() {
  const res = await fetch(urls.state, { credentials: "same-origin" });
  if (!res.ok) return;
  state = await res.json();
  paint();
  if (selected) show(selected);
}

function show(stepId) {
  selected = stepId;
  htmx.ajax("GET", urls.step.replace("STEP", encodeURIComponent(stepId)), { target: "#step-details", swap: "innerHTML" });
}

let timer = null;
liveSocket(urls.ws, () => { clearTimeout(timer); timer = setTimeout(refresh, 80); });
graph.on("node:click", ({ node }) => show(node.id));
for (const button of document.querySelectorAll(".step-pick")) button.addEventListener("click", () => show(button.dataset.step));
