"""Fuzz corpus, ComfyUI node inputs (through the ComfyUI double in tests/_fake_comfy.py): bad numbers, choices,
latents, images, splats, model files and output folders.

Contract: ``VALIDATE_INPUTS`` (run when the prompt is queued, before any node executes) answers
``"<NodeName>: ..."`` for every bad widget value and every missing or damaged model; the node functions raise
``ValueError("<NodeName>: ...")`` for every bad input; no payload runs; the output folder is left as it was.
"""

from __future__ import annotations

import errno
import math
import types

import _fake_comfy
import pytest
import torch
from _contract import (
    assert_clear_value_error,
    assert_unchanged,
    snapshot,
    truncate,
    write_zip_pickle,
)

TINY = "tiny-anysplat (untrained, tests only)"
PUBLISHED = "HJGO/VIST3A/anysplat_stitched.pth"
LORA_13B = "HJGO/VIST3A/vist3a_1.3b_lora_ema"


@pytest.fixture
def comfy(tmp_path):
    state = _fake_comfy.install(tmp_path)
    (tmp_path / "output").mkdir()
    yield state
    _fake_comfy.uninstall()


@pytest.fixture
def nodes(comfy):
    import nodes as pack

    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture
def models(comfy, tmp_path):
    from vist3a.pipeline.presets import tiny_decoder
    from vist3a.stitching import save_decoder

    folder = tmp_path / "models" / "vist3a"
    folder.mkdir(parents=True)
    save_decoder(tiny_decoder(0), folder / "good", video_size=64)
    return folder


# ============================================================================================ VALIDATE_INPUTS
_S = {"lora": "none (base Wan)", "lora_strength": 1.0, "seed": 0, "steps": 2, "cfg": 5.0, "frames": 9, "width": 64,
      "height": 64, "flow_shift": 5.0, "preset": "tiny"}

SAMPLER = [
    ("cfg-nan", {"cfg": math.nan}, "cfg"),
    ("cfg-inf", {"cfg": math.inf}, "cfg"),
    ("cfg-negative", {"cfg": -1.0}, "cfg"),
    ("seed-2^64", {"seed": 2**64}, "seed"),
    ("seed-negative", {"seed": -1}, "seed"),
    ("frames-8", {"frames": 8}, "frames"),
    ("frames-1", {"frames": 1}, "frames"),
    ("width-100", {"width": 100}, "width"),
    ("height-0", {"height": 0}, "height"),
    ("shift-zero", {"flow_shift": 0.0}, "flow_shift"),
    ("shift-nan", {"flow_shift": math.nan}, "flow_shift"),
    ("steps-zero", {"steps": 0}, "steps"),
    ("steps-huge", {"steps": 10**6}, "steps"),
    ("strength-nan", {"lora_strength": math.nan}, "lora_strength"),
    ("preset-unknown", {"preset": "huge"}, "preset"),
    ("lora-not-listed", {"lora": "../../etc/passwd", "preset": "comfy"}, "lora"),
]


@pytest.mark.parametrize("case, change, name", SAMPLER, ids=[c[0] for c in SAMPLER])
def test_sampler_refuses_at_queue_time_and_at_run_time(case, change, name, nodes, comfy):
    cls = nodes["WanVIST3ASampler"]
    args = {**_S, **change}
    answer = cls.VALIDATE_INPUTS(**args)
    assert isinstance(answer, str) and answer.startswith("WanVIST3ASampler: ") and name in answer, answer
    if case.startswith(("preset", "lora")):
        return  # list choices: ComfyUI itself never passes an unlisted value to the function
    with pytest.raises(ValueError) as info:
        cls().sample(**args)
    assert_clear_value_error(info.value, "WanVIST3ASampler: ", name)
    assert comfy.progress == []  # refused before any sampling step


def test_sampler_valid_inputs_and_linked_ones_pass(nodes):
    cls = nodes["WanVIST3ASampler"]
    assert cls.VALIDATE_INPUTS(**_S) is True
    assert cls.VALIDATE_INPUTS(**{**_S, "cfg": None, "seed": None}) is True  # fed by links: checked at run time
    assert cls.VALIDATE_INPUTS(**{**_S, "lora": LORA_13B}) is True  # preset tiny ignores the LoRA


def test_missing_published_models_named_with_downloads(nodes, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = nodes["LoadStitchedDecoder"].VALIDATE_INPUTS(PUBLISHED)
    assert answer.startswith("LoadStitchedDecoder: 2 models are not available"), answer
    assert f"hf download HJGO/VIST3A anysplat_stitched.pth --local-dir {models / 'HJGO_VIST3A'}" in answer
    assert f"hf download lhjiang/anysplat --local-dir {models / 'lhjiang_anysplat'}" in answer
    answer = nodes["WanVIST3ASampler"].VALIDATE_INPUTS(**{**_S, "lora": LORA_13B, "preset": "comfy"})
    assert 'hf download HJGO/VIST3A --include "vist3a_1.3b_lora_ema/*"' in answer, answer
    answer = nodes["VIST3AApplyLoRA"].VALIDATE_INPUTS(LORA_13B, 1.0)
    assert answer.startswith("VIST3AApplyLoRA: 1 model is not available"), answer
    with pytest.raises(ValueError) as info:  # the node itself says the same (no download attempted offline)
        nodes["LoadStitchedDecoder"]().load(PUBLISHED, "auto", "cpu")
    assert_clear_value_error(info.value, "LoadStitchedDecoder: 2 models are not available", "hf download")


def _decoder_case(models, case, marker):
    from vist3a.models import AnySplat, AnySplatConfig, save_pretrained

    if case == "truncated-pth":
        (models / "bad.pth").write_bytes(b"PK\x03\x04" + b"\0" * 64)
        return "bad.pth", "truncated"
    if case == "payload-pth":
        save_pretrained(AnySplat(AnySplatConfig.tiny()), models / "lhjiang_anysplat")  # a local base: loading starts
        write_zip_pickle(models / "evil.pth", marker)
        return "evil.pth", "never unpickles"
    import json
    import shutil

    shutil.copytree(models / "good", models / "bad")
    if case == "config-without-base-model":
        cfg = json.loads((models / "bad" / "decoder_config.json").read_text())
        del cfg["base_model"]
        (models / "bad" / "decoder_config.json").write_text(json.dumps(cfg))
        return "bad", "'base_model' is missing"
    if case == "weights-truncated":
        truncate(models / "bad" / "model.safetensors", models / "bad" / "model.safetensors", 0.5)
        return "bad", "truncated"
    if case == "weights-wrong-keys":
        from safetensors.torch import save_file

        save_file({"model.foo": torch.zeros(1)}, str(models / "bad" / "model.safetensors"))
        return "bad", "missing keys"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated-pth", "payload-pth", "config-without-base-model", "weights-truncated",
                                  "weights-wrong-keys"])
def test_damaged_decoder_in_models_folder(case, nodes, models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "PAYLOAD_RAN"
    name, phrase = _decoder_case(models, case, marker)
    cls = nodes["LoadStitchedDecoder"]
    answer = cls.VALIDATE_INPUTS(name)
    if case != "payload-pth":  # only unpickling can tell a payload: refused at load, never run
        assert isinstance(answer, str) and answer.startswith("LoadStitchedDecoder: ") and phrase in answer, answer
    with pytest.raises(ValueError) as info:
        cls().load(name, "auto", "cpu")
    assert_clear_value_error(info.value, "LoadStitchedDecoder: ", phrase)
    assert not marker.exists()
    assert cls.VALIDATE_INPUTS("good") is True and cls.VALIDATE_INPUTS(TINY) is True
    assert cls.VALIDATE_INPUTS("not-there").startswith("LoadStitchedDecoder: decoder 'not-there' is not one of")


# ============================================================================================ node functions
def _gaussians(n=6):
    from vist3a import Gaussians

    return Gaussians(torch.randn(n, 3), torch.rand(n, 3) + 0.1, torch.nn.functional.normalize(torch.randn(n, 4),
                                                                                               dim=-1),
                     torch.rand(n), torch.rand(n, 1, 3))


def _core_splat(**bad):
    g = _gaussians()
    fields = {"positions": g.means[None], "scales": g.scales[None], "rotations": g.rotations[None],
              "opacities": g.opacities[None, :, None], "sh": g.sh[None], "counts": None}
    fields.update(bad)
    return types.SimpleNamespace(**fields)


def _nan_positions():
    s = _core_splat()
    s.positions[0, 2, 1] = float("nan")
    return s


def _latent(shape=(1, 16, 3, 8, 8), fill=None):
    z = torch.randn(*shape)
    if fill is not None:
        z[0, 0, 0, 0, 0] = fill
    return {"samples": z}


CALLS = [
    # (case, node, method args builder(nodes) -> (instance method, kwargs), name the message must contain)
    ("decode-nan-latent", "DecodeToSplats", lambda d: {"decoder": d, "samples": _latent(fill=float("nan"))}, "NaN"),
    ("decode-inf-latent", "DecodeToSplats", lambda d: {"decoder": d, "samples": _latent(fill=float("inf"))}, "NaN"),
    ("decode-wrong-channels", "DecodeToSplats", lambda d: {"decoder": d, "samples": _latent((1, 4, 3, 8, 8))},
     "16"),
    ("decode-4d-latent", "DecodeToSplats", lambda d: {"decoder": d, "samples": {"samples": torch.randn(1, 16, 8, 8)}},
     "video latent"),
    ("decode-empty-latent", "DecodeToSplats", lambda d: {"decoder": d, "samples": _latent((1, 16, 0, 8, 8))},
     "empty"),
    ("decode-not-a-latent", "DecodeToSplats", lambda d: {"decoder": d, "samples": torch.randn(3)}, "LATENT"),
    ("decode-decoder-not-a-handle", "DecodeToSplats", lambda d: {"decoder": "x", "samples": _latent()},
     "LoadStitchedDecoder"),
    ("pointmap-nan-threshold", "DecodeToPointmap",
     lambda d: {"decoder": d, "samples": _latent(), "confidence_threshold": float("nan")}, "confidence_threshold"),
    ("pointmap-percentile-150", "DecodeToPointmap",
     lambda d: {"decoder": d, "samples": _latent(), "drop_percentile": 150.0}, "drop_percentile"),
    ("images-nan", "VIST3AImagesTo3D",
     lambda d: {"decoder": d, "images": torch.full((9, 64, 64, 3), float("nan")), "frames": 9, "width": 64,
                "height": 64}, "NaN"),
    ("images-empty", "VIST3AImagesTo3D",
     lambda d: {"decoder": d, "images": torch.zeros(0, 64, 64, 3), "frames": 9, "width": 64, "height": 64},
     "IMAGE"),
    ("images-frames-8", "VIST3AImagesTo3D",
     lambda d: {"decoder": d, "images": torch.rand(9, 64, 64, 3), "frames": 8, "width": 64, "height": 64},
     "frames"),
    ("images-width-30", "VIST3AImagesTo3D",
     lambda d: {"decoder": d, "images": torch.rand(9, 64, 64, 3), "frames": 9, "width": 30, "height": 64},
     "width"),
    ("save-not-splats", "SaveSplatPLY", lambda d: {"splats": "splats?", "filename_prefix": "x"}, "splats"),
    ("save-nan-core-splat", "SaveSplatPLY", lambda d: {"splats": _nan_positions(), "filename_prefix": "x"},
     "valid Gaussians"),
    ("save-log-scales-core-splat", "SaveSplatPLY",
     lambda d: {"splats": _core_splat(scales=-torch.rand(1, 6, 3)), "filename_prefix": "x"}, "valid Gaussians"),
    ("preview-not-splats", "VIST3APreviewSplats", lambda d: {"splats": 3}, "splats"),
    ("points-not-points", "SavePointCloudPLY", lambda d: {"points": [1, 2], "filename_prefix": "x"}, "points"),
    ("template-empty", "VIST3APromptTemplate", lambda d: {"scene": "   "}, "empty"),
]


@pytest.fixture
def tiny_handle(nodes):
    return nodes["LoadStitchedDecoder"]().load(TINY, "auto", "cpu")[0]


@pytest.mark.parametrize("case, node, build, name", CALLS, ids=[c[0] for c in CALLS])
def test_bad_node_input_raises_one_clear_error(case, node, build, name, nodes, tiny_handle, comfy, tmp_path):
    cls = nodes[node]
    kwargs = build(tiny_handle)
    before = snapshot(tmp_path / "output")
    with pytest.raises(ValueError) as info:
        getattr(cls(), cls.FUNCTION)(**kwargs)
    assert_clear_value_error(info.value, f"{node}: " if not node.startswith("VIST3APreview") else "PreviewSplats: ",
                             name)
    assert_unchanged(tmp_path / "output", before)
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    if validate is not None and case.startswith(("pointmap-", "images-frames", "images-width")):
        widgets = {k: v for k, v in kwargs.items() if k not in ("decoder", "samples", "images")}
        answer = validate(**widgets)
        assert isinstance(answer, str) and answer.startswith(f"{node}: ") and name in answer, answer


@pytest.mark.parametrize("failure", ["read-only-folder", "disk-full-mid-write"])
def test_save_node_write_failures_leave_nothing(failure, nodes, comfy, tmp_path, monkeypatch):
    """SaveSplatPLY into an unwritable output folder, or a disk that fills while writing: one clear message naming
    the target (never the hidden temporary file); no partial file; earlier saves untouched."""
    import vist3a.io.atomic as atomic_mod
    from nodes.splat_types import SplatBatch

    save = nodes["SaveSplatPLY"]()
    save.save(SplatBatch([_gaussians()]), "vist3a/scene", True)  # an earlier result
    out = tmp_path / "output"
    before = snapshot(out)
    if failure == "read-only-folder":
        def mkstemp(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", "/somewhere/.scene.vist3a.tmp")

        monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", mkstemp)
        expected = "not writable"
    else:
        real_open = open

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

        def full_open(path, mode="r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            return Full(fh) if "w" in mode else fh

        monkeypatch.setattr(atomic_mod, "open", full_open, raising=False)
        expected = "no space left"
    with pytest.raises(ValueError) as info:
        save.save(SplatBatch([_gaussians()]), "vist3a/scene", True)
    message = assert_clear_value_error(info.value, "SaveSplatPLY: cannot write ", expected, "scene_00002_.ply")
    assert ".tmp" not in message
    assert_unchanged(out, before)


@pytest.mark.parametrize("node", ["SaveSplatPLY", "SavePointCloudPLY"])
def test_unwritable_output_folder_refused_at_queue_time(node, nodes, comfy, tmp_path, monkeypatch):
    """Before the sampler and the decoder run, the save nodes probe ComfyUI's output folder."""
    import vist3a.io.atomic as atomic_mod

    assert nodes[node].VALIDATE_INPUTS("vist3a/scene") is True

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", "/x/.output.vist3a.tmp")

    monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", mkstemp)
    answer = nodes[node].VALIDATE_INPUTS("vist3a/scene")
    assert answer.startswith(f"{node}: ComfyUI's output folder {tmp_path / 'output'} accepts no new files"), answer
    assert "not writable" in answer and ".tmp" not in answer


def test_the_corpus_is_what_it_claims():
    assert len(SAMPLER) + len(CALLS) + 5 + 2 >= 40
