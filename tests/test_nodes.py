"""ComfyUI nodes without ComfyUI: definitions well formed, tiny models end to end through a fake of the few ComfyUI
modules they use (tests/_fake_comfy.py), saves confined to the output folder, LoRA key conversion."""

import importlib
import sys
from pathlib import Path

import _fake_comfy
import pytest
import torch
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TINY = "tiny-anysplat (untrained, tests only)"
TINY_VGGT = "tiny-vggt (untrained, tests only)"


@pytest.fixture
def comfy(tmp_path):
    state = _fake_comfy.install(tmp_path)
    yield state
    _fake_comfy.uninstall()


@pytest.fixture
def mappings(comfy):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


def test_nodes_import_without_comfyui():
    for name in _fake_comfy.NAMES:
        sys.modules.pop(name, None)
    import nodes

    importlib.reload(nodes)
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules
    required = {"LoadStitchedDecoder", "WanVIST3ASampler", "DecodeToSplats", "DecodeToPointmap", "SaveSplatPLY",
                "SavePointCloudPLY", "VIST3AImagesTo3D", "VIST3APreviewSplats", "VIST3APromptTemplate", "VIST3AApplyLoRA"}
    assert required <= set(nodes.NODE_CLASS_MAPPINGS)
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


def test_node_definitions_well_formed(mappings):
    import nodes

    for node_id, cls in mappings.items():
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("VIST3A "), node_id
        assert cls.CATEGORY == "VIST3A"
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20, node_id
        assert isinstance(cls.FUNCTION, str) and callable(getattr(cls, cls.FUNCTION)), node_id
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert len(names) == len(cls.RETURN_TYPES), node_id
        if not cls.RETURN_TYPES:
            assert cls.OUTPUT_NODE is True, node_id
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"} and spec["required"], node_id
        for group in ("required", "optional"):
            for name, entry in spec.get(group, {}).items():
                kind, opts = entry
                assert isinstance(kind, (str, list)), (node_id, name)
                if isinstance(kind, list):
                    assert kind and all(isinstance(k, str) for k in kind), (node_id, name)
                assert isinstance(opts.get("tooltip"), str) and opts["tooltip"], (node_id, name)
                if "default" in opts and isinstance(kind, str) and kind in ("INT", "FLOAT"):
                    assert opts.get("min", float("-inf")) <= opts["default"] <= opts.get("max", float("inf"))


def _read_entries(root, entries):
    from vist3a.io import read_gaussians_ply

    out = []
    for e in entries:
        assert set(e) == {"filename", "subfolder", "type"}
        path = Path(root) / e["type"] / e["subfolder"] / e["filename"]
        out.append(read_gaussians_ply(path))
    return out


def test_latent_to_splats_to_ply_end_to_end(mappings, comfy, single_thread):
    from vist3a.io import read_point_cloud_ply

    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "fp32", "cpu")
    assert dec.patcher.model is dec.decoder
    latent, = mappings["WanVIST3ASampler"]().sample("none (base Wan)", 1.0, 0, 2, 5.0, 9, 64, 64, 5.0, "tiny")
    assert latent["samples"].shape == (1, 16, 3, 8, 8)
    splats, cameras, frames = mappings["DecodeToSplats"]().decode(dec, latent)
    assert frames.shape == (9, 64, 64, 3) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert len(cameras) == 1 and len(cameras[0]) == 9
    assert comfy.loaded and comfy.progress  # ModelPatcher loaded, progress reported
    out = mappings["SaveSplatPLY"]().save(splats, "vist3a/scene", True)
    entries = out["ui"]["vist3a_splats"]
    assert out["ui"]["3d"] == entries and out["result"] == ()
    assert out["ui"]["vist3a_untrained"] == [True]  # the previewer's banner: tiny models are untrained
    g, = _read_entries(comfy.root, entries)
    assert len(g) == len(splats.gaussians[0])
    torch.testing.assert_close(g.means, splats.gaussians[0].means, rtol=1e-5, atol=1e-5)
    assert (Path(comfy.root) / "output" / "vist3a" / entries[0]["filename"].replace(".ply", ".splat")).is_file()
    # the decoded cameras are saved beside the scene, as `vist3a generate` does (`vist3a render` orbits along them)
    from vist3a.io.cameras_json import read_cameras_json

    sidecar = Path(comfy.root) / "output" / "vist3a" / entries[0]["filename"].replace(".ply", ".cameras.json")
    torch.testing.assert_close(read_cameras_json(sidecar).c2w, cameras[0].c2w.float(), rtol=1e-5, atol=1e-5)
    out = mappings["VIST3APreviewSplats"]().preview(splats)  # previews write no sidecar into the temp folder
    assert not list((Path(comfy.root) / "temp").rglob("*.cameras.json"))

    points, _cams, depth = mappings["DecodeToPointmap"]().decode(dec, latent, 0.0, 10.0)
    assert depth.shape == (9, 56, 56, 3) and len(points.clouds[0].points) > 0
    out = mappings["SavePointCloudPLY"]().save(points, "vist3a/points")
    e, = out["ui"]["vist3a_points"]
    cloud = read_point_cloud_ply(Path(comfy.root) / "output" / e["subfolder"] / e["filename"])
    assert len(cloud.points) == len(points.clouds[0].points)

    prev = mappings["VIST3APreviewSplats"]().preview(splats)
    assert prev["ui"]["vist3a_splats"][0]["type"] == "temp"


def test_images_to_3d_and_vggt_pointmap(mappings, comfy, single_thread):
    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "auto", "auto")
    images = torch.rand(20, 70, 90, 3)  # resampled to 9 frames, cropped to 64x64
    splats, _points, _cameras, latent = mappings["VIST3AImagesTo3D"]().reconstruct(dec, images, 9, 64, 64)
    assert latent["samples"].shape == (1, 16, 3, 8, 8) and len(splats.gaussians[0]) > 0
    with pytest.raises(ValueError, match="VIST3AImagesTo3D: .*4k\\+1"):
        mappings["VIST3AImagesTo3D"]().reconstruct(dec, torch.rand(8, 64, 64, 3), 8, 64, 64)
    vggt, = mappings["LoadStitchedDecoder"]().load(TINY_VGGT, "auto", "cpu")
    with pytest.raises(ValueError, match="DecodeToSplats: .*VGGT"):
        mappings["DecodeToSplats"]().decode(vggt, latent)
    _points, _, depth = mappings["DecodeToPointmap"]().decode(vggt, latent, 0.0, 0.0)
    assert depth.shape[0] == 9


def test_decode_accepts_comfy_vae_output_and_checks_latents(mappings, comfy, single_thread):
    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "auto", "cpu")

    class FakeVAE:  # ComfyUI's VAE.decode returns (B, T, H, W, 3) in [0, 1] for video latents
        def decode(self, z):
            return torch.rand(z.shape[0], (z.shape[2] - 1) * 4 + 1, z.shape[3] * 8, z.shape[4] * 8, 3)

    splats, _, frames = mappings["DecodeToSplats"]().decode(dec, {"samples": torch.randn(2, 16, 3, 8, 8)}, FakeVAE())
    assert len(splats.gaussians) == 2 and frames.shape == (18, 64, 64, 3)
    with pytest.raises(ValueError, match="DecodeToSplats: expected a Wan 2.1 video latent"):
        mappings["DecodeToSplats"]().decode(dec, {"samples": torch.randn(1, 4, 8, 8)})


def test_interrupt_between_decoder_blocks(mappings, comfy, single_thread):
    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "auto", "cpu")
    comfy.interrupt = True
    with pytest.raises(_fake_comfy.InterruptProcessingException):
        mappings["DecodeToSplats"]().decode(dec, {"samples": torch.randn(1, 16, 3, 8, 8)})


def test_sampler_checks_inputs(mappings, comfy):
    s = mappings["WanVIST3ASampler"]()
    with pytest.raises(ValueError, match="WanVIST3ASampler: frames must be 4k\\+1"):
        s.sample("none (base Wan)", 1.0, 0, 2, 5.0, 8, 64, 64, 5.0, "tiny")
    with pytest.raises(ValueError, match="WanVIST3ASampler: connect model"):
        s.sample("none (base Wan)", 1.0, 0, 2, 5.0, 9, 64, 64, 5.0, "comfy")
    prompt, negative = mappings["VIST3APromptTemplate"]().format("a red sports car")
    assert "`a red sports car`" in prompt and prompt.startswith("The camera rotates") and negative


@pytest.mark.parametrize("prefix", ["../../x", "/etc/passwd", "..", "a/../../b", "C:\\evil\\x", "~/x", "we\x00ird*?|<>:\"",
                                    "../../../../../../tmp/escape", "", "....//....//x", "ünï cödé/ scene"])
def test_save_never_leaves_output_folder(mappings, comfy, prefix):
    from nodes.decoding import SplatBatch
    from vist3a import Gaussians

    n = 4
    g = Gaussians(torch.randn(n, 3), torch.rand(n, 3) + 0.1, torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
                  torch.rand(n), torch.rand(n, 1, 3))
    out = mappings["SaveSplatPLY"]().save(SplatBatch([g]), prefix, True)
    root = (Path(comfy.root) / "output").resolve()
    written = [p.resolve() for p in Path(comfy.root).rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(root) for p in written), written
    e, = out["ui"]["vist3a_splats"]
    assert (root / e["subfolder"] / e["filename"]).resolve().is_relative_to(root)
    assert ".." not in e["subfolder"] and not e["subfolder"].startswith("/")


def test_save_formats(mappings, comfy):
    """SaveSplatPLY writes .ply, .spz or both (+ .splat); the previewer is pointed at the first file."""
    from nodes.decoding import SplatBatch
    from vist3a import Gaussians
    from vist3a.io import read_gaussians_ply, read_spz

    n = 6
    g = Gaussians(torch.randn(n, 3), torch.rand(n, 3) + 0.1, torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
                  torch.rand(n), torch.rand(n, 4, 3) - 0.5)
    root = Path(comfy.root) / "output"
    out = mappings["SaveSplatPLY"]().save(SplatBatch([g]), "fmt/a", False, "spz")
    e, = out["ui"]["vist3a_splats"]
    assert e["filename"].endswith(".spz") and "vist3a_untrained" not in out["ui"]
    back = read_spz(root / e["subfolder"] / e["filename"])
    assert back.sh_degree == 1 and (back.means - g.means).abs().max() < 2**-12
    out = mappings["SaveSplatPLY"]().save(SplatBatch([g]), "fmt/b", True, "ply + spz")
    e, = out["ui"]["vist3a_splats"]
    assert e["filename"].endswith(".ply") and len(read_gaussians_ply(root / e["subfolder"] / e["filename"])) == n
    stem = e["filename"][: -len(".ply")]
    assert {p.name for p in (root / e["subfolder"]).iterdir() if p.name.startswith(stem)} == {
        f"{stem}.ply", f"{stem}.spz", f"{stem}.splat"}
    with pytest.raises(ValueError, match="SaveSplatPLY: format must be one of ply, spz, ply \\+ spz"):
        mappings["SaveSplatPLY"]().save(SplatBatch([g]), "fmt/c", False, "obj")


def test_peft_lora_keys_to_comfy_format():
    from nodes.wan_lora import diffusers_to_wan_name, peft_to_comfy
    from vist3a.pipeline.presets import tiny_wan_pipeline

    tr = tiny_wan_pipeline().transformer
    linear = [n for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(diffusers_to_wan_name(n) for n in linear)
    state = {"base_model.model.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
             "base_model.model.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4),
             "base_model.model.blocks.1.ffn.net.0.proj.lora_A.weight": torch.zeros(4, 24),
             "base_model.model.blocks.1.ffn.net.0.proj.lora_B.weight": torch.zeros(32, 4)}
    out = peft_to_comfy(state, 32.0)
    assert set(out) == {"diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                        "diffusion_model.blocks.0.self_attn.q.lora_B.weight", "diffusion_model.blocks.0.self_attn.q.alpha",
                        "diffusion_model.blocks.1.ffn.0.lora_A.weight", "diffusion_model.blocks.1.ffn.0.lora_B.weight",
                        "diffusion_model.blocks.1.ffn.0.alpha"}
    assert float(out["diffusion_model.blocks.0.self_attn.q.alpha"]) == 32.0
    with pytest.raises(ValueError):
        peft_to_comfy({"base_model.model.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(1)}, 1.0)
    with pytest.raises(ValueError):
        diffusers_to_wan_name("blocks.0.unknown")


def test_local_decoder_listing_and_missing_file(mappings, comfy):
    folder = Path(comfy.root) / "models" / "vist3a"
    (folder / "mine").mkdir(parents=True)
    (folder / "mine" / "decoder_config.json").write_text("{}")
    (folder / "x.pth").write_bytes(b"")
    names = mappings["LoadStitchedDecoder"].INPUT_TYPES()["required"]["decoder"][0]
    assert "mine" in names and "x.pth" in names and TINY in names
    with pytest.raises(ValueError, match="LoadStitchedDecoder: .*not in models/vist3a"):
        mappings["LoadStitchedDecoder"]().load("../elsewhere.pth", "auto", "cpu")


def test_interrupt_between_denoising_steps(mappings, comfy):
    comfy.interrupt_after = 2  # the check before sampling and after step 1 pass, the one after step 2 stops
    with pytest.raises(_fake_comfy.InterruptProcessingException):
        mappings["WanVIST3ASampler"]().sample("none (base Wan)", 1.0, 0, 4, 5.0, 9, 64, 64, 5.0, "tiny")
    assert comfy.checks == 3 and comfy.progress[-1] == (1, 4)


def test_interrupt_mid_decoder(mappings, comfy, single_thread):
    dec, = mappings["LoadStitchedDecoder"]().load(TINY, "auto", "cpu")
    comfy.interrupt_after = 3
    with pytest.raises(_fake_comfy.InterruptProcessingException):
        mappings["DecodeToSplats"]().decode(dec, {"samples": torch.randn(1, 16, 3, 8, 8)})
    assert comfy.progress and comfy.progress[-1][0] < comfy.progress[-1][1]
