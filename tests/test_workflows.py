"""Shared workflows: every UI workflow (workflows/*.json, what the template browser lists) converts to a prompt the
way the ComfyUI frontend converts it (scripts/ui_workflow.py: widget order from the node definitions, the inserted
control_after_generate slots, links) and that prompt passes ComfyUI's input validation against the node definitions
of a real ComfyUI 0.8.0 and 0.27.0 (tests/data/comfyui_*_object_info.json, dumped from those servers) plus ours.
The API copies in workflows/api/ are exactly that conversion.
"""

import copy
import importlib.util
import json
import os
import sys

import _fake_comfy
import pytest
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WORKFLOWS = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
DATA = REPO_ROOT / "tests" / "data"
COMFYUI_VERSIONS = ("0.8.0", "0.27.0")
# Combo inputs whose options are the server's own files (none in these dumps): only checked for being strings.
FILE_COMBOS = ("unet_name", "clip_name", "vae_name", "file")
# Workflows that need ComfyUI's core splat nodes (0.23.0+): not offered on 0.8.0 (see web/js/vist3a_templates.js).
CORE_ONLY = {"vist3a_text_to_splat_core_nodes"}
LOADERS = {"UNETLoader", "CLIPLoader", "VAELoader", "LoadStitchedDecoder"}


def _ui_workflow_module():
    name = "_vist3a_ui_workflow"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "ui_workflow.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


uw = _ui_workflow_module()


def _pack_object_info(core_splat: bool) -> dict:
    """/object_info entries of our nodes as a ComfyUI with (``core_splat``) or without the core SPLAT type sees them."""
    import nodes

    if core_splat:
        _fake_comfy.install_core_splat(type("SPLAT", (), {}))
    else:
        _fake_comfy.reload_nodes()
    try:
        return uw.object_info_from_classes(nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    finally:
        if core_splat:
            _fake_comfy.uninstall_core_splat()


@pytest.fixture(scope="module")
def object_infos(tmp_path_factory):
    """ComfyUI version -> its core node definitions (dumped from the real server) + ours."""
    _fake_comfy.install(tmp_path_factory.mktemp("comfy"))
    try:
        infos = {}
        for version in COMFYUI_VERSIONS:
            core = json.loads((DATA / f"comfyui_{version}_object_info.json").read_text())
            assert core.pop("__comfyui__")["version"] == version
            infos[version] = {**core, **_pack_object_info("SplatToFile3D" in core)}
        yield infos
    finally:
        _fake_comfy.reload_nodes()
        _fake_comfy.uninstall()


def _ui_files():
    return sorted(WORKFLOWS.glob("*.json"))


def _load(path):
    return json.loads(path.read_text())


def _offered(wf: dict, info: dict) -> bool:
    """The template filter's rule: every node type of the workflow is known to the running ComfyUI."""
    return {n["type"] for n in wf["nodes"]} - uw.VIRTUAL_NODES <= set(info)


# ---------------------------------------------------------------------------------------------------- the files
def test_ui_workflows_and_api_copies_are_listed():
    ui = _ui_files()
    api = sorted(API_DIR.glob("*.json"))
    assert len(ui) >= 5 and all(not p.name.endswith("_api.json") for p in ui), "API copies belong in workflows/api/"
    assert {p.stem for p in ui} == {p.stem[: -len("_api")] for p in api}
    readme = (WORKFLOWS / "README.md").read_text()
    assert all(p.name in readme for p in ui + api)


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
@pytest.mark.parametrize("path", _ui_files(), ids=lambda p: p.stem)
def test_ui_workflow_queues_as_loaded(path, version, object_infos):
    """Load -> Run in the frontend: the prompt it would queue passes the server's validation."""
    info = object_infos[version]
    wf = _load(path)
    if not _offered(wf, info):
        assert path.stem in CORE_ONLY and version == "0.8.0", (path.name, version)
        with pytest.raises(uw.WorkflowError, match="does not define"):
            uw.ui_to_api(wf, info)
        return
    prompt = uw.ui_to_api(wf, info)
    assert uw.validate_prompt(prompt, info, dynamic_combos=FILE_COMBOS) == []
    ran = {n["type"] for n in wf["nodes"] if n["type"] not in uw.VIRTUAL_NODES}
    assert sorted(ran) == sorted({n["class_type"] for n in prompt.values()})


def test_workflows_needing_core_nodes_say_so(object_infos):
    """Exactly the CORE_ONLY workflows are unavailable on 0.8.0, and they carry a note naming the minimum version."""
    for path in _ui_files():
        wf = _load(path)
        assert _offered(wf, object_infos["0.27.0"]), path.name
        assert _offered(wf, object_infos["0.8.0"]) == (path.stem not in CORE_ONLY), path.name
        if path.stem in CORE_ONLY:
            notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
            assert notes and "0.23.0 or newer" in notes[0]["widgets_values"][0]


def test_shifted_widget_values_are_caught(object_infos):
    """The bug this guards against: a WanVIST3ASampler saved without the control_after_generate slot after seed
    shifts every later value by one; ComfyUI then refuses the prompt with exactly these errors."""
    wf = _load(WORKFLOWS / "vist3a_tiny_smoke.json")
    sampler = next(n for n in wf["nodes"] if n["type"] == "WanVIST3ASampler")
    assert sampler["widgets_values"][3] == "fixed"
    del sampler["widgets_values"][3]
    info = object_infos["0.27.0"]
    errors = uw.validate_prompt(uw.ui_to_api(wf, info), info, dynamic_combos=FILE_COMBOS)
    text = "\n".join(errors)
    assert "value not in list: preset" in text, text
    assert "value smaller than min: height: 5 < 16" in text, text
    assert "FLOAT value: flow_shift, 'tiny'" in text, text


@pytest.mark.parametrize("path", _ui_files(), ids=lambda p: p.stem)
def test_api_copy_is_the_frontend_conversion(path, object_infos):
    """workflows/api/NAME_api.json is what the frontend queues for NAME.json on ComfyUI 0.27.0. After editing a UI
    workflow, rewrite the copies with ``VIST3A_WRITE_API=1 python -m pytest tests/test_workflows.py -k api_copy``."""
    target = API_DIR / f"{path.stem}_api.json"
    prompt = uw.ui_to_api(_load(path), object_infos["0.27.0"])
    if os.environ.get("VIST3A_WRITE_API") == "1":
        target.write_text(json.dumps(prompt, indent=1) + "\n")
    assert _load(target) == prompt


@pytest.mark.parametrize("path", _ui_files(), ids=lambda p: p.stem)
def test_ui_workflow_links_and_loaders(path, object_infos):
    """Link records agree with the node slots and the output types (as saved on the oldest ComfyUI that offers the
    workflow); loaders offer their model downloads."""
    info = object_infos["0.27.0" if path.stem in CORE_ONLY else "0.8.0"]
    wf = _load(path)
    nodes_by_id = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes_by_id) == len(wf["nodes"])
    assert wf["last_node_id"] >= max(nodes_by_id) and wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        s, d = nodes_by_id[src], nodes_by_id[dst]
        assert info[s["type"]]["output"][src_slot] == kind, (path.name, link_id)
        assert s["outputs"][src_slot]["type"] == kind and link_id in s["outputs"][src_slot]["links"]
        slot = d["inputs"][dst_slot]
        assert slot["link"] == link_id, (path.name, link_id)
        specs = {**info[d["type"]]["input"].get("optional", {}), **info[d["type"]]["input"]["required"]}
        assert uw._types_overlap(kind, uw.spec_type(specs[slot["name"]])), (path.name, link_id)
    for node in wf["nodes"]:
        if node["type"] in uw.VIRTUAL_NODES:
            continue
        outputs = info[node["type"]]["output"]  # a node saved by an older ComfyUI may have fewer outputs
        assert [o["type"] for o in node["outputs"]] == outputs[: len(node["outputs"])], (path.name, node["type"])
        values = node.get("widgets_values", [])
        assert len(values) == len(uw.node_widgets(info[node["type"]])), (path.name, node["type"])
        if node["type"] in LOADERS and not str(values[0]).startswith(("tiny", "micro")):  # built in or shipped
            models = node["properties"]["models"]
            assert models and all(set(m) == {"name", "url", "directory"} and m["url"].startswith("https://")
                                  for m in models), (path.name, node["type"])


# ---------------------------------------------------------------------------------------------------- the converter
SAMPLER_DEF = {
    "input": {
        "required": {
            "model": ["MODEL", {}],
            "seed": ["INT", {"default": 0, "min": 0, "max": 10}],
            "sampler": [["a", "b"], {"control_after_generate": True}],
            "steps": ["INT", {"default": 2, "min": 1, "max": 9}],
            "image": [["x.png"], {"image_upload": True}],
            "value": ["FLOAT", {"default": 1.0, "forceInput": True}],
        },
        "optional": {"note": ["STRING", {"default": ""}]},
    },
    "input_order": {"required": ["model", "seed", "sampler", "steps", "image", "value"], "optional": ["note"]},
    "output": ["LATENT"],
    "output_node": True,
}
SOURCE_DEF = {"input": {"required": {"x": ["FLOAT", {"min": 0.0}]}}, "output": ["MODEL", "FLOAT"]}


def test_frontend_widget_order():
    assert uw.node_widgets(SAMPLER_DEF) == [
        ("seed", True), ("control_after_generate", False), ("sampler", True), ("control_after_generate", False),
        ("control_filter_list", False), ("steps", True), ("image", True), ("note", True), ("upload", False)]
    # without input_order the definition's own order, the upload button right after the required inputs
    plain = {k: v for k, v in SAMPLER_DEF.items() if k != "input_order"}
    assert [n for n, _ in uw.node_widgets(plain)][-2:] == ["upload", "note"]


def _graph(sampler_values, src_mode=0, extra_nodes=(), links=None, sampler_inputs=None):
    nodes = [
        {"id": 1, "type": "Source", "mode": src_mode, "inputs": [], "outputs": [{"type": "MODEL"}, {"type": "FLOAT"}],
         "widgets_values": [0.5]},
        {"id": 2, "type": "Sampler", "mode": 0, "widgets_values": sampler_values,
         "inputs": sampler_inputs or [{"name": "model", "type": "MODEL", "link": 1},
                                      {"name": "value", "type": "FLOAT", "link": 2}],
         "outputs": [{"type": "LATENT"}]},
        *extra_nodes,
    ]
    return {"nodes": nodes, "links": links or [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "FLOAT"]]}


VALUES = [3, "fixed", "b", "fixed", "", 4, "x.png", "hi", "image"]


def test_ui_to_api_widgets_links_and_validation():
    info = {"Sampler": SAMPLER_DEF, "Source": SOURCE_DEF}
    prompt = uw.ui_to_api(_graph(VALUES), info)
    assert prompt["2"]["inputs"] == {"seed": 3, "sampler": "b", "steps": 4, "image": "x.png", "note": "hi",
                                     "model": ["1", 0], "value": ["1", 1]}
    assert prompt["1"]["inputs"] == {"x": 0.5}
    assert uw.validate_prompt(prompt, info) == []
    # list values are wrapped, as the frontend does; a muted source drops its links
    wrapped = uw.ui_to_api(_graph([[1, 2], *VALUES[1:]], src_mode=2), info)
    assert wrapped["2"]["inputs"]["seed"] == {"__value__": [1, 2]} and "1" not in wrapped
    assert "model" not in wrapped["2"]["inputs"]
    errors = uw.validate_prompt(wrapped, info)
    assert any("required input 'model' missing" in e for e in errors)
    bad = copy.deepcopy(prompt)
    bad["2"]["inputs"].update(seed=11, sampler="c", steps="many")
    bad["2"]["inputs"]["model"] = ["1", 1]
    text = "\n".join(uw.validate_prompt(bad, info))
    for expected in ("value bigger than max: seed: 11 > 10", "value not in list: sampler: 'c'",
                     "INT value: steps, 'many'", "input 'model' wants MODEL, linked output gives FLOAT"):
        assert expected in text, text


def test_ui_to_api_through_reroute_bypass_and_notes():
    info = {"Sampler": SAMPLER_DEF, "Source": SOURCE_DEF,
            "Pass": {"input": {"required": {"m": ["MODEL", {}]}}, "output": ["MODEL"]}}
    extra = [
        {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 3}],
         "outputs": [{"type": "MODEL"}]},
        {"id": 4, "type": "Pass", "mode": 4, "inputs": [{"name": "m", "type": "MODEL", "link": 4}],
         "outputs": [{"type": "MODEL"}], "widgets_values": []},
        {"id": 5, "type": "MarkdownNote", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["# hi"]},
    ]
    links = [[3, 4, 0, 3, 0, "MODEL"], [4, 1, 0, 4, 0, "MODEL"], [1, 3, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "FLOAT"]]
    prompt = uw.ui_to_api(_graph(VALUES, extra_nodes=extra, links=links), info)
    assert set(prompt) == {"1", "2"} and prompt["2"]["inputs"]["model"] == ["1", 0]
    with pytest.raises(uw.WorkflowError, match="type 'Nope'"):
        uw.ui_to_api({"nodes": [{"id": 1, "type": "Nope", "inputs": []}], "links": []}, info)
    with pytest.raises(uw.WorkflowError, match="missing from 'links'"):
        uw.ui_to_api(_graph(VALUES, links=[[2, 1, 1, 2, 1, "FLOAT"]]), info)


def test_object_info_from_classes_matches_the_server_layout():
    class Node:
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "run"
        CATEGORY = "x"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"a": (["p", "q"],), "b": ("INT", {"default": 1})}, "optional": {"c": ("MODEL",)}}

    info = uw.object_info_from_classes({"N": Node}, {"N": "Nice"})["N"]
    assert info["input"]["required"] == {"a": [["p", "q"]], "b": ["INT", {"default": 1}]}
    assert info["input_order"] == {"required": ["a", "b"], "optional": ["c"]}
    assert info["output"] == ["LATENT"] and info["output_name"] == ["LATENT"] and info["output_node"] is True
    assert info["display_name"] == "Nice"


# ---------------------------------------------------------------------------------------------------- running it
def test_tiny_smoke_api_workflow_runs_with_our_nodes(tmp_path, single_thread):
    """Execute workflows/api/vist3a_tiny_smoke_api.json in dependency order as ComfyUI would (core PreviewImage
    skipped)."""
    from pathlib import Path

    from vist3a.io import read_gaussians_ply, read_point_cloud_ply

    state = _fake_comfy.install(tmp_path)
    try:
        import nodes

        graph = json.loads((API_DIR / "vist3a_tiny_smoke_api.json").read_text())
        results, ui = {}, {}

        def run(node_id):
            if node_id in results:
                return results[node_id]
            node = graph[node_id]
            cls = nodes.NODE_CLASS_MAPPINGS.get(node["class_type"])
            if cls is None:
                assert node["class_type"] == "PreviewImage"
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
