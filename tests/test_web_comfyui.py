"""Opt-in check of the previewer inside a real ComfyUI (server + its bundled frontend), in headless Chromium.

Runs only when ``COMFYUI_DIR`` (a ComfyUI checkout) and ``COMFYUI_PYTHON`` (an interpreter with ComfyUI's
requirements) are set (``COMFYUI_ARGS``: extra server arguments, e.g. ``--front-end-root DIR`` for another
frontend), Chromium is installed and ``websocket-client`` is importable; otherwise it is skipped. It starts
``main.py --cpu`` with a temporary ``--base-directory`` whose ``custom_nodes/vist3a`` links to this repository, writes
the test files into its output folder, opens the real frontend, adds SaveSplatPLY / SavePointCloudPLY /
VIST3APreviewSplats nodes, delivers their outputs through the frontend's own ``executed`` event, drags and wheels on
the preview with real input events and checks what the previewer shows (Spark viewer: the camera swings as in
ComfyUI's own 3D viewer, the graph does not move) and what the template browser offers (every UI workflow, no API
copies; not the core-nodes workflow on a ComfyUI without core splat nodes). Screenshot:
<tmp>/vist3a_web_test/comfyui.png.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_web_preview import (
    CHROMIUM_FLAGS,
    SCREENSHOT_DIR,
    Cdp,
    _chromium,
    _free_port,
    _wait_http,
    write_test_files,
)

REPO = Path(__file__).resolve().parent.parent
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
try:
    import websocket  # websocket-client
except ImportError:  # pragma: no cover
    websocket = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (COMFYUI_DIR and COMFYUI_PYTHON), reason="set COMFYUI_DIR and COMFYUI_PYTHON to run"),
    pytest.mark.skipif(_chromium() is None, reason="chromium is not installed"),
    pytest.mark.skipif(websocket is None, reason="websocket-client is not installed"),
]

PAGE_JS = """
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // the frontend's /scripts/*.js shims read window.comfyAPI, which exists once the app has started
  for (let i = 0; i < 600 && !(window.comfyAPI?.app?.app?.graph && window.comfyAPI?.api?.api && window.LiteGraph); i++) {
    await sleep(100);
  }
  await sleep(1000);
  const { app } = await import("/scripts/app.js");
  const { api } = await import("/scripts/api.js");
  window.__vist3aApp = app;
  const out = { extensions: app.extensions.map((e) => e.name) };
  // the template browser's list, through our filter (vist3a_templates.js)
  out.templates = await api.getWorkflowTemplates();
  out.hasSplatNodes = "SplatToFile3D" in LiteGraph.registered_node_types;
  app.graph.clear();
  const nodes = [["SaveSplatPLY", "vist3a_splats", "blobs.ply", [80, 60]],
                 ["SavePointCloudPLY", "vist3a_points", "points.ply", [480, 60]],
                 ["VIST3APreviewSplats", "vist3a_splats", "truncated.ply", [880, 60]]].map(([type, key, file, pos]) => {
    const node = LiteGraph.createNode(type);
    node.pos = pos;
    app.graph.add(node);
    api.dispatchEvent(new CustomEvent("executed", { detail: { node: String(node.id), display_node: String(node.id),
      output: { [key]: [{ filename: file, subfolder: "", type: "output" }] }, prompt_id: "vist3a-test" } }));
    return node;
  });
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  for (let i = 0; i < 1800; i++) {
    const states = nodes.map((n) => n.__vist3aPreview?.element.dataset.state);
    if (states[0] === "ready" && states[1] === "ready" && states[2] === "error") break;
    await sleep(100);
  }
  out.nodes = nodes.map((n) => {
    const p = n.__vist3aPreview;
    return { type: n.type, state: p?.element.dataset.state, info: p?.element.querySelector(".vist3a-info")?.textContent,
             message: p?.element.querySelector(".vist3a-message")?.textContent,
           };
  });
  return out;
})()
"""

STATE_JS = """(() => { const app = window.__vist3aApp; const n = app.graph._nodes.find((n) => n.type === "SaveSplatPLY");
  const v = n.__vist3aPreview.viewer;
  return { position: v.camera.position.toArray(), distance: v.camera.position.distanceTo(v.controls.target),
           offset: [...app.canvas.ds.offset], rect: n.__vist3aPreview.canvas.getBoundingClientRect().toJSON(),
           scale: app.canvas.ds.scale, pos: [...n.pos] }; })()"""


def test_previewer_in_real_comfyui(tmp_path):
    home = tmp_path / "home"
    (home / "custom_nodes").mkdir(parents=True)
    (home / "output").mkdir()
    (home / "custom_nodes" / "vist3a").symlink_to(REPO, target_is_directory=True)
    write_test_files(home / "output")
    port, cdp_port = _free_port(), _free_port()
    log = open(tmp_path / "comfyui.log", "wb")  # noqa: SIM115 (closed in the finally below, after the server)
    server = subprocess.Popen(
        [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(home), "--disable-auto-launch", *shlex.split(os.environ.get("COMFYUI_ARGS", ""))],
        cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT,
    )
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/object_info/SaveSplatPLY", 120)
        listed = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/extensions").read())
        assert "/extensions/vist3a/js/vist3a_preview.js" in listed
        assert "/extensions/vist3a/js/vist3a_templates.js" in listed
        assert not [e for e in listed if "/vendor/" in e], listed  # Spark / three load on first use, not at startup
        profile = tempfile.mkdtemp(dir=tmp_path)
        browser = subprocess.Popen(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,800",
             f"--remote-debugging-port={cdp_port}", "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_http(f"http://127.0.0.1:{cdp_port}/json/version", 30)
        tabs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json").read())
        cdp = Cdp(next(t for t in tabs if t["type"] == "page")["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        out = cdp.evaluate(PAGE_JS)
        assert "vist3a.SplatPreview" in out["extensions"] and "vist3a.Templates" in out["extensions"]
        ui_workflows = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        offered = sorted(out["templates"]["vist3a"])  # no API copies (they live in workflows/api/)
        if out["hasSplatNodes"]:
            assert offered == ui_workflows, offered
        else:  # ComfyUI before 0.23: the core-nodes workflow is not offered
            assert offered == [w for w in ui_workflows if w != "vist3a_text_to_splat_core_nodes"], offered
        splats, points, bad = out["nodes"]
        assert splats["state"] == "ready" and "300 splats" in splats["info"], splats
        assert points["state"] == "ready" and "20,000 points" in points["info"], points
        assert bad["state"] == "error" and "Truncated PLY" in bad["message"], bad
        # a fresh profile opens the template browser: close it (Escape), and drop any modal mask still over the graph
        for t in ("keyDown", "keyUp"):
            cdp.call("Input.dispatchKeyEvent", type=t, key="Escape", code="Escape", windowsVirtualKeyCode=27)
        time.sleep(1.0)
        cdp.evaluate("document.querySelectorAll('.p-dialog-mask').forEach((e) => e.remove()); true")
        time.sleep(0.5)
        before = cdp.evaluate(STATE_JS)
        r = before["rect"]  # where the frontend placed the DOM widget now
        x, y = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        cdp.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1, buttons=1)
        for k in range(1, 11):
            cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + 6 * k, y=y, button="left", buttons=1)
            time.sleep(0.05)
        cdp.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + 60, y=y, button="left", clickCount=1)
        cdp.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=-300)
        time.sleep(1.5)
        after = cdp.evaluate(STATE_JS)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shot = cdp.call("Page.captureScreenshot", format="png")
        (SCREENSHOT_DIR / "comfyui.png").write_bytes(base64.b64decode(shot["data"]))
        assert after["position"][0] < before["position"][0] - 0.05, (before, after)  # orbit: drag right swings left
        assert after["distance"] < before["distance"], (before, after)  # zoom
        # the graph itself did not pan, zoom or move the node
        assert after["offset"] == before["offset"] and after["scale"] == before["scale"] and after["pos"] == before["pos"]
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(10)
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
