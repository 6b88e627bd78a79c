// The previewer's DOM element (canvas + toolbar + message line), independent of ComfyUI so it can be tested alone.
// createPreviewElement({fetchFile(entry) -> Promise<ArrayBuffer>}) -> {element, showEntries(entries), show(buffer,
// name), renderer, dispose()}. Errors (unreadable file, no WebGL2) are shown as text in the element.
import { parsePly, PlyError } from "./ply_parser.js";
import { SplatRenderer } from "./splat_renderer.js";

const WORKER_URL = new URL("./sort_worker.js", import.meta.url);

function el(tag, style, text) {
  const e = document.createElement(tag);
  if (style) Object.assign(e.style, style);
  if (text !== undefined) e.textContent = text;
  return e;
}

export function createPreviewElement(options = {}) {
  const root = el("div", {
    position: "relative", width: "100%", height: "100%", minHeight: "200px", display: "flex",
    flexDirection: "column", background: "#1c1c1e", borderRadius: "6px", overflow: "hidden",
    fontFamily: "sans-serif", fontSize: "12px", color: "#ddd",
  });
  root.className = "vist3a-splat-preview";
  const bar = el("div", { display: "flex", gap: "6px", alignItems: "center", padding: "3px 6px", flex: "0 0 auto" });
  const select = el("select", { display: "none", maxWidth: "50%", fontSize: "11px" });
  const info = el("span", { flex: "1 1 auto", overflow: "hidden", whiteSpace: "nowrap", textOverflow: "ellipsis", opacity: "0.8" });
  info.className = "vist3a-info";
  const reset = el("button", { fontSize: "11px", padding: "0 6px" }, "Reset view");
  reset.title = "Left drag: orbit · right/middle drag or shift+drag: pan · wheel: zoom · double click: reset";
  bar.append(select, info, reset);
  const stage = el("div", { position: "relative", flex: "1 1 auto", minHeight: "0" });
  const canvas = el("canvas", { width: "100%", height: "100%", display: "block", touchAction: "none", cursor: "grab" });
  const message = el("div", {
    position: "absolute", inset: "0", display: "none", alignItems: "center", justifyContent: "center",
    padding: "12px", textAlign: "center", color: "#ffb4a8", background: "rgba(20,20,22,0.88)", whiteSpace: "pre-wrap",
    wordBreak: "break-word",
  });
  message.className = "vist3a-message";
  stage.append(canvas, message);
  root.append(bar, stage);

  let renderer = null;
  let entries = [];
  let loadToken = 0;

  function showMessage(text, isError = true) {
    message.textContent = text;
    message.style.color = isError ? "#ffb4a8" : "#ddd";
    message.style.display = text ? "flex" : "none";
    root.dataset.state = text ? (isError ? "error" : "loading") : "ready";
  }

  function ensureRenderer() {
    if (!renderer) {
      renderer = new SplatRenderer(canvas, { workerUrl: options.workerUrl === undefined ? WORKER_URL : options.workerUrl,
        preserveDrawingBuffer: !!options.preserveDrawingBuffer });
    }
    return renderer;
  }

  /** Parse and show one PLY file already in memory. */
  function show(buffer, name = "file") {
    let scene;
    const t0 = performance.now();
    try {
      scene = parsePly(buffer);
    } catch (err) {
      const text = err instanceof PlyError ? err.message : `Unexpected error: ${err?.message || err}`;
      showMessage(`Cannot preview ${name}:\n${text}`);
      info.textContent = name;
      return null;
    }
    const t1 = performance.now();
    try {
      ensureRenderer().setScene(scene);
    } catch (err) {
      showMessage(`Cannot preview ${name}:\n${err?.message || err}`);
      return null;
    }
    const what = scene.kind === "splats" ? "splats" : "points";
    info.textContent = `${name} · ${scene.count.toLocaleString()} ${what}`;
    showMessage("");
    api.timings = { parseMs: t1 - t0, uploadMs: performance.now() - t1 };
    return scene;
  }

  async function load(index) {
    const entry = entries[index];
    if (!entry) return;
    const token = ++loadToken;
    info.textContent = entry.filename;
    showMessage(`Loading ${entry.filename}…`, false);
    let buffer;
    const t0 = performance.now();
    try {
      buffer = await options.fetchFile(entry);
    } catch (err) {
      if (token === loadToken) showMessage(`Cannot preview ${entry.filename}:\n${err?.message || err}`);
      return;
    }
    if (token !== loadToken) return;
    const fetchMs = performance.now() - t0;
    if (show(buffer, entry.filename)) api.timings.fetchMs = fetchMs;
  }

  function showEntries(list) {
    entries = list.slice();
    select.textContent = "";
    entries.forEach((e, i) => select.append(new Option(e.filename, String(i))));
    select.style.display = entries.length > 1 ? "" : "none";
    select.value = "0";
    return load(0);
  }

  select.addEventListener("change", () => load(Number(select.value)));
  reset.addEventListener("click", () => renderer?.resetView());
  for (const type of ["pointerdown", "wheel", "contextmenu"]) {
    // keep the graph canvas from panning / zooming while the user works in the preview
    root.addEventListener(type, (e) => e.stopPropagation(), { passive: true });
  }

  const api = {
    element: root,
    canvas,
    showEntries,
    show,
    showMessage,
    get renderer() { return renderer; },
    dispose() {
      loadToken++;
      renderer?.dispose();
      renderer = null;
      root.remove();
    },
  };
  return api;
}
