// The run page: the flow's graph, read-only, with each step's status updated live; and the
// runs list, which reloads its rows when a run of the team starts or changes status.
// The websocket only says "something changed"; the state is read back from the server.
/* global htmx */
import { createGraph, liveSocket, loadGraph, openView, setStatus } from "./canvas.js";

const $ = (sel) => document.querySelector(sel);

if ($("#run-graph")) runPage();
if ($("#runs[data-live]")) runList($("#runs"));

function runPage() {
  const graphData = JSON.parse($("#run-graph").textContent);
  const urls = JSON.parse($("#run-urls").textContent);
  let state = JSON.parse($("#run-state").textContent);
  const catalogue = Object.fromEntries(JSON.parse($("#run-catalogue").textContent).map((e) => [e.key, e]));
  const graph = createGraph($("#canvas"), { readonly: true });
  const targets = new Set(graphData.edges.map((e) => e.target));
  const triggerId = graphData.nodes.find((n) => !targets.has(n.id))?.id;
  loadGraph(graph, graphData, catalogue);
  paint();
  requestAnimationFrame(() => openView(graph)); // once the page's layout has settled

  function paint() {
    for (const node of graph.getNodes()) {
      const step = state.steps[node.id];
      const status = step ? step.status : node.id === triggerId ? "SUCCEEDED" : "PENDING";
      setStatus(node, status);
      const label = document.querySelector(`[data-step-status="${CSS.escape(node.id)}"]`);
      if (label) label.textContent = status.toLowerCase() + (step?.duration_ms != null ? ` · ${step.duration_ms} ms` : "");
    }
    const badge = $("#run-status");
    if (state.filtered) {
      badge.textContent = "Filtered";
      badge.title = "The run succeeded, but a condition stopped it before any action.";
    } else {
      badge.textContent = state.status.charAt(0) + state.status.slice(1).toLowerCase();
      badge.title = "";
    }
    badge.className = `badge status-${state.filtered ? "filtered" : state.status.toLowerCase()}`;
    $("#reorg-banner").hidden = !state.reorged;
    document.documentElement.dataset.runStatus = state.status;
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
}

// The list as the server renders it for the current filters and page, read again at most
// every REFRESH_MS while runs change; rows that were not there before are marked new.
function runList(box) {
  const REFRESH_MS = 400;
  let timer = null;
  let busy = false;
  let again = false;
  const codes = () => new Set([...box.querySelectorAll("tr[data-run]")].map((row) => row.dataset.run));

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    const before = codes();
    try {
      await htmx.ajax("GET", window.location.pathname + window.location.search, { target: "#runs", swap: "innerHTML" });
      for (const row of box.querySelectorAll("tr[data-run]")) {
        if (!before.has(row.dataset.run)) row.classList.add("run-new");
      }
      box.dataset.refreshed = String(Number(box.dataset.refreshed || 0) + 1);
    } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (timer) return;
    timer = setTimeout(() => { timer = null; refresh(); }, REFRESH_MS);
  }

  // The socket's first message ("live") follows every (re)connect: what changed while it was
  // down is read then.
  liveSocket(box.dataset.live, (msg) => {
    if (msg.type === "live") box.dataset.connected = "1";
    schedule();
  });
}

// Copy a step's input or output (or a hash) as the server rendered it: exact big ints.
document.addEventListener("click", async (e) => {
  const button = e.target.closest("[data-action=copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent);
  } catch {
    // No clipboard API outside secure contexts (plain http on a LAN): select the text to copy by hand.
    if (!source.hidden) getSelection().selectAllChildren(source);
    button.textContent = "Press Ctrl+C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});
