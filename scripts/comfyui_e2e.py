#!/usr/bin/env python
"""End-to-end check of the VIST3A node pack inside a real ComfyUI server.

Usage (see README, section "Real-ComfyUI end-to-end run")::

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python python scripts/comfyui_e2e.py

What it does, in order:

1. links this repository into ``$COMFYUI_DIR/custom_nodes/`` (a symlink, removed afterwards);
2. starts ``main.py --cpu`` on 127.0.0.1 with a free port and temporary output / input / temp / user directories;
3. waits for the server, checks the pack imported and ``/object_info`` lists every node of the pack;
4. queues every shared workflow: each UI workflow ``workflows/*.json`` converted to a prompt exactly as the frontend
   converts it (``scripts/ui_workflow.py`` with this server's ``/object_info``: widget order, the inserted
   ``control_after_generate`` slots, links), then every API copy ``workflows/api/*_api.json``; a combo input with a
   ``tiny`` option (the pack's tiny models) is switched to ``tiny``; a workflow naming model files the server does
   not have, or node types it does not know (a workflow that needs newer core nodes), is skipped with the reason;
   waits on ``/history/<id>`` with a timeout; checks the run succeeded, wrote files, and every ``.ply`` / ``.splat``
   / ``.spz`` it wrote reads back with :mod:`vist3a.io`;
5. on a ComfyUI with the core splat type (``SPLAT``), checks DecodeToSplats outputs it and that core nodes and
   ours agree: core SplatToFile3D's PLY equals our SaveSplatPLY's, and a core TransformSplat result saved by our
   SaveSplatPLY moved by exactly the requested offset (skipped, with the reason, on older ComfyUI);
6. checks ``/interrupt`` stops a long run cleanly: a core-only chain of many slow image nodes, and (when a runnable
   workflow has a ``steps`` input) that workflow with many steps; history must show ``execution_interrupted``, the
   server must still answer and run a short prompt afterwards;
7. stops the server (by its process id) and removes the link and the temporary directories.

Only loopback addresses are used; every wait is bounded. Exit status 0 when every check passed. The harness needs
only the standard library plus this repository's ``vist3a`` (torch, numpy) to read the PLYs back; ComfyUI runs in
its own interpreter (``--python`` / ``$COMFYUI_PYTHON``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LINK_PREFIX = "vist3a_e2e_"  # custom_nodes/vist3a_e2e_<pid of the harness> -> this repository
# Node ids the pack documents; reported when missing (required only with --require-documented-nodes).
DOCUMENTED_NODES = (
    "LoadStitchedDecoder",
    "WanVIST3ASampler",
    "DecodeToSplats",
    "DecodeToPointmap",
    "SaveSplatPLY",
    "SavePointCloudPLY",
    "VIST3AImagesTo3D",
    "VIST3APreviewSplats",
)
OUTPUT_SUFFIXES = (".ply", ".splat", ".spz")


# --------------------------------------------------------------------------------------------------------------------
# report


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail", "skip"
    detail: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    server_log: str = ""

    def add(self, name: str, status: str, detail: str = "") -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        print(f"[{status.upper():4}] {name}" + (f": {detail}" if detail else ""), flush=True)
        return check

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    def summary(self) -> str:
        lines = [f"{c.status.upper():4} {c.name}" + (f": {c.detail}" if c.detail else "") for c in self.checks]
        counts = {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "skip")}
        lines.append(f"-- {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# HTTP on loopback


class Api:
    def __init__(self, port: int, timeout: float = 30.0):
        self.base = f"http://{HOST}:{port}"
        self.timeout = timeout

    def _request(self, method: str, path: str, body=None, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw.decode(errors="replace")
        return status, payload

    def get(self, path: str, timeout: float | None = None):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body, timeout: float | None = None):
        return self._request("POST", path, body, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------------
# server


class Server:
    """ComfyUI ``main.py`` in its own process group, logging to a file."""

    def __init__(self, comfy_dir: Path, python: str, work: Path, port: int, extra_args: list[str]):
        self.comfy_dir = comfy_dir
        self.port = port
        self.work = work
        self.output_dir = work / "output"
        self.temp_dir = work / "temp"
        self.input_dir = work / "input"
        self.user_dir = work / "user"
        for d in (self.output_dir, self.temp_dir, self.input_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log_path = work / "comfyui.log"
        self.cmd = [
            python,
            "main.py",
            "--cpu",
            "--listen",
            HOST,
            "--port",
            str(port),
            "--disable-auto-launch",
            "--output-directory",
            str(self.output_dir),
            "--temp-directory",
            str(self.temp_dir),
            "--input-directory",
            str(self.input_dir),
            "--user-directory",
            str(self.user_dir),
            "--database-url",
            "sqlite:///:memory:",
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
        print("starting:", " ".join(self.cmd), f"(cwd {self.comfy_dir})", flush=True)
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.comfy_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, api: Api, timeout: float) -> str | None:
        """None when the server answers, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return f"ComfyUI exited with status {self.proc.returncode} before answering"
            try:
                status, _ = api.get("/system_stats", timeout=5)
                if status == 200:
                    return None
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return f"ComfyUI did not answer on {api.base} within {timeout:.0f} s"

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pgid = self.proc.pid  # start_new_session: the group id is the child's pid
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=grace)
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------------------------------
# pack link


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def link_pack(comfy_dir: Path) -> Path:
    """Symlink this repository into ``custom_nodes/`` as ``vist3a_e2e_<pid>``; links left by dead runs are removed,
    a live run's link stops this one (both servers would load both links)."""
    custom = comfy_dir / "custom_nodes"
    custom.mkdir(exist_ok=True)
    for entry in custom.glob(LINK_PREFIX + "*"):
        pid = entry.name[len(LINK_PREFIX) :]
        if not (entry.is_symlink() and pid.isdigit()):
            continue
        if _pid_alive(int(pid)) and int(pid) != os.getpid():
            raise RuntimeError(f"another end-to-end run (pid {pid}) is using {custom}: {entry}; wait for it")
        entry.unlink()  # left behind by a run that was killed
    link = custom / f"{LINK_PREFIX}{os.getpid()}"
    if link.exists() or link.is_symlink():
        raise RuntimeError(f"{link} exists and is not a link of this harness; remove it")
    others = []
    for entry in custom.iterdir():
        if entry != link and entry.is_dir() and (entry / "vist3a").is_dir() and (entry / "nodes").is_dir():
            others.append(entry.name)
    if others:
        print(
            f"WARNING: custom_nodes already holds other copies of the pack ({', '.join(others)}); node ids may clash",
            flush=True,
        )
    os.symlink(REPO_ROOT, link, target_is_directory=True)
    return link


def unlink_pack(link: Path) -> None:
    if link.is_symlink():
        link.unlink()


def pack_node_ids() -> list[str] | None:
    """The pack's NODE_CLASS_MAPPINGS keys, imported here as a package (nodes import ComfyUI only lazily)."""
    import importlib.util

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    name = "_vist3a_pack_for_e2e"
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - reported, ComfyUI's own import is checked separately
        print(f"WARNING: importing the pack outside ComfyUI failed: {err!r}", flush=True)
        return None
    return sorted(module.NODE_CLASS_MAPPINGS)


# --------------------------------------------------------------------------------------------------------------------
# workflows


def ui_workflow_module():
    """scripts/ui_workflow.py (standard library only), imported from beside this file."""
    import importlib.util

    name = "_vist3a_ui_workflow"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "ui_workflow.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def shared_workflows() -> list[Path]:
    """The UI workflows (what the template browser lists), then the API copies."""
    ui = sorted(p for p in (REPO_ROOT / "workflows").glob("*.json"))
    api = sorted((REPO_ROOT / "workflows" / "api").glob("*_api.json"))
    return ui + api


def load_workflow(path: Path, object_info: dict) -> dict:
    """An API-format prompt from ``path``: API files as they are, UI files converted as the frontend converts them
    with this server's node definitions. Raises ValueError when that is impossible (unknown node types...)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return ui_workflow_module().ui_to_api(data, object_info)
    return load_api_workflow(path)


def _strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v.get("class_type"), "inputs": v.get("inputs")} for k, v in prompt.items()}


def load_api_workflow(path: Path) -> dict:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        raise ValueError(f"{path.name}: not an API-format workflow (node id -> {{class_type, inputs}})")
    return data


def _input_spec(info: dict, name: str):
    inputs = info.get("input", {})
    for group in ("required", "optional"):
        if name in inputs.get(group, {}):
            return inputs[group][name]
    return None


def _combo_options(spec) -> list | None:
    """The options of a combo input spec (old list form or the V3 "COMBO" form), else None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return list(options) if options is not None else None
    return None


def _int_max(spec) -> int | None:
    if isinstance(spec, (list, tuple)) and spec and spec[0] == "INT" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("max")
    return None


E2E_VIDEO = "vist3a_e2e_input.mp4"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
# INT inputs capped on nodes switched to (or fed by) tiny models: the sizes the tiny models are meant for.
TINY_CAPS = {"width": 64, "height": 64, "frames": 9, "steps": 2}
#: the same for the micro models (trained; 20 steps is their setting, so their scenes are recognisable)
MICRO_CAPS = {"width": 64, "height": 64, "frames": 9, "steps": 20}
BUILTIN_CAPS = {"tiny": TINY_CAPS, "micro": MICRO_CAPS}
_TINY_NOISE = {"tiny", "untrained", "tests", "only", "test", "micro", "trained", "on", "the", "world", "64x64", "x",
               "9", "frames"}


def _tokens(text: str) -> set[str]:
    return {t for t in "".join(c.lower() if c.isalnum() else " " for c in str(text)).split() if t}


def _tiny_option(options: list, value, builtin: str = "tiny") -> str | None:
    """The option of a built-in model (``builtin``: ``tiny`` test models or the shipped ``micro`` models, falling
    back to ``tiny`` where there is no micro option) that best matches ``value`` (shared words), or None."""
    tinies = [o for o in options if isinstance(o, str) and o.lower().startswith(builtin)]
    if not tinies and builtin != "tiny":
        tinies = [o for o in options if isinstance(o, str) and o.lower().startswith("tiny")]
    if not tinies:
        return None
    words = _tokens(value)
    return max(tinies, key=lambda o: len((_tokens(o) - _TINY_NOISE) & words))  # ties: the first


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def prepare_workflow(name: str, wf: dict, object_info: dict,
                     builtin: str = "tiny") -> tuple[dict | None, list[str], str]:
    """Make a shared workflow runnable here without real model files.

    * a combo input with a built-in model option (``builtin="tiny"``: ``preset: tiny``, ``tiny-anysplat ...``;
      ``builtin="micro"``: ``preset: micro``, ``micro-anysplat ...``, the shipped trained models, tiny where a combo
      has no micro option) is switched to it (the caps below are then the micro sizes, 20 steps);
    * a video file input the server does not have is switched to the harness's generated ``vist3a_e2e_input.mp4``;
    * on nodes switched to tiny models and the nodes they feed, ``width``/``height``/``frames``/``steps`` are capped to
      the tiny sizes (64x64, 9 frames, 2 steps);
    * a node still naming files the server does not have is dead, and so is every node that needs it through a
      required input (or an optional input, except on tiny nodes, where that optional input is dropped instead);
    * only the nodes the live output nodes need are kept.

    Returns (workflow, notes, "") or (None, notes, why it cannot run here).
    """
    wf = copy.deepcopy(wf)
    notes: list[str] = []
    unknown = sorted({n["class_type"] for n in wf.values() if n["class_type"] not in object_info})
    if unknown:
        return None, notes, f"node types unknown to this server: {', '.join(unknown)}"
    missing: dict[str, list[str]] = {}
    tiny: set[str] = set()
    for node_id, node in wf.items():
        info = object_info[node["class_type"]]
        inputs = node.setdefault("inputs", {})
        for key, value in list(inputs.items()):
            if _is_link(value):
                continue
            options = _combo_options(_input_spec(info, key))
            if options is None:
                continue
            tiny_choice = _tiny_option(options, value, builtin)
            if tiny_choice is not None and not str(value).lower().startswith(("tiny", builtin)):
                inputs[key] = tiny_choice
                tiny.add(node_id)
                notes.append(f"{node_id}:{node['class_type']}.{key} {value!r} -> {tiny_choice!r}")
            elif tiny_choice is not None:
                tiny.add(node_id)
            elif value not in options:
                if str(value).lower().endswith(VIDEO_SUFFIXES) and E2E_VIDEO in options:
                    inputs[key] = E2E_VIDEO
                    notes.append(f"{node_id}:{node['class_type']}.{key} {value!r} -> {E2E_VIDEO!r}")
                else:
                    missing.setdefault(node_id, []).append(f"{node['class_type']}.{key}={value!r}")
        if "filename_prefix" in inputs and isinstance(inputs["filename_prefix"], str):
            inputs["filename_prefix"] = f"e2e_{Path(name).stem}/{inputs['filename_prefix'].split('/')[-1]}"

    consumers: dict[str, set[str]] = {n: set() for n in wf}
    for node_id, node in wf.items():
        for value in node["inputs"].values():
            if _is_link(value) and value[0] in consumers:
                consumers[value[0]].add(node_id)
    affected, stack = set(tiny), list(tiny)
    while stack:
        for consumer in consumers[stack.pop()]:
            if consumer not in affected:
                affected.add(consumer)
                stack.append(consumer)
    for node_id in sorted(affected):
        node = wf[node_id]
        for key, cap in BUILTIN_CAPS.get(builtin, TINY_CAPS).items():
            value = node["inputs"].get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                spec = _input_spec(object_info[node["class_type"]], key)
                low = spec[1].get("min", cap) if isinstance(spec, (list, tuple)) and len(spec) > 1 else cap
                node["inputs"][key] = max(cap, low or cap)
                notes.append(f"{node_id}:{node['class_type']}.{key} {value} -> {node['inputs'][key]}")

    dead = set(missing)
    changed = True
    while changed:
        changed = False
        for node_id, node in wf.items():
            if node_id in dead:
                continue
            info = object_info[node["class_type"]]
            for key, value in list(node["inputs"].items()):
                if not (_is_link(value) and (value[0] in dead or value[0] not in wf)):
                    continue
                optional = key in info.get("input", {}).get("optional", {})
                if optional and node_id in affected:
                    del node["inputs"][key]
                    notes.append(f"{node_id}:{node['class_type']}.{key} unlinked (its source needs missing files)")
                else:
                    dead.add(node_id)
                    changed = True
                    break
    outputs = [n for n, node in wf.items() if object_info[node["class_type"]].get("output_node")]
    live_outputs = [n for n in outputs if n not in dead]
    why = "; ".join(f"{n}: {', '.join(v)}" for n, v in sorted(missing.items()))
    if not live_outputs:
        return None, notes, f"needs files this ComfyUI does not have (and no tiny option): {why or 'no output node'}"
    keep, stack = set(live_outputs), list(live_outputs)
    while stack:
        for value in wf[stack.pop()]["inputs"].values():
            if _is_link(value) and value[0] not in keep:
                keep.add(value[0])
                stack.append(value[0])
    dropped = sorted(set(wf) - keep, key=lambda n: (len(n), n))
    if dropped:
        notes.append(
            "dropped nodes not needed without the missing files: "
            + ", ".join(f"{n}:{wf[n]['class_type']}" for n in dropped)
            + (f" (missing: {why})" if why else "")
        )
    return {n: wf[n] for n in wf if n in keep}, notes, ""


_VIDEO_SCRIPT = """
import sys, av, numpy as np
out = av.open(sys.argv[1], mode="w")
stream = out.add_stream("mpeg4", rate=8)
stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
y, x = np.mgrid[0:96, 0:96]
for t in range(16):
    rgb = np.stack([(x * 2 + t * 8) % 256, (y * 2) % 256, np.full_like(x, 40 + t * 10)], -1).astype(np.uint8)
    for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        out.mux(packet)
for packet in stream.encode():
    out.mux(packet)
out.close()
"""


def make_input_video(python: str, input_dir: Path) -> str:
    """A 16-frame 96x96 test video in the server's input dir (made with ComfyUI's own PyAV); '' or why not."""
    target = input_dir / E2E_VIDEO
    try:
        proc = subprocess.run(
            [python, "-c", _VIDEO_SCRIPT, str(target)], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return repr(err)
    if proc.returncode != 0 or not target.is_file():
        return (proc.stderr or proc.stdout)[-1000:]
    return ""


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def validate_3d_file(path: Path) -> str:
    """A one-line description of a valid .ply/.splat; raises on an invalid one."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import torch

    from vist3a.io import load_gaussians, read_gaussians_ply, read_ply_header, read_point_cloud_ply

    if path.suffix.lower() in (".splat", ".spz"):
        g = load_gaussians(path)
        kind = path.suffix.lower()[1:]
    else:
        header = read_ply_header(path)
        vertex = header.element("vertex")
        names = set(vertex.names) if vertex is not None else set()
        if {"opacity", "scale_0", "rot_0", "f_dc_0"} <= names:
            g = read_gaussians_ply(path)
            kind = "3DGS PLY"
        else:
            pc = read_point_cloud_ply(path)
            n = pc.points.shape[0]
            if n == 0:
                raise ValueError(f"{path.name}: point cloud has no points")
            if not torch.isfinite(pc.points).all():
                raise ValueError(f"{path.name}: non-finite points")
            return f"point-cloud PLY, {n} points"
    means = g.means
    n = means.shape[0]
    if n == 0:
        raise ValueError(f"{path.name}: no Gaussians")
    if not torch.isfinite(means).all():
        raise ValueError(f"{path.name}: non-finite Gaussian means")
    return f"{kind}, {n} Gaussians"


def history_entry(api: Api, prompt_id: str) -> dict | None:
    status, payload = api.get(f"/history/{prompt_id}", timeout=10)
    if status == 200 and isinstance(payload, dict) and prompt_id in payload:
        return payload[prompt_id]
    return None


def wait_history(api: Api, server: Server, prompt_id: str, timeout: float) -> tuple[dict | None, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            return None, f"ComfyUI exited (status {server.proc.returncode}) while running the prompt"
        try:
            entry = history_entry(api, prompt_id)
        except (urllib.error.URLError, OSError) as err:
            entry = None
            last = repr(err)  # noqa: F841 - the server may be busy; keep polling until the deadline
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry, ""
        time.sleep(0.5)
    return None, f"no history for prompt {prompt_id} within {timeout:.0f} s"


def status_messages(entry: dict) -> dict[str, dict]:
    msgs = {}
    for item in entry.get("status", {}).get("messages", []) or []:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            msgs[item[0]] = item[1]
    return msgs


def submit(api: Api, wf: dict) -> tuple[str | None, str]:
    status, payload = api.post("/prompt", {"prompt": wf, "client_id": f"vist3a-e2e-{uuid.uuid4().hex[:8]}"})
    if status == 200 and isinstance(payload, dict) and payload.get("prompt_id"):
        return payload["prompt_id"], ""
    return None, f"/prompt answered {status}: {json.dumps(payload)[:2000]}"


def execute(api: Api, server: Server, wf: dict, timeout: float) -> tuple[dict | None, list[Path], float, str]:
    """POST ``wf`` and wait: (history entry or None, files it wrote, seconds, error text for a failed run)."""
    before = files_under(server.output_dir)
    t0 = time.monotonic()
    prompt_id, err = submit(api, wf)
    if prompt_id is None:
        return None, [], 0.0, err
    entry, err = wait_history(api, server, prompt_id, timeout)
    took = time.monotonic() - t0
    if entry is None:
        return None, [], took, err
    st = entry.get("status", {})
    if st.get("status_str") != "success":
        error = status_messages(entry).get("execution_error", {})
        detail = (
            f"status {st.get('status_str')!r}; node {error.get('node_id')} ({error.get('node_type')}): "
            f"{error.get('exception_type')}: {error.get('exception_message')}\n"
            + "".join(error.get("traceback", []) or [])[-3000:]
        )
        return None, [], took, detail
    return entry, sorted(files_under(server.output_dir) - before), took, ""


def run_workflow(api: Api, server: Server, report: Report, name: str, wf: dict, timeout: float) -> None:
    entry, new_files, took, err = execute(api, server, wf, timeout)
    if entry is None:
        report.add(f"workflow {name}", "fail", err)
        return
    three_d = [p for p in new_files if p.suffix.lower() in OUTPUT_SUFFIXES]
    if not new_files:
        report.add(f"workflow {name}", "fail", f"succeeded in {took:.1f} s but wrote no file under the output dir")
        return
    problems, described = [], []
    for p in three_d:
        try:
            described.append(f"{p.relative_to(server.output_dir)} ({validate_3d_file(p)})")
        except Exception as exc:  # noqa: BLE001 - any read failure is a failed check
            problems.append(f"{p.relative_to(server.output_dir)}: {exc}")
    if problems:
        report.add(f"workflow {name}", "fail", "invalid output: " + "; ".join(problems))
        return
    others = [str(p.relative_to(server.output_dir)) for p in new_files if p not in three_d]
    detail = f"{took:.1f} s; " + ("; ".join(described) if described else "no .ply/.splat written")
    if others:
        detail += f"; other files: {', '.join(others)}"
    report.add(f"workflow {name}", "pass", detail)


# --------------------------------------------------------------------------------------------------------------------
# core splat type (ComfyUI 0.2x): our SPLAT output into core nodes and back

CORE_SPLAT_NODES = ("SplatToFile3D", "TransformSplat", "SaveGLB")
TINY_DECODER = "tiny-anysplat (untrained, tests only)"


def core_splat_workflow(shift: float = 1.0) -> dict:
    """Tiny sampler -> tiny decoder -> DecodeToSplats; its SPLAT saved by our SaveSplatPLY (``ours``), by core
    SplatToFile3D + SaveGLB (``core``), and moved by core TransformSplat then saved by our SaveSplatPLY (``moved``)."""
    sampler = {"lora": "none (base Wan)", "lora_strength": 1.0, "seed": 3, "steps": 2, "cfg": 5.0, "frames": 9,
               "width": 64, "height": 64, "flow_shift": 5.0, "preset": "tiny", "tiny_prompt": "a red sports car"}
    move = {f"translate_{a}": (shift if a == "x" else 0.0) for a in "xyz"}
    move.update({f"rotate_{a}": 0.0 for a in "xyz"})
    move.update({f"scale_{a}": 1.0 for a in "xyz"})
    return {
        "1": {"class_type": "WanVIST3ASampler", "inputs": sampler},
        "2": {"class_type": "LoadStitchedDecoder",
              "inputs": {"decoder": TINY_DECODER, "dtype": "fp32", "device": "cpu"}},
        "3": {"class_type": "DecodeToSplats", "inputs": {"decoder": ["2", 0], "samples": ["1", 0]}},
        "4": {"class_type": "SaveSplatPLY",
              "inputs": {"splats": ["3", 0], "filename_prefix": "e2e_core_splat/ours", "also_splat": False}},
        "5": {"class_type": "SplatToFile3D", "inputs": {"splat": ["3", 0], "format": "ply"}},
        "6": {"class_type": "SaveGLB", "inputs": {"mesh": ["5", 0], "filename_prefix": "e2e_core_splat/core"}},
        "7": {"class_type": "TransformSplat", "inputs": {"splat": ["3", 0], **move}},
        "8": {"class_type": "SaveSplatPLY",
              "inputs": {"splats": ["7", 0], "filename_prefix": "e2e_core_splat/moved", "also_splat": False}},
        # .spz both ways: core's writer (SplatToFile3D spz -> SaveGLB keeps the file as is) and ours
        "9": {"class_type": "SplatToFile3D", "inputs": {"splat": ["3", 0], "format": "spz"}},
        "10": {"class_type": "SaveGLB", "inputs": {"mesh": ["9", 0], "filename_prefix": "e2e_core_splat/corespz"}},
        "11": {"class_type": "SaveSplatPLY", "inputs": {"splats": ["3", 0], "filename_prefix": "e2e_core_splat/ourspz",
                                                        "also_splat": False, "format": "spz"}},
    }


E2E_IMAGE = "vist3a_e2e_view.png"


def core_reads_spz_workflow(spz_name: str) -> dict:
    """Core Load3D (input/3d/<spz_name>) -> core File3DToSplat -> our SaveSplatPLY: core's .spz reader on our file.
    Load3D's viewport input, which the frontend fills, gets a tiny image from the input folder."""
    view = {"image": E2E_IMAGE, "mask": E2E_IMAGE, "normal": E2E_IMAGE, "recording": "", "camera_info": None}
    return {
        "1": {"class_type": "Load3D", "inputs": {"model_file": f"3d/{spz_name}", "image": view, "width": 64,
                                                 "height": 64}},
        "2": {"class_type": "File3DToSplat", "inputs": {"model_3d": ["1", 6]}},
        "3": {"class_type": "SaveSplatPLY", "inputs": {"splats": ["2", 0], "filename_prefix": "e2e_core_spz/back",
                                                       "also_splat": False}},
    }


def compare_spz_files(files: list[Path]) -> str:
    """Core SplatToFile3D's .spz read by our reader equals the same splats saved by our PLY writer (within the
    quantisation of core's version-2 writer; core keeps the DC colour only), and our .spz reads back the same way."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from vist3a.io import read_gaussians_ply, read_spz, read_spz_header

    def one(tag: str, suffix: str) -> Path:
        found = [p for p in files if p.suffix == suffix and p.name.startswith(tag)]
        assert len(found) == 1, f"expected one {tag}*{suffix}, got {[p.name for p in files]}"
        return found[0]

    ply = read_gaussians_ply(one("ours", ".ply"))
    out = []
    for tag in ("corespz", "ourspz"):
        path = one(tag, ".spz")
        header = read_spz_header(path)
        g = read_spz(path)
        assert len(g) == len(ply), (tag, len(g), len(ply))
        limits = {"means": 2.0 ** -(header.fractional_bits + 1) + 1e-6, "opacities": 1 / 510 + 1e-6,
                  "dc": 1 / (2 * 255 * 0.15) + 1e-4, "log_scales": 1 / 32 + 1e-4}
        got = {"means": (g.means - ply.means).abs().max(), "opacities": (g.opacities - ply.opacities).abs().max(),
               "dc": (g.sh[:, 0] - ply.sh[:, 0].clamp(-0.5 / 0.15, 0.5 / 0.15)).abs().max(),
               "log_scales": (g.scales.log() - ply.scales.log().clamp(-10, 5.9375)).abs().max()}
        for key, value in got.items():
            assert float(value) <= limits[key], f"{tag} .spz v{header.version} vs our PLY: {key} off by {value:.3g}"
        cos = (g.rotations * ply.rotations).sum(-1).abs().clamp(max=1)
        worst_deg = float(2 * cos.acos().max()) * 57.29578
        assert worst_deg < (20.0 if header.version < 3 else 0.5), f"{tag}: rotations off by {worst_deg:.2f} deg"
        out.append(f"{tag} (v{header.version}, SH degree {header.sh_degree}) vs our PLY within quantisation, "
                   f"rotations within {worst_deg:.2f} deg")
    return "; ".join(out)


def compare_core_splat_files(files: list[Path], shift: float) -> str:
    """The three PLYs of :func:`core_splat_workflow` describe the same Gaussians (core's PLY writer vs ours; core's
    TransformSplat moved x by ``shift``). Returns a summary; raises AssertionError with the worst difference."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from vist3a.io import read_gaussians_ply

    def one(tag: str):
        found = [p for p in files if p.suffix == ".ply" and p.name.startswith(tag)]
        assert len(found) == 1, f"expected one {tag}*.ply, got {[p.name for p in files]}"
        return read_gaussians_ply(found[0])

    ours, core, moved = one("ours"), one("core"), one("moved")
    assert len(ours) == len(core) == len(moved) > 0, (len(ours), len(core), len(moved))
    worst = {}
    for f in ("means", "scales", "rotations", "opacities", "sh"):
        a, b = getattr(ours, f), getattr(core, f)
        if f == "rotations":  # q and -q are the same rotation
            b = b * (a * b).sum(-1, keepdim=True).sign()
        worst[f] = float((a - b).abs().max())
        assert worst[f] <= 1e-4 * max(1.0, float(a.abs().max())), f"core PLY vs ours: {f} differs by {worst[f]:.3g}"
    want = ours.means.clone()
    want[:, 0] += shift
    d_move = float((moved.means - want).abs().max())
    assert d_move <= 1e-4 * max(1.0, float(want.abs().max())), f"TransformSplat translate_x: means off by {d_move:.3g}"
    return (f"{len(ours)} Gaussians; core SplatToFile3D PLY vs our PLY max |diff| "
            + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
            + f"; core TransformSplat -> our SaveSplatPLY: x moved by {shift}, max |diff| {d_move:.1e}")


def check_core_splat(api: Api, server: Server, report: Report, object_info: dict, timeout: float) -> None:
    name = "core SPLAT interop (DecodeToSplats -> core nodes -> our saver)"
    missing = [n for n in CORE_SPLAT_NODES if n not in object_info]
    out_type = (object_info.get("DecodeToSplats", {}).get("output") or [None])[0]
    if missing:
        if out_type != "VIST3A_SPLATS":
            report.add(name, "fail", f"no core splat nodes but DecodeToSplats outputs {out_type!r}")
        else:
            report.add(name, "skip", f"this ComfyUI has no core splat type ({', '.join(missing)} missing); "
                       "DecodeToSplats outputs VIST3A_SPLATS")
        return
    if out_type != "SPLAT":
        report.add(name, "fail", f"core splat nodes present but DecodeToSplats outputs {out_type!r}, not 'SPLAT'")
        return
    shift = 1.0
    entry, files, took, err = execute(api, server, core_splat_workflow(shift), timeout)
    if entry is None:
        report.add(name, "fail", err)
        return
    try:
        detail = compare_core_splat_files(files, shift)
    except AssertionError as exc:
        report.add(name, "fail", str(exc))
        return
    report.add(name, "pass", f"{took:.1f} s; {detail}")
    check_core_spz(api, server, report, object_info, timeout, files)


def check_core_spz(api: Api, server: Server, report: Report, object_info: dict, timeout: float,
                   files: list[Path]) -> None:
    """Our .spz reader on core SplatToFile3D's .spz, and core's File3DToSplat (through Load3D) on our .spz."""
    name = "core .spz interop (core SplatToFile3D .spz -> our reader; our .spz -> core File3DToSplat)"
    try:
        detail = compare_spz_files(files)
    except AssertionError as exc:
        report.add(name, "fail", str(exc))
        return
    missing = [n for n in ("Load3D", "File3DToSplat") if n not in object_info]
    if missing:
        report.add(name, "pass", f"{detail}; core reading ours skipped: no {', '.join(missing)}")
        return
    ours = [p for p in files if p.suffix == ".spz" and p.name.startswith("ourspz")][0]
    target = server.input_dir / "3d" / "vist3a_e2e.spz"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ours, target)
    from PIL import Image

    Image.new("RGB", (8, 8), (40, 40, 40)).save(server.input_dir / E2E_IMAGE)
    entry, back_files, took, err = execute(api, server, core_reads_spz_workflow(target.name), timeout)
    if entry is None:
        report.add(name, "fail", f"core reading our .spz: {err}")
        return
    from vist3a.io import read_gaussians_ply, read_spz

    plys = [p for p in back_files if p.suffix == ".ply"]
    if len(plys) != 1:
        report.add(name, "fail", f"core reading our .spz wrote {[p.name for p in back_files]}")
        return
    core_view, ours_view = read_gaussians_ply(plys[0]), read_spz(ours)
    worst = {
        "means": float((core_view.means - ours_view.means).abs().max()),
        "opacities": float((core_view.opacities - ours_view.opacities).abs().max()),
        "dc": float((core_view.sh[:, 0] - ours_view.sh[:, 0]).abs().max()),
        "scales": float((core_view.scales / ours_view.scales - 1).abs().max()),
        "rotations": float((1 - (core_view.rotations * ours_view.rotations).sum(-1).abs()).max()),
    }
    bad = {k: v for k, v in worst.items() if v > 1e-4}
    if len(core_view) != len(ours_view) or bad:
        report.add(name, "fail", f"core File3DToSplat and our reader disagree on our .spz: {bad} "
                   f"({len(core_view)} vs {len(ours_view)} splats)")
        return
    report.add(name, "pass", f"{detail}; core File3DToSplat reads our .spz (v3) as our reader does ("
               + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f"; {took:.1f} s)")


# --------------------------------------------------------------------------------------------------------------------
# interrupt


def core_long_workflow(chain: int = 60) -> dict:
    """Core nodes only, no models: a long chain of Gaussian blurs on a random-coloured image (uncached)."""
    wf = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 768, "height": 768, "batch_size": 2, "color": random.randrange(1, 0xFFFFFF)},
        },
    }
    prev = "1"
    for i in range(chain):
        nid = str(i + 2)
        wf[nid] = {"class_type": "ImageBlur", "inputs": {"image": [prev, 0], "blur_radius": 15, "sigma": 2.0}}
        prev = nid
    wf[str(chain + 2)] = {"class_type": "PreviewImage", "inputs": {"images": [prev, 0]}}
    return wf


def core_short_workflow() -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": random.randrange(1, 0xFFFFFF)},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


# Sizes set, with many steps, on the sampling node of the interrupt run so that each step takes a while.
LONG_RUN_SIZES = {"width": 256, "height": 256, "frames": 17}


def boost_steps(wf: dict, object_info: dict, steps: int) -> tuple[dict | None, list[str]]:
    """A long version of ``wf``: every literal ``steps`` input at ``steps`` (or its max), sizes raised to
    LONG_RUN_SIZES on those nodes, seeds re-drawn (ComfyUI would otherwise serve cached outputs)."""
    wf = copy.deepcopy(wf)
    changed = []
    for node_id, node in wf.items():
        inputs = node.get("inputs", {})
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            top = _int_max(_input_spec(object_info[node["class_type"]], "steps"))
            new = min(steps, top) if top else steps
            inputs["steps"] = new
            changed.append(f"{node_id}:{node['class_type']}.steps={new}")
            for key, size in LONG_RUN_SIZES.items():
                if isinstance(inputs.get(key), int) and inputs[key] < size:
                    inputs[key] = size
                    changed.append(f"{key}={size}")
        if "seed" in inputs and not isinstance(inputs["seed"], list):
            inputs["seed"] = random.randrange(1, 2**31)  # defeat ComfyUI's output cache
    return (wf if changed else None), changed


def wait_running(api: Api, prompt_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, payload = api.get("/queue", timeout=10)
        running = payload.get("queue_running", []) if status == 200 and isinstance(payload, dict) else []
        if any(len(item) > 1 and item[1] == prompt_id for item in running):
            return True
        if history_entry(api, prompt_id) is not None:
            return False  # already finished
        time.sleep(0.3)
    return False


def check_interrupt(
    api: Api, server: Server, report: Report, name: str, wf: dict, run_for: float, timeout: float, min_executed: int = 0
) -> None:
    """POST ``wf``, let it run ``run_for`` s, POST /interrupt; history must show it interrupted (after at least
    ``min_executed`` nodes ran, so the stop happened mid-run) and the server must still run a short prompt."""
    label = f"interrupt {name}"
    prompt_id, err = submit(api, wf)
    if prompt_id is None:
        report.add(label, "fail", err)
        return
    if not wait_running(api, prompt_id, timeout):
        report.add(label, "fail", f"prompt did not start running within {timeout:.0f} s (or finished first)")
        return
    time.sleep(run_for)  # let it get into the long part
    if history_entry(api, prompt_id) is not None:
        report.add(label, "fail", f"the run finished within {run_for:.0f} s; not long enough to interrupt")
        return
    t0 = time.monotonic()
    status, payload = api.post("/interrupt", {"prompt_id": prompt_id})
    if status != 200:
        report.add(label, "fail", f"/interrupt answered {status}: {payload}")
        return
    entry, err = wait_history(api, server, prompt_id, timeout)
    stopped_in = time.monotonic() - t0
    if entry is None:
        report.add(label, "fail", f"after /interrupt: {err}")
        return
    msgs = status_messages(entry)
    if "execution_interrupted" not in msgs:
        report.add(label, "fail", f"history shows no execution_interrupted: status {entry.get('status')}")
        return
    where = msgs["execution_interrupted"]
    executed = len(where.get("executed", []) or [])
    if executed < min_executed:
        report.add(label, "fail", f"interrupted before {min_executed} node(s) had run; the run never got going")
        return
    status, _ = api.get("/system_stats", timeout=10)
    short_id, err = submit(api, core_short_workflow())
    after = None
    if short_id is not None:
        after, err = wait_history(api, server, short_id, 60)
    if status != 200 or after is None or after.get("status", {}).get("status_str") != "success":
        report.add(label, "fail", f"server not healthy after the interrupt: /system_stats {status}, {err}")
        return
    report.add(
        label,
        "pass",
        f"stopped {stopped_in:.1f} s after /interrupt at node {where.get('node_id')} "
        f"({where.get('node_type')}) after {executed} node(s) ran; server answers and ran a short prompt afterwards",
    )


# --------------------------------------------------------------------------------------------------------------------
# main


def default_python(comfy_dir: Path) -> str:
    env = os.environ.get("COMFYUI_PYTHON")
    if env:
        return env
    for cand in (comfy_dir / "venv" / "bin" / "python", comfy_dir / ".venv" / "bin" / "python"):
        if cand.exists():
            return str(cand)
    return sys.executable


def run(
    comfy_dir: str | os.PathLike,
    python: str | None = None,
    *,
    workflows: list[str] | None = None,
    startup_timeout: float = 300.0,
    workflow_timeout: float = 600.0,
    interrupt: bool = True,
    interrupt_steps: int = 10000,
    require_documented: bool = False,
    keep: bool = False,
    extra_args: list[str] | None = None,
    builtin: str = "micro",
) -> Report:
    report = Report()
    comfy_dir = Path(comfy_dir).resolve()
    if not (comfy_dir / "main.py").is_file():
        report.add("ComfyUI checkout", "fail", f"{comfy_dir} has no main.py")
        return report
    python = python or default_python(comfy_dir)
    work = Path(tempfile.mkdtemp(prefix="vist3a_comfyui_e2e_"))
    link = None
    server = None
    try:
        link = link_pack(comfy_dir)
        report.add("link pack", "pass", f"{link} -> {REPO_ROOT}")
        port = free_port()
        server = Server(comfy_dir, python, work, port, extra_args or [])
        api = Api(port)
        err = make_input_video(python, server.input_dir)
        if err:
            report.add("test input video", "skip", f"could not write {E2E_VIDEO}: {err}")
        server.start()
        t0 = time.monotonic()
        err = server.wait_ready(api, startup_timeout)
        if err:
            report.add("server start", "fail", err + "\n" + server.log_text()[-4000:])
            return report
        report.add("server start", "pass", f"answered on {api.base} after {time.monotonic() - t0:.1f} s")

        log = server.log_text()
        failed_import = [
            line
            for line in log.splitlines()
            if link.name in line and ("IMPORT FAILED" in line or "Cannot import" in line)
        ]
        if failed_import:
            report.add("pack import", "fail", "ComfyUI failed to import the pack:\n" + log[-4000:])
            return report
        report.add("pack import", "pass")

        status, object_info = api.get("/object_info", timeout=120)
        if status != 200 or not isinstance(object_info, dict):
            report.add("/object_info", "fail", f"answered {status}")
            return report
        ours = pack_node_ids()
        missing = [n for n in ours or [] if n not in object_info]
        undocumented = [n for n in DOCUMENTED_NODES if n not in object_info]
        if missing:
            report.add("/object_info lists the pack's nodes", "fail", f"missing: {', '.join(missing)}")
        elif ours is None:
            report.add(
                "/object_info lists the pack's nodes",
                "skip",
                "could not import the pack in the harness's interpreter to list its nodes (see the warning above)",
            )
        elif not ours:
            report.add(
                "/object_info lists the pack's nodes",
                "fail" if require_documented else "skip",
                "the pack defines no nodes yet (NODE_CLASS_MAPPINGS is empty)",
            )
        else:
            report.add("/object_info lists the pack's nodes", "pass", ", ".join(ours))
        if undocumented:
            report.add(
                "documented node ids",
                "fail" if require_documented else "skip",
                f"not registered: {', '.join(undocumented)}",
            )
        else:
            report.add("documented node ids", "pass")

        paths = [Path(p) for p in workflows] if workflows else shared_workflows()
        if not paths:
            report.add("workflows", "skip", "no shared workflows in the repository yet")
        steps_candidate = None
        converted: dict[str, dict] = {}
        for path in paths:
            name = path.name
            try:
                wf = load_workflow(path, object_info)
            except ui_workflow_module().WorkflowError as exc:
                report.add(f"workflow {name}", "skip", f"not offered on this ComfyUI: {exc}")
                continue
            except (ValueError, json.JSONDecodeError) as exc:
                report.add(f"workflow {name}", "fail", str(exc))
                continue
            if not path.name.endswith("_api.json"):
                problems = ui_workflow_module().validate_prompt(
                    wf, object_info, dynamic_combos=("unet_name", "clip_name", "vae_name", "file")
                )
                if problems:
                    report.add(f"workflow {name}", "fail", "as loaded in the frontend: " + "; ".join(problems))
                    continue
                converted[path.stem] = wf
            elif _strip_meta(wf) == _strip_meta(converted.get(path.stem[: -len("_api")], {})):
                # ComfyUI would answer the same prompt from its cache without running (or writing) anything
                report.add(f"workflow {name}", "pass", f"the same prompt the frontend queues for "
                           f"{path.stem[: -len('_api')]}.json, which ran above")
                continue
            prepared, notes, reason = prepare_workflow(name, wf, object_info, builtin)
            if prepared is None:
                report.add(f"workflow {name}", "skip", reason)
                continue
            if notes:
                print(f"  {name}: tiny substitution: {'; '.join(notes)}", flush=True)
            run_workflow(api, server, report, name, prepared, workflow_timeout)
            if steps_candidate is None and report.checks[-1].status == "pass":
                boosted, changed = boost_steps(prepared, object_info, interrupt_steps)
                if boosted is not None:
                    steps_candidate = (name, boosted, changed)

        check_core_splat(api, server, report, object_info, workflow_timeout)

        if interrupt:
            check_interrupt(
                api,
                server,
                report,
                "core-only (EmptyImage -> 60 x ImageBlur)",
                core_long_workflow(),
                run_for=4.0,
                timeout=120.0,
                min_executed=1,
            )
            if steps_candidate is not None:
                name, boosted, changed = steps_candidate
                print(f"  interrupt run of {name} with {'; '.join(changed)}", flush=True)
                check_interrupt(
                    api, server, report, f"{name} ({', '.join(changed)})", boosted, run_for=2.0, timeout=180.0
                )
            else:
                report.add("interrupt pack workflow", "skip", "no runnable workflow with a 'steps' input")
        if not server.alive():
            report.add("server alive at the end", "fail", f"exited with {server.proc.returncode}")
    except Exception as exc:  # noqa: BLE001 - the harness reports, then cleans up
        report.add("harness", "fail", repr(exc))
    finally:
        if server is not None:
            server.stop()
            report.server_log = server.log_text()
        if link is not None:
            unlink_pack(link)
        if keep:
            print(f"kept {work} (server log: {work / 'comfyui.log'})", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--comfyui-dir", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (default $COMFYUI_DIR)"
    )
    parser.add_argument(
        "--python",
        default=None,
        help="interpreter that runs ComfyUI (default $COMFYUI_PYTHON, else $COMFYUI_DIR/venv or .venv, else this one)",
    )
    parser.add_argument(
        "--workflow",
        action="append",
        default=None,
        help="workflow to run, UI or API format (repeatable; default workflows/*.json and workflows/api/*_api.json)",
    )
    parser.add_argument("--builtin", choices=["micro", "tiny"], default="micro",
                        help="the pack's built-in models the shared workflows are switched to: micro (the shipped "
                             "trained micro-world models, default) or tiny (untrained, seconds)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--workflow-timeout", type=float, default=600.0)
    parser.add_argument("--no-interrupt", action="store_true", help="skip the /interrupt checks")
    parser.add_argument("--interrupt-steps", type=int, default=10000)
    parser.add_argument(
        "--require-documented-nodes",
        action="store_true",
        help="fail (not skip) when the documented node ids are not registered",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary output dir and server log")
    parser.add_argument("--show-log", action="store_true", help="print the server log at the end")
    args = parser.parse_args(argv)
    if not args.comfyui_dir:
        parser.error("set COMFYUI_DIR or pass --comfyui-dir")
    report = run(
        args.comfyui_dir,
        args.python,
        workflows=args.workflow,
        startup_timeout=args.startup_timeout,
        workflow_timeout=args.workflow_timeout,
        interrupt=not args.no_interrupt,
        interrupt_steps=args.interrupt_steps,
        require_documented=args.require_documented_nodes,
        keep=args.keep,
        builtin=args.builtin,
    )
    if args.show_log or not report.ok:
        print("---- ComfyUI log (tail) ----")
        print(report.server_log[-8000:])
    print("---- summary ----")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
