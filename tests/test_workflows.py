"""Shared workflows (workflows/*.json UI format, *_api.json API format): only known node ids, links whose types
match, widget values that fit the node's inputs, loader nodes with downloadable model entries."""

import json
import sys

import _fake_comfy
import pytest
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WORKFLOWS = REPO_ROOT / "workflows"

# Core ComfyUI nodes the workflows use, written down from ComfyUI (v0.8.0: nodes.py, comfy_extras/nodes_hunyuan.py,
# nodes_model_advanced.py, nodes_video.py): ordered inputs (name -> type; upper-case types are sockets, the rest
# widgets) and output types. KSampler's UI has the extra control_after_generate widget after seed.
CORE_NODES = {
    "UNETLoader": ({"unet_name": "COMBO", "weight_dtype": "COMBO"}, ["MODEL"]),
    "CLIPLoader": ({"clip_name": "COMBO", "type": "COMBO", "device": "COMBO"}, ["CLIP"]),
    "VAELoader": ({"vae_name": "COMBO"}, ["VAE"]),
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, ["CONDITIONING"]),
    "ModelSamplingSD3": ({"model": "MODEL", "shift": "FLOAT"}, ["MODEL"]),
    "EmptyHunyuanLatentVideo": ({"width": "INT", "height": "INT", "length": "INT", "batch_size": "INT"}, ["LATENT"]),
    "KSampler": ({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT", "sampler_name": "COMBO",
                  "scheduler": "COMBO", "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT", "denoise": "FLOAT"}, ["LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ["IMAGE"]),
    "PreviewImage": ({"images": "IMAGE"}, []),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
    "LoadVideo": ({"file": "COMBO"}, ["VIDEO"]),
    "GetVideoComponents": ({"video": "VIDEO"}, ["IMAGE", "AUDIO", "FLOAT"]),
}
# Core splat nodes (ComfyUI 0.2x, comfy_extras/nodes_gaussian_splat.py, nodes_video.py, nodes_save_3d.py, read from
# /object_info of a running ComfyUI 0.28): used by the workflows that need the core SPLAT type.
_FILE_3D_ANY = ("MESH,FILE_3D_GLB,FILE_3D_GLTF,FILE_3D_OBJ,FILE_3D_FBX,FILE_3D_STL,FILE_3D_USDZ,FILE_3D_PLY,"
                "FILE_3D_SPLAT,FILE_3D_SPZ,FILE_3D_KSPLAT,FILE_3D_SPLAT_ANY,FILE_3D_POINT_CLOUD_ANY,FILE_3D")
CORE_SPLAT_NODES = {
    "RenderSplat": ({"splat": "SPLAT", "width": "INT", "height": "INT", "frames": "INT", "splat_scale": "FLOAT",
                     "sharpen": "FLOAT", "headlight_shading": "FLOAT", "opacity_threshold": "FLOAT",
                     "render_style": "COMBO", "background": "COLOR", "bg_image": "IMAGE",
                     "camera_info": "LOAD3D_CAMERA"}, ["IMAGE", "MASK"]),
    "CreateVideo": ({"images": "IMAGE", "fps": "FLOAT", "audio": "AUDIO", "bit_depth": "INT"}, ["VIDEO"]),
    "SaveVideo": ({"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO", "codec": "COMBO"}, []),
    "SplatToFile3D": ({"splat": "SPLAT", "format": "COMBO"}, ["FILE_3D_SPLAT_ANY"]),
    "SaveGLB": ({"mesh": _FILE_3D_ANY, "filename_prefix": "STRING"}, []),
}
SOCKETS = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "VIDEO", "AUDIO", "SPLAT"}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COLOR"}
LOADERS = {"UNETLoader", "CLIPLoader", "VAELoader", "LoadStitchedDecoder"}


def _catalogue(core_splat: bool) -> dict:
    """node id -> (ordered inputs name -> type, output types), ours read from the node classes as imported by a
    ComfyUI with (``core_splat``) or without the core SPLAT type."""
    import nodes

    if core_splat:
        _fake_comfy.install_core_splat(type("SPLAT", (), {}))
    else:
        _fake_comfy.reload_nodes()
    try:
        cat = dict(CORE_NODES, **(CORE_SPLAT_NODES if core_splat else {}))
        for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
            spec = cls.INPUT_TYPES()
            inputs = {}
            for group in ("required", "optional"):
                for name, (kind, _opts) in spec.get(group, {}).items():
                    inputs[name] = "COMBO" if isinstance(kind, list) else kind
            cat[node_id] = (inputs, list(cls.RETURN_TYPES))
        return cat
    finally:
        if core_splat:
            _fake_comfy.uninstall_core_splat()


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory):
    _fake_comfy.install(tmp_path_factory.mktemp("comfy"))
    try:
        yield {False: _catalogue(False), True: _catalogue(True)}
    finally:
        _fake_comfy.uninstall()


def _needs_core_splat(path) -> bool:
    """Workflows using core splat nodes run only on a ComfyUI with the core SPLAT type."""
    text = path.read_text()
    return any(f'"{n}"' in text for n in CORE_SPLAT_NODES)


def _overlap(produced: str, wanted: str) -> bool:
    """ComfyUI's link rule: the comma-separated type sets of the output and the input overlap."""
    return bool(set(produced.split(",")) & set(wanted.split(",")))


def _files(suffix):
    return sorted(p for p in WORKFLOWS.glob("*.json") if p.name.endswith("_api.json") == (suffix == "api"))


def test_every_workflow_has_both_formats():
    ui, api = _files("ui"), _files("api")
    assert len(ui) >= 5 and {p.stem for p in ui} == {p.stem[:-4] for p in api}
    readme = (WORKFLOWS / "README.md").read_text()
    assert all(p.name in readme for p in ui + api)


def _widget_ok(kind, value):
    if kind == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    return isinstance(value, str)


@pytest.mark.parametrize("path", _files("api"), ids=lambda p: p.name)
def test_api_workflow_valid(path, catalogues):
    catalogue = catalogues[_needs_core_splat(path)]
    graph = json.loads(path.read_text())
    assert graph and all(isinstance(k, str) for k in graph)
    outputs = 0
    for node_id, node in graph.items():
        kind = node["class_type"]
        assert kind in catalogue, (path.name, kind)
        inputs, _ = catalogue[kind]
        outputs += kind in ("SaveSplatPLY", "SavePointCloudPLY", "VIST3APreviewSplats", "SaveGLB", "SaveVideo")
        for name, value in node["inputs"].items():
            assert name in inputs, (path.name, kind, name)
            want = inputs[name]
            if isinstance(value, list):
                src, slot = value
                assert src in graph, (path.name, node_id, name)
                produced = catalogue[graph[src]["class_type"]][1][slot]
                assert _overlap(produced, want), (path.name, kind, name, produced, want)
            else:
                assert want in WIDGET_KINDS and _widget_ok(want, value), (path.name, kind, name, value)
        sockets = {n for n, t in inputs.items() if t in SOCKETS or t.startswith(("VIST3A_", "SPLAT"))}
        required_sockets = sockets - {"vae", "model", "positive", "negative", "bg_image", "audio"}
        assert required_sockets <= set(node["inputs"]), (path.name, kind, required_sockets - set(node["inputs"]))
    assert outputs, path.name


@pytest.mark.parametrize("path", _files("ui"), ids=lambda p: p.name)
def test_ui_workflow_valid(path, catalogues):
    catalogue = catalogues[_needs_core_splat(path)]
    wf = json.loads(path.read_text())
    nodes_by_id = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes_by_id) == len(wf["nodes"])
    links = {link[0]: link for link in wf["links"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        s, d = nodes_by_id[src], nodes_by_id[dst]
        assert catalogue[s["type"]][1][src_slot] == kind, (path.name, link_id)
        assert s["outputs"][src_slot]["type"] == kind and link_id in s["outputs"][src_slot]["links"]
        inp = d["inputs"][dst_slot]
        assert inp["link"] == link_id and inp["type"] == catalogue[d["type"]][0][inp["name"]], (path.name, link_id)
        assert _overlap(kind, inp["type"]), (path.name, link_id, kind, inp["type"])
    for node in wf["nodes"]:
        kind = node["type"]
        assert kind in catalogue, (path.name, kind)
        inputs, outs = catalogue[kind]
        assert [o["type"] for o in node["outputs"]] == outs, (path.name, kind)
        for inp in node["inputs"]:
            assert inp["name"] in inputs and (inp["link"] is None or inp["link"] in links)
        widgets = [n for n, t in inputs.items() if t in WIDGET_KINDS]
        if kind == "KSampler":
            widgets.insert(widgets.index("seed") + 1, "control_after_generate")
        values = node.get("widgets_values", [])
        assert len(values) == len(widgets), (path.name, kind, widgets, values)
        for name, value in zip(widgets, values):
            want = "COMBO" if name == "control_after_generate" else inputs[name]
            assert _widget_ok(want, value), (path.name, kind, name, value)
        if kind in LOADERS and not str(values[0]).startswith("tiny"):
            models = node["properties"]["models"]
            assert models and all(set(m) == {"name", "url", "directory"} and m["url"].startswith("https://")
                                  for m in models), (path.name, kind)


def test_api_workflows_match_ui_workflows():
    for ui_path in _files("ui"):
        ui = json.loads(ui_path.read_text())
        api = json.loads((WORKFLOWS / f"{ui_path.stem}_api.json").read_text())
        assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["class_type"] for n in api.values()), ui_path.name


def test_tiny_smoke_api_workflow_runs_with_our_nodes(tmp_path, single_thread):
    """Execute vist3a_tiny_smoke_api.json in dependency order as ComfyUI would (core PreviewImage skipped)."""
    from pathlib import Path

    from vist3a.io import read_gaussians_ply, read_point_cloud_ply

    state = _fake_comfy.install(tmp_path)
    try:
        import nodes

        graph = json.loads((WORKFLOWS / "vist3a_tiny_smoke_api.json").read_text())
        results, ui = {}, {}

        def run(node_id):
            if node_id in results:
                return results[node_id]
            node = graph[node_id]
            cls = nodes.NODE_CLASS_MAPPINGS.get(node["class_type"])
            if cls is None:
                assert node["class_type"] in CORE_NODES
                results[node_id] = None
                return None
            kwargs = {k: (run(v[0])[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                ui[node_id] = out["ui"]
                out = out["result"]
            results[node_id] = out
            return out

        for node_id in graph:
            run(node_id)
        splat_entries = [e for u in ui.values() for e in u.get("vist3a_splats", [])]
        point_entries = [e for u in ui.values() for e in u.get("vist3a_points", [])]
        assert {e["type"] for e in splat_entries} == {"output", "temp"} and point_entries
        for e in splat_entries:
            assert len(read_gaussians_ply(Path(state.root) / e["type"] / e["subfolder"] / e["filename"])) > 0
        e = point_entries[0]
        assert len(read_point_cloud_ply(Path(state.root) / "output" / e["subfolder"] / e["filename"]).points) > 0
    finally:
        _fake_comfy.uninstall()
