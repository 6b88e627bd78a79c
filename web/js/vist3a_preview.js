// VIST3A splat / point-cloud previewer: ComfyUI frontend extension.
//
// ComfyUI serves this pack's web/ folder at /extensions/<pack>/ and imports every .js in it as an ES module, so this
// file (web/js/) reaches the frontend's modules three levels up. It attaches a DOM widget with the Spark-based viewer
// (preview_widget.js, splat_viewer.js) to the VIST3A save/preview nodes and to any node whose execution output carries
// `vist3a_splats` or `vist3a_points` ([{filename, subfolder, type}] of .ply / .spz / .splat / .ksplat / .sog files;
// `vist3a_untrained: [true]` shows a banner), and loads the files through ComfyUI's /view endpoint.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { createPreviewElement } from "./preview_widget.js";

// Node ids whose saved output is restored on workflow load; any node whose output carries one of UI_KEYS is previewed.
const NODE_IDS = new Set(["SaveSplatPLY", "PreviewSplat", "VIST3APreviewSplats", "SavePointmapPLY", "SavePointCloudPLY"]);
const UI_KEYS = ["vist3a_splats", "vist3a_points"];
const FILE_PATTERN = /\.(ply|spz|splat|ksplat|sog)$/i;
const WIDGET_NAME = "vist3a_preview";

/** URL of a saved file through ComfyUI's /view endpoint. */
export function viewUrl(entry) {
  const params = new URLSearchParams({
    filename: entry.filename,
    subfolder: entry.subfolder || "",
    type: entry.type || "output",
  });
  return api.apiURL(`/view?${params.toString()}`);
}

function ensurePreview(node) {
  if (node.__vist3aPreview) return node.__vist3aPreview;
  const preview = createPreviewElement({
    fetchFile: async (entry) => {
      const response = await api.fetchApi(`/view?${new URLSearchParams({
        filename: entry.filename, subfolder: entry.subfolder || "", type: entry.type || "output",
      })}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`Could not load ${entry.filename}: the server answered ${response.status} ${response.statusText}.`);
      return response.arrayBuffer();
    },
    onHeightChange: () => app.graph?.setDirtyCanvas?.(true, true),
  });
  const widget = node.addDOMWidget(WIDGET_NAME, "vist3a-splat-preview", preview.element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 280,
    getHeight: () => 360,
  });
  widget.serialize = false;
  node.__vist3aPreview = preview;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    preview.dispose();
    node.__vist3aPreview = null;
    return onRemoved?.apply(this, arguments);
  };
  if (node.size && node.size[1] < 420) node.setSize?.([Math.max(node.size[0], 360), 420]);
  return preview;
}

/** The previewable file entries of a node output (UI payload), or null. */
function plyEntries(output) {
  if (!output) return null;
  const all = UI_KEYS.flatMap((k) => (Array.isArray(output[k]) ? output[k] : []));
  const files = all.filter((e) => e && typeof e.filename === "string" && FILE_PATTERN.test(e.filename));
  return files.length ? files : null;
}

function isUntrained(output) {
  const flag = output?.vist3a_untrained;
  return Array.isArray(flag) ? flag.some(Boolean) : !!flag;
}

function showFiles(node, entries, untrained = false) {
  if (!Array.isArray(entries) || entries.length === 0) return;
  // onExecuted and onNodeOutputsUpdated can both report the same output: load it once
  const key = JSON.stringify([entries, untrained]);
  const now = Date.now();
  if (node.__vist3aLast && node.__vist3aLast.key === key && now - node.__vist3aLast.time < 3000) return;
  node.__vist3aLast = { key, time: now };
  ensurePreview(node).showEntries(entries, { untrained });
}

function findNode(locatorId) {
  const graph = app.rootGraph ?? app.graph;
  if (!graph?.getNodeById) return null;
  const id = String(locatorId);
  return graph.getNodeById(id) ?? (/^\d+$/.test(id) ? graph.getNodeById(Number(id)) : null);
}

app.registerExtension({
  name: "vist3a.SplatPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    // Every node type: react to a `vist3a_splats` payload (covers nodes added later under other ids).
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const entries = plyEntries(message);
      if (entries) showFiles(this, entries, isUntrained(message));
      return result;
    };
    if (NODE_IDS.has(nodeData?.name)) {
      // Restore the preview of a reloaded workflow when the output is still in the queue history.
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        const output = app.nodeOutputs?.[String(this.id)];
        const last = plyEntries(output);
        if (last) showFiles(this, last, isUntrained(output));
        return r;
      };
    }
  },
  // Newer frontends (Vue "Nodes 2.0" included) report outputs through this hook: {locatorId: output}.
  onNodeOutputsUpdated(nodeOutputs) {
    const items = nodeOutputs instanceof Map ? nodeOutputs.entries() : Object.entries(nodeOutputs || {});
    for (const [locatorId, output] of items) {
      const entries = plyEntries(output);
      if (!entries) continue;
      const node = findNode(locatorId);
      if (node) showFiles(node, entries, isUntrained(output));
    }
  },
});
