"""The pack inside a real ComfyUI server (scripts/comfyui_e2e.py).

``test_pack_in_real_comfyui`` runs only when $COMFYUI_DIR is a ComfyUI checkout; ComfyUI runs in its own interpreter:
$COMFYUI_PYTHON (default: $COMFYUI_DIR/venv or .venv, else this interpreter). Set VIST3A_E2E_STRICT=1 to fail, rather
than skip, when the documented node ids are not registered. The other tests check the harness's workflow rewriting
on a synthetic ``/object_info`` and need no ComfyUI.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


def _harness():
    name = "_vist3a_comfyui_e2e"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "comfyui_e2e.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="real-ComfyUI end-to-end run: set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its venv's "
    "python); see README, section 'Real-ComfyUI end-to-end run'",
)
def test_pack_in_real_comfyui():
    harness = _harness()
    report = harness.run(
        COMFYUI_DIR,
        os.environ.get("COMFYUI_PYTHON") or None,
        require_documented=os.environ.get("VIST3A_E2E_STRICT", "") in ("1", "true", "yes"),
    )
    if not report.ok:
        pytest.fail(report.summary() + "\n---- ComfyUI log (tail) ----\n" + report.server_log[-6000:], pytrace=False)
    print(report.summary())


# ---------------------------------------------------------------------------------------------------------------------
# the harness's workflow rewriting, on a synthetic /object_info (no ComfyUI needed)

OBJECT_INFO = {
    "UNETLoader": {"input": {"required": {"unet_name": [["other.safetensors"]]}}},
    "VAELoader": {"input": {"required": {"vae_name": [[]]}}},
    "LoadVideo": {"input": {"required": {"file": ["COMBO", {"options": ["vist3a_e2e_input.mp4"]}]}}},
    "Sampler": {
        "input": {
            "required": {
                "steps": ["INT", {"default": 50, "min": 1, "max": 1000}],
                "width": ["INT", {"default": 512, "min": 16, "max": 2048}],
                "preset": [["comfy", "tiny"]],
                "seed": ["INT", {"default": 0}],
            },
            "optional": {"model": ["MODEL", {}]},
        }
    },
    "Decoder": {
        "input": {"required": {"decoder": [["big.pth", "tiny-vggt (untrained)", "tiny-anysplat (untrained)"]]}}
    },
    "Decode": {
        "input": {"required": {"decoder": ["DEC", {}], "samples": ["LATENT", {}]}, "optional": {"vae": ["VAE", {}]}}
    },
    "Save": {"input": {"required": {"splats": ["S", {}], "filename_prefix": ["STRING", {}]}}, "output_node": True},
    "KSampler": {"input": {"required": {"model": ["MODEL", {}], "steps": ["INT", {}]}}},
}


def _wf():
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan.safetensors"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_vae.safetensors"}},
        "3": {
            "class_type": "Sampler",
            "inputs": {"steps": 50, "width": 512, "preset": "comfy", "seed": 0, "model": ["1", 0]},
        },
        "4": {"class_type": "Decoder", "inputs": {"decoder": "HJGO/VIST3A/anysplat_stitched.pth"}},
        "5": {"class_type": "Decode", "inputs": {"decoder": ["4", 0], "samples": ["3", 0], "vae": ["2", 0]}},
        "6": {"class_type": "Save", "inputs": {"splats": ["5", 0], "filename_prefix": "vist3a/scene"}},
    }


def test_prepare_switches_to_tiny_and_prunes_missing_model_files():
    h = _harness()
    wf, notes, reason = h.prepare_workflow("x_api.json", _wf(), OBJECT_INFO)
    assert reason == ""
    assert sorted(wf) == ["3", "4", "5", "6"]  # the loaders of missing files are gone
    assert wf["3"]["inputs"]["preset"] == "tiny"
    assert wf["3"]["inputs"]["steps"] == 2 and wf["3"]["inputs"]["width"] == 64
    assert "model" not in wf["3"]["inputs"] and "vae" not in wf["5"]["inputs"]
    assert wf["4"]["inputs"]["decoder"] == "tiny-anysplat (untrained)"  # the family of the original
    assert wf["6"]["inputs"]["filename_prefix"] == "e2e_x_api/scene"
    assert any("dropped nodes" in n for n in notes)


def test_prepare_skips_a_workflow_that_needs_model_files():
    h = _harness()
    wf = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan.safetensors"}},
        "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "steps": 50}},
        "3": {"class_type": "Save", "inputs": {"splats": ["2", 0], "filename_prefix": "a"}},
    }
    prepared, _, reason = h.prepare_workflow("k_api.json", wf, OBJECT_INFO)
    assert prepared is None and "UNETLoader.unet_name='wan.safetensors'" in reason


def test_prepare_unknown_node_and_video_input():
    h = _harness()
    _, _, reason = h.prepare_workflow("u.json", {"1": {"class_type": "Nope", "inputs": {}}}, OBJECT_INFO)
    assert "Nope" in reason
    wf = {"1": {"class_type": "LoadVideo", "inputs": {"file": "input.mp4"}}}
    info = dict(OBJECT_INFO, LoadVideo=dict(OBJECT_INFO["LoadVideo"], output_node=True))
    prepared, _, reason = h.prepare_workflow("v.json", wf, info)
    assert reason == "" and prepared["1"]["inputs"]["file"] == "vist3a_e2e_input.mp4"


def test_boost_steps_and_load_api_workflow(tmp_path):
    h = _harness()
    prepared, _, _ = h.prepare_workflow("x_api.json", _wf(), OBJECT_INFO)
    boosted, changed = h.boost_steps(prepared, OBJECT_INFO, 10_000)
    assert boosted["3"]["inputs"]["steps"] == 1000 and boosted["3"]["inputs"]["width"] == 256
    assert changed and prepared["3"]["inputs"]["steps"] == 2  # the original is untouched
    path = tmp_path / "w_api.json"
    path.write_text('{"prompt": {"1": {"class_type": "Save", "inputs": {}}}}')
    assert h.load_api_workflow(path) == {"1": {"class_type": "Save", "inputs": {}}}
    path.write_text('{"nodes": [], "links": []}')
    with pytest.raises(ValueError, match="not an API-format workflow"):
        h.load_api_workflow(path)


def test_shared_api_workflows_parse():
    h = _harness()
    for path in sorted((REPO_ROOT / "workflows" / "api").glob("*_api.json")):
        assert h.load_api_workflow(path), path


def test_shared_workflows_ui_first_and_ui_conversion(tmp_path):
    """The harness queues the UI workflows converted as the frontend does, then the API copies."""
    h = _harness()
    paths = h.shared_workflows()
    ui = [p for p in paths if p.parent.name == "workflows"]
    assert ui and paths[: len(ui)] == ui and all(p.name.endswith("_api.json") for p in paths[len(ui):])
    info = {"Sampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}, "output": ["LATENT"]}}
    wf = {"nodes": [{"id": 7, "type": "Sampler", "inputs": [], "widgets_values": [5, "randomize", 3]}], "links": []}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(wf))
    assert h.load_workflow(path, info)["7"]["inputs"] == {"seed": 5, "steps": 3}
    with pytest.raises(h.ui_workflow_module().WorkflowError):
        h.load_workflow(path, {})
