"""Browser test of the in-graph splat previewer (web/): headless Chromium, software WebGL2.

A local http server on 127.0.0.1 serves web/ at /extensions/vist3a/ (where ComfyUI serves it), stand-ins for
ComfyUI's /scripts/app.js and /scripts/api.js (the two frontend modules the extension imports) and the test's PLY files
at /api/view (ComfyUI's file endpoint). web/test/preview_test.html loads the real extension, feeds fake nodes the
`vist3a_splats` payload and POSTs what it rendered to /report; Chromium also writes a screenshot.

Skipped when no Chromium is installed (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

from vist3a.gaussians import Gaussians
from vist3a.io.ply import write_gaussians_ply, write_point_cloud_ply
from vist3a.pointcloud import PointCloud

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SCREENSHOT_DIR = Path(os.environ.get("VIST3A_WEB_SCREENSHOTS", tempfile.gettempdir())) / "vist3a_web_test"

APP_STUB = """// stand-in for ComfyUI's scripts/app.js (only what the extension uses)
export const app = {
  extensions: [],
  registerExtension(ext) { this.extensions.push(ext); },
  graph: { nodesById: {}, setDirtyCanvas() {}, getNodeById(id) { return this.nodesById[id] ?? null; } },
  nodeOutputs: {},
};
"""
# Same URL scheme as the frontend's ComfyApi: apiURL(route) = api_base + '/api' + route; fetchApi fetches apiURL.
API_STUB = """// stand-in for ComfyUI's scripts/api.js
export const api = {
  api_base: "",
  apiURL(route) { return this.api_base + "/api" + route; },
  fetchApi(route, options) { return fetch(this.apiURL(route), options); },
};
"""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Software WebGL2 without a GPU (SwiftShader through ANGLE); verified with Debian's chromium 14x.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
]


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


pytestmark = pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")


# ---------------------------------------------------------------------------------------------------- test data
def _blob(n: int, center, color, generator) -> Gaussians:
    means = torch.tensor(center, dtype=torch.float32) + 0.12 * torch.randn(n, 3, generator=generator)
    scales = torch.full((n, 3), 0.06)
    rotations = torch.nn.functional.normalize(torch.randn(n, 4, generator=generator), dim=1)
    opacities = torch.full((n,), 0.9)
    rgb = torch.tensor(color, dtype=torch.float32)
    sh = ((rgb - 0.5) / 0.28209479177387814).expand(n, 3).reshape(n, 1, 3).clone()
    return Gaussians(means, scales, rotations, opacities, sh)


def _cat(a: Gaussians, b: Gaussians) -> Gaussians:
    return Gaussians(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("means", "scales", "rotations", "opacities", "sh")))


def write_test_files(folder: Path) -> None:
    g = torch.Generator().manual_seed(0)
    # red blob on the left (x = -1), blue blob on the right (x = +1); camera looks along +z, y down (OpenCV)
    blobs = _cat(_blob(1500, [-1.0, 0.0, 0.0], [0.95, 0.05, 0.05], g), _blob(1500, [1.0, 0.0, 0.0], [0.05, 0.05, 0.95], g))
    write_gaussians_ply(folder / "blobs.ply", blobs)
    # point cloud: green points on a plane
    n = 20000
    pts = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 0.01]) - torch.tensor([1.0, 1.0, 0.0])
    colors = torch.tensor([0.1, 0.8, 0.1]).expand(n, 3).clone()
    write_point_cloud_ply(folder / "points.ply", PointCloud(pts, colors, torch.ones(n)))
    # unreadable files
    (folder / "not_a_ply.ply").write_bytes(b"<html><body>404 not found</body></html>")
    data = (folder / "blobs.ply").read_bytes()
    (folder / "truncated.ply").write_bytes(data[: len(data) // 2])
    header = (
        "ply\nformat binary_little_endian 1.0\nelement chunk 1\nproperty float min_x\n"
        "element vertex 1\nproperty uint packed_position\nproperty uint packed_rotation\n"
        "property uint packed_scale\nproperty uint packed_color\nend_header\n"
    )
    (folder / "compressed.ply").write_bytes(header.encode() + bytes(4 + 16))


# ---------------------------------------------------------------------------------------------------- server
class _Handler(http.server.BaseHTTPRequestHandler):
    files_dir: Path
    reports: list

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        if path == "/scripts/app.js":
            return self._send(APP_STUB.encode(), "text/javascript")
        if path == "/scripts/api.js":
            return self._send(API_STUB.encode(), "text/javascript")
        if path == "/api/view":
            q = urllib.parse.parse_qs(url.query)
            name = os.path.basename(q.get("filename", [""])[0])
            f = self.files_dir / name
            if q.get("type", [""])[0] not in ("output", "temp", "input") or not f.is_file():
                return self._send(b"not found", "text/plain", 404)
            return self._send(f.read_bytes(), "application/octet-stream")
        prefix = "/extensions/vist3a/"
        if path.startswith(prefix):
            rel = urllib.parse.unquote(path[len(prefix):])
            f = (WEB_DIR / rel).resolve()
            if WEB_DIR.resolve() in f.parents and f.is_file():
                ctype = {".js": "text/javascript", ".html": "text/html", ".md": "text/plain"}.get(f.suffix, "application/octet-stream")
                return self._send(f.read_bytes(), ctype)
        return self._send(b"not found", "text/plain", 404)

    def do_POST(self):
        if self.path == "/report":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reports.append(json.loads(body))
            return self._send(b"ok", "text/plain")
        return self._send(b"not found", "text/plain", 404)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    files = tmp_path_factory.mktemp("ply")
    write_test_files(files)
    handler = type("Handler", (_Handler,), {"files_dir": files, "reports": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler, files
    httpd.shutdown()
    httpd.server_close()


def _run_page(server, files: list[str], timeout: float = 120.0, screenshot: Path | None = None, query: str = "") -> dict:
    httpd, handler, _ = server
    handler.reports.clear()
    port = httpd.server_address[1]
    url = f"http://127.0.0.1:{port}/extensions/vist3a/test/preview_test.html?files={','.join(files)}{query}"
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=840,700", url]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            import time

            t0 = time.monotonic()
            while not handler.reports and time.monotonic() - t0 < timeout and proc.poll() is None:
                time.sleep(0.1)
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        if not handler.reports:
            pytest.fail(f"the test page sent no report within {timeout} s; chromium stderr:\n{err.decode(errors='replace')[-3000:]}")
        if screenshot is not None:
            # a real browser screenshot of the whole page (the page renders again from scratch)
            subprocess.run(
                [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=840,700",
                 "--virtual-time-budget=30000", f"--screenshot={screenshot}", url + "&still=1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False,
            )
    return handler.reports[0]


def _mean(grid, cols, rows):
    px = [grid[r][c] for r in rows for c in cols]
    return [sum(p[k] for p in px) / len(px) for k in range(3)]


def test_preview_renders_splats_and_points(server):
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "page_screenshot.png"
    report = _run_page(server, ["blobs.ply", "points.ply"], screenshot=shot)
    assert report["ok"], report["log"]
    if not report["webgl2"]:
        pytest.skip("this chromium has no WebGL2 (no software GL / SwiftShader): the renderer cannot be checked")
    blobs, points = report["nodes"]
    assert blobs["state"] == "ready", blobs
    assert blobs["count"] == 3000 and "3,000 splats" in blobs["info"]
    png = base64.b64decode(blobs["png"].split(",", 1)[1])
    (SCREENSHOT_DIR / "blobs_canvas.png").write_bytes(png)

    grid = blobs["grid"]  # 40 x 30 samples, rows top to bottom
    flat = [p for row in grid for p in row]
    assert len({tuple(p) for p in flat}) > 20, "the canvas is blank"
    background = _mean(grid, range(3), range(3))
    assert max(background) < 60, background
    # red blob at x = -1 lands left of centre, blue at x = +1 right of centre (about 92 px of 400 from the centre)
    left = _mean(grid, range(9, 13), range(13, 17))
    right = _mean(grid, range(27, 31), range(13, 17))
    assert left[0] > 150 and left[0] > 3 * left[2] and left[0] > 3 * left[1], left
    assert right[2] > 150 and right[2] > 3 * right[0] and right[2] > 3 * right[1], right
    centre = _mean(grid, range(19, 21), range(13, 17))
    assert max(centre) < 80, centre  # the gap between the blobs stays dark
    # re-sort only when the view direction changes
    assert blobs["resorted"] and blobs["sortsAfterZoom"] == 0, blobs
    assert blobs["worker"], "the depth sort did not run in a worker"

    assert points["state"] == "ready", points
    assert "20,000 points" in points["info"]
    mid = _mean(points["grid"], range(16, 24), range(11, 19))
    assert mid[1] > 120 and mid[1] > 2 * mid[0] and mid[1] > 2 * mid[2], mid
    if shot.exists():
        assert shot.stat().st_size > 1000


def test_preview_shows_errors(server):
    # through the newer frontend hook (onNodeOutputsUpdated) and on the preview node
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    report = _run_page(
        server,
        ["not_a_ply.ply", "truncated.ply", "compressed.ply", "missing.ply"],
        query="&hook=outputs&node=PreviewSplat",
        screenshot=SCREENSHOT_DIR / "errors_screenshot.png",
    )
    assert report["ok"], report["log"]
    by_file = {n["file"]: n for n in report["nodes"]}
    for info in by_file.values():
        assert info["state"] == "error", info
    assert "Not a PLY file" in by_file["not_a_ply.ply"]["message"]
    assert "Truncated PLY" in by_file["truncated.ply"]["message"]
    assert "Compressed splat PLY" in by_file["compressed.ply"]["message"]
    assert "404" in by_file["missing.ply"]["message"]
    for name, info in by_file.items():
        assert f"Cannot preview {name}" in info["message"]


@pytest.mark.slow
def test_preview_500k_splats(server):
    """500k splats: parse + upload + sort + one frame with software WebGL (SwiftShader, CPU), timings reported."""
    _, _, files = server
    g = torch.Generator().manual_seed(1)
    n = 500_000
    means = torch.randn(n, 3, generator=g)
    scene = Gaussians(
        means,
        torch.full((n, 3), 0.01),
        torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        torch.full((n,), 0.5),
        torch.randn(n, 1, 3, generator=g) * 0.5,
    )
    write_gaussians_ply(files / "big.ply", scene)
    report = _run_page(server, ["big.ply"], timeout=240)
    assert report["ok"], report["log"]
    (info,) = report["nodes"]
    assert info["state"] == "ready" and info["count"] == n, info
    print(
        "500k splats:", json.dumps({k: info.get(k) for k in ("timings", "sortMs", "sortMs2", "renderMs", "waitMs")})
    )
    # the counting sort runs in the worker and stays well under a second even here
    assert info["sortMs2"] < 1000, info
    assert info["resorted"] and info["sortsAfterZoom"] == 0
