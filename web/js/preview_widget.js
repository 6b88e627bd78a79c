// The previewer's DOM element (toolbar, banner, canvas, message line), independent of ComfyUI so it can be tested
// alone. createPreviewElement({fetchFile(entry) -> Promise<ArrayBuffer>}) -> {element, showEntries(entries,
// {untrained}), show(buffer, name), viewer, dispose()}. The 3D view (Spark + three.js, splat_viewer.js) is created
// on the first file. Errors (unreadable file, no WebGL2) are shown as text in the element.
import { inspectPly, parsePly, PlyError } from "./ply_parser.js";
import { SPARK_TYPES, SplatViewer } from "./splat_viewer.js";

export const UNTRAINED_TEXT = "Untrained test models: this scene is random noise (a plumbing test), not a result.";
const HELP = "Left drag: orbit · right drag: pan · wheel: zoom · W A S D / Q E: fly (Shift: faster) · double click: " +
  "reset view";

function el(tag, style, text) {
  const e = document.createElement(tag);
  if (style) Object.assign(e.style, style);
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(label, title, onClick) {
  const b = el("button", { fontSize: "11px", padding: "0 6px", cursor: "pointer" }, label);
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

function formatBounds(bounds) {
  const f = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2));
  return ["x", "y", "z"].map((a, i) => `${a} ${f(bounds.full.min[i])}…${f(bounds.full.max[i])}`).join(" ");
}

export function createPreviewElement(options = {}) {
  const root = el("div", {
    position: "relative", width: "100%", height: "100%", minHeight: "200px", display: "flex",
    flexDirection: "column", background: "#1c1c1e", borderRadius: "6px", overflow: "hidden",
    fontFamily: "sans-serif", fontSize: "12px", color: "#ddd",
  });
  root.className = "vist3a-splat-preview";
  const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", padding: "3px 6px", flex: "0 0 auto",
    flexWrap: "wrap" });
  const select = el("select", { display: "none", maxWidth: "40%", fontSize: "11px" });
  const info = el("span", { flex: "1 1 auto", overflow: "hidden", whiteSpace: "nowrap", textOverflow: "ellipsis",
    opacity: "0.8", minWidth: "60px" });
  info.className = "vist3a-info";
  const bounds = el("div", { padding: "0 6px 2px", fontSize: "10px", opacity: "0.6", whiteSpace: "nowrap",
    overflow: "hidden", textOverflow: "ellipsis", flex: "0 0 auto" });
  bounds.className = "vist3a-bounds";
  const banner = el("div", { display: "none", padding: "3px 8px", background: "#7a4b00", color: "#fff3d6",
    fontWeight: "bold", fontSize: "11px", flex: "0 0 auto" }, UNTRAINED_TEXT);
  banner.className = "vist3a-untrained";
  const stage = el("div", { position: "relative", flex: "1 1 auto", minHeight: "0" });
  const canvas = el("canvas", { width: "100%", height: "100%", display: "block", touchAction: "none", cursor: "grab",
    outline: "none" });
  canvas.tabIndex = 0;
  canvas.title = HELP;
  const message = el("div", {
    position: "absolute", inset: "0", display: "none", alignItems: "center", justifyContent: "center",
    padding: "12px", textAlign: "center", color: "#ffb4a8", background: "rgba(20,20,22,0.88)", whiteSpace: "pre-wrap",
    wordBreak: "break-word",
  });
  message.className = "vist3a-message";
  stage.append(canvas, message);

  let viewer = null;
  let entries = [];
  let loadToken = 0;
  let turntable = false;
  let background = "#1c1c1e";
  const timings = {};

  const turntableButton = button("⟳ Turntable", "Turn the scene slowly (toggle)", () => {
    turntable = !turntable;
    turntableButton.style.background = turntable ? "#3a6" : "";
    viewer?.setTurntable(turntable);
  });
  const colour = el("input", { width: "22px", height: "18px", padding: "0", border: "none", background: "none" });
  colour.type = "color";
  colour.value = background;
  colour.title = "Background colour";
  colour.addEventListener("input", () => {
    background = colour.value;
    root.style.background = background;
    viewer?.setBackground(background);
  });
  const shot = button("PNG", "Save a screenshot of the view as PNG", async () => {
    if (!viewer) return;
    const blob = await viewer.screenshot();
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${(entries[Number(select.value) || 0]?.filename || "splats").replace(/\.[^.]+$/, "")}.png`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
  const full = button("Fullscreen", "Fill the screen with the view (Esc to leave)", () => {
    if (document.fullscreenElement === root) document.exitFullscreen?.();
    else root.requestFullscreen?.();
  });
  const reset = button("Reset view", HELP, () => viewer?.resetView());
  bar.append(select, info, reset, turntableButton, colour, shot, full);
  root.append(bar, banner, bounds, stage);

  function showMessage(text, isError = true) {
    message.textContent = text;
    message.style.color = isError ? "#ffb4a8" : "#ddd";
    message.style.display = text ? "flex" : "none";
    root.dataset.state = text ? (isError ? "error" : "loading") : "ready";
  }

  async function ensureViewer() {
    if (!viewer) {
      viewer = await SplatViewer.create(canvas, { preserveDrawingBuffer: !!options.preserveDrawingBuffer,
        background });
      viewer.setTurntable(turntable);
    }
    return viewer;
  }

  /** Show one file already in memory (any format Spark reads; PLY point clouds as points). */
  async function show(buffer, name = "file") {
    const t0 = performance.now();
    const ext = String(name).split(".").pop().toLowerCase();
    let shown;
    try {
      const v = await ensureViewer();
      if (ext === "ply") {
        const ply = inspectPly(buffer);
        shown = ply.kind === "points" ? v.showPoints(parsePly(buffer)) : await v.showSplats(buffer, name);
      } else if (ext in SPARK_TYPES) {
        shown = await v.showSplats(buffer, name);
      } else {
        throw new PlyError(`Unknown file type '.${ext}': the previewer shows .ply, .spz, .splat, .ksplat and .sog.`);
      }
    } catch (err) {
      const text = err instanceof PlyError ? err.message : `${err?.message || err}`;
      showMessage(`Cannot preview ${name}:\n${text}`);
      info.textContent = name;
      bounds.textContent = "";
      return null;
    }
    if (!shown) return null;
    const what = shown.kind === "splats" ? `splats · SH ${shown.shDegree}` : "points";
    info.textContent = `${name} · ${shown.count.toLocaleString("en-US")} ${what}`;
    bounds.textContent = `bounds ${formatBounds(shown.bounds)}`;
    timings.showMs = performance.now() - t0;
    showMessage("");
    return shown;
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
    timings.fetchMs = performance.now() - t0;
    await show(buffer, entry.filename);
  }

  function showEntries(list, { untrained = false } = {}) {
    entries = list.slice();
    banner.style.display = untrained ? "" : "none";
    root.dataset.untrained = untrained ? "1" : "0";
    select.textContent = "";
    entries.forEach((e, i) => select.append(new Option(e.filename, String(i))));
    select.style.display = entries.length > 1 ? "" : "none";
    select.value = "0";
    return load(0);
  }

  select.addEventListener("change", () => load(Number(select.value)));
  canvas.addEventListener("dblclick", () => viewer?.resetView());
  for (const type of ["pointerdown", "wheel", "contextmenu", "keydown", "keyup"]) {
    // keep the graph canvas from panning / zooming (and its shortcuts from firing) while working in the preview
    root.addEventListener(type, (e) => e.stopPropagation(), { passive: true });
  }

  return {
    element: root,
    canvas,
    showEntries,
    show,
    showMessage,
    timings,
    get viewer() { return viewer; },
    dispose() {
      loadToken++;
      viewer?.dispose();
      viewer = null;
      root.remove();
    },
  };
}
