"""Stitched MVDUSt3R: the paper's layer geometry, and search -> finetune -> our decoder format -> CLI and ComfyUI
nodes end to end on tiny random models (splats and pointmaps)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from vist3a.models import MVDUSt3R, MVDUSt3RConfig
from vist3a.stitching import StitchedDecoder, StitchingLayer

PAPER = "conv3d_k5x7x7_o1024_s1x3x3_p2x0x0"


def test_paper_layer_geometry_384_to_224():
    """Paper appendix B.1: 384 px video (latent 48) -> (48 - 7) // 3 + 1 = 14 tokens = a 224 px image at patch 16;
    the latent is fed as it is (no resize), the released AnySplat layer keeps its sizes."""
    layer = StitchingLayer(PAPER, device="meta")
    assert layer.input_size(4, (14, 14), (48, 48)) == (13, 48, 48)
    assert layer.output_size(4, (14, 14), (48, 48)) == (13, 14, 14)
    assert layer.natural_grid((48, 48)) == (14, 14)
    released = StitchingLayer("conv3d_k5x3x3_o1024_s1x2x2_p2x1x1", device="meta")
    assert released.input_size(4, (32, 32), (64, 64)) == (13, 64, 64)
    with torch.device("meta"):
        dec = StitchedDecoder(MVDUSt3R(MVDUSt3RConfig.plus()), "enc_blocks_6", StitchingLayer(PAPER))
    assert dec.kind == "mvdust3r" and dec.outputs == ("splats", "pointmap")
    assert dec.model_size_for((384, 384)) == (224, 224) and dec.token_grid((48, 48)) == (14, 14)
    assert dec.model.first_block == 6 and len(dec.model.enc_blocks) == 18 and dec.model.patch_embed is None
    keys = dec.state_dict()
    assert "model.enc_blocks.17.attn.qkv.weight" in keys and "model.enc_blocks.18.attn.qkv.weight" not in keys
    assert tuple(keys["stitching.weight"].shape) == (1024, 16, 5, 7, 7)
    with pytest.raises(ValueError, match="_o1024"):
        StitchedDecoder(MVDUSt3R(MVDUSt3RConfig.tiny()), "enc_blocks_1", StitchingLayer(PAPER, device="meta"))


def test_stitched_forward_equals_model_from_cut(single_thread):
    """The stitched decoder = the 3D model run from enc_blocks_k on the stitching features (mid-grey frames)."""
    torch.manual_seed(0)
    full = MVDUSt3R(MVDUSt3RConfig.tiny(4)).eval()
    base = MVDUSt3R(MVDUSt3RConfig.tiny(4)).eval()
    base.load_state_dict(full.state_dict())
    dec = StitchedDecoder(base, "enc_blocks_1", StitchingLayer("conv3d_k5x7x7_o64_s1x3x3_p2x0x0")).eval()
    latent = torch.randn(1, 16, 2, 16, 16)
    with torch.no_grad():
        out = dec(latent)
        tokens = dec.features(latent, (4, 4))
        ref = full.forward_from("enc_blocks_1", tokens, torch.full((1, 5, 3, 64, 64), 0.5))
    for k in ("pts3d", "conf", "scale", "rotation", "opacity"):
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    assert out["pts3d"].shape == (1, 4, 5, 64, 64, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """find_stitching_layer -> train_stitched_decoder (--model mvdust3r, tiny) -> exported decoder folder."""
    from training import find_stitching_layer as fsl
    from training import train_stitched_decoder as tsd

    root = tmp_path_factory.mktemp("mvd")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert fsl.main(["--tiny", "--model", "mvdust3r", "--synthetic", "--samples", "2", "--heldout", "1",
                         "--views", "5", "--out", str(root / "search"), "--quiet"]) == 0
        assert tsd.main(["--preset", "tiny", "--model", "mvdust3r", "--synthetic", "2", "--views", "5", "--steps",
                         "2", "--warmup", "1", "--save-every", "2", "--init-stitching", str(root / "search"),
                         "--output", str(root / "train"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def test_search_and_finetune_export_a_decoder(trained, single_thread):
    from safetensors.torch import load_file

    from vist3a.stitching import load_decoder

    ranking = json.loads((trained / "search" / "ranking.json").read_text())
    assert ranking["config"] == "conv3d_k5x7x7_o64_s1x3x3_p2x0x0"
    assert {r["layer"] for r in ranking["ranking"]} == {"enc_blocks_1", "enc_blocks_2"}
    best = ranking["ranking"][0]["layer"]
    folder = trained / "train" / "decoder"
    cfg = json.loads((folder / "decoder_config.json").read_text())
    assert cfg["base_model"]["type"] == "mvdust3r" and cfg["cut"] == best
    assert cfg["outputs"] == ["splats", "pointmap"] and cfg["resolution"]["model"] == 64
    dec = load_decoder(folder)
    assert dec.kind == "mvdust3r" and dec.model.config.n_ref == 4
    init = load_file(str(trained / "search" / f"stitching_layer_{best}.safetensors"))["weight"]
    assert not torch.equal(dec.stitching.weight, init)  # finetuning moved the searched layer
    metrics = [json.loads(line) for line in (trained / "train" / "metrics.jsonl").read_text().splitlines()]
    assert {"pts3d", "scale", "rotation"} <= set(metrics[-1])
    pred = dec.predict(torch.randn(1, 16, 2, 16, 16), torch.rand(1, 5, 3, 64, 64))
    assert len(pred.gaussians[0]) == 5 * 64 * 64 and pred.pointmaps[0].points.shape == (5, 64, 64, 3)
    assert len(pred.cameras[0]) == 5 and torch.equal(pred.cameras[0].c2w[0], torch.eye(4))


def test_cli_reconstructs_splats_and_pointmap(trained, tmp_path, monkeypatch, single_thread):
    from vist3a.cli import main
    from vist3a.io import load_gaussians, read_point_cloud_ply

    clip = tmp_path / "clip"
    clip.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(5):
        Image.fromarray((torch.rand(128, 128, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
            clip / f"{i:03d}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", "clip", "--preset", "tiny", "--decoder", str(trained / "train" / "decoder"),
                 "--frames", "5", "--size", "128", "-o", "scene.ply", "--pointmap", "points.ply"]) == 0
    assert len(load_gaussians(tmp_path / "scene.ply")) == 5 * 64 * 64
    assert len(read_point_cloud_ply(tmp_path / "points.ply")) == 5 * 64 * 64


def test_nodes_load_and_decode_both_outputs(trained, tmp_path, single_thread):
    import _fake_comfy

    _fake_comfy.install(tmp_path)
    try:
        from nodes.decoding import (
            TINY_MVDUST3R,
            DecodeToPointmap,
            DecodeToSplats,
            LoadStitchedDecoder,
        )

        shutil.copytree(trained / "train" / "decoder", tmp_path / "models" / "vist3a" / "mvd_finetune")
        names = LoadStitchedDecoder.INPUT_TYPES()["required"]["decoder"][0]
        assert "mvd_finetune" in names and TINY_MVDUST3R in names
        handle, = LoadStitchedDecoder().load("mvd_finetune", "auto", "cpu")
        latent = {"samples": torch.randn(1, 16, 2, 16, 16)}
        _splats, cameras, frames = DecodeToSplats().decode(handle, latent)  # no VAE: grey splats
        assert len(cameras[0]) == 5 and frames.shape == (5, 128, 128, 3)
        points, _cams, depth = DecodeToPointmap().decode(handle, latent, 0.0, 0.0)
        assert len(points.clouds[0]) == 5 * 64 * 64 and depth.shape == (5, 64, 64, 3)
        tiny, = LoadStitchedDecoder().load(TINY_MVDUST3R, "auto", "cpu")  # with its bundled tiny VAE
        small = {"samples": torch.randn(1, 16, 2, 8, 8)}
        _s, cams, _f = DecodeToSplats().decode(tiny, small)
        assert len(cams[0]) == 5
    finally:
        _fake_comfy.uninstall()


def test_cameras_from_pointmap_recovers_known_cameras():
    """Points seen by known cameras (shared focal) in the frame of camera 0 -> the same K and poses."""
    import math

    from vist3a.models.geometry import cameras_from_pointmap

    h, w, f = 24, 32, 30.0
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    g = torch.Generator().manual_seed(0)
    pts, c2ws = [], []
    for i in range(3):
        a = 0.25 * i
        rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        t = torch.tensor([0.3 * i, -0.1 * i, 0.05 * i])
        d = 2 + torch.rand(h, w, generator=g)
        cam = torch.stack([(u - w / 2) / f * d, (v - h / 2) / f * d, d], -1)
        pts.append(cam @ rot.T + t)
        c2w = torch.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rot, t
        c2ws.append(c2w)
    c2w, k, depth = cameras_from_pointmap(torch.stack(pts), torch.ones(3, h, w))
    torch.testing.assert_close(k[0], torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c2w, torch.stack(c2ws), rtol=1e-4, atol=1e-4)
    assert float(depth.min()) >= 2 - 1e-4 and float(depth.max()) <= 3 + 1e-4


def test_cameras_from_pointmap_survives_outliers_and_a_planar_confident_set():
    """What a network's pointmap looks like: most points right, 10 % thrown anywhere (some near z = 0), and the most
    confident pixels all on one plane (the ground). The focal and the poses still come back (the linear fit alone
    was 30-100 px off on the micro MVDUSt3R's pointmaps)."""
    import math

    from vist3a.models.geometry import cameras_from_pointmap

    h, w, f = 32, 32, 30.0
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    g = torch.Generator().manual_seed(1)
    pts, c2ws, confs = [], [], []
    for i in range(4):
        a = 0.15 * i
        rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        t = torch.tensor([0.4 * i, -0.05 * i, 0.1 * i])
        d = 2 + torch.rand(h, w, generator=g)
        d[h // 2:] = 2.0  # lower half: a plane at depth 2, the most confident pixels below
        cam = torch.stack([(u - w / 2) / f * d, (v - h / 2) / f * d, d], -1)
        world = cam @ rot.T + t
        bad = torch.rand(h, w, generator=g) < 0.1
        junk = torch.randn(h, w, 3, generator=g) * 3
        junk[..., 2] = junk[..., 2].abs() * 0.01  # some near z = 0
        pts.append(torch.where(bad[..., None], junk, world))
        conf = torch.ones(h, w)
        conf[h // 2:] = 5.0
        confs.append(conf)
        c2w = torch.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rot, t
        c2ws.append(c2w)
    c2w, k, _ = cameras_from_pointmap(torch.stack(pts), torch.stack(confs), samples=512)
    assert abs(float(k[0, 0, 0]) - f) < 0.3
    torch.testing.assert_close(c2w, torch.stack(c2ws), rtol=0, atol=2e-2)


def test_gaussian_conventions():
    """Means = pts3d, wxyz rotations, sigmoid opacities, scales clipped to [1e-4, 4e-3] x mean distance, colours
    from the images when given (SH DC), else the head's raw rgb."""
    from vist3a.models import mvdust3r_gaussians
    from vist3a.sh import SH_C0

    torch.manual_seed(0)
    v, h, w = 2, 4, 4
    pts = torch.randn(v, h, w, 3) + torch.tensor([0, 0, 5.0])
    fields = {"pts3d": pts, "scale": torch.randn(v, h, w, 3) * 0.05, "rotation": F_normalize(torch.randn(v, h, w, 4)),
              "opacity": torch.rand(v, h, w), "rgb": torch.randn(v, h, w, 3), "conf": torch.ones(v, h, w)}
    colors = torch.rand(v, h, w, 3)
    g = mvdust3r_gaussians(fields, colors)
    s = pts.reshape(-1, 3).norm(dim=-1).mean()
    assert torch.equal(g.means, pts.reshape(-1, 3))
    torch.testing.assert_close(g.rotations, fields["rotation"].reshape(-1, 4))
    assert float(g.scales.min()) >= 1e-4 * s * (1 - 1e-6) and float(g.scales.max()) <= 4e-3 * s * (1 + 1e-6)
    torch.testing.assert_close(g.sh[:, 0] * SH_C0 + 0.5, colors.reshape(-1, 3))
    torch.testing.assert_close(mvdust3r_gaussians(fields).sh[:, 0], fields["rgb"].reshape(-1, 3))


def F_normalize(x):  # mirrors torch.nn.functional.normalize
    return x / x.norm(dim=-1, keepdim=True)


def test_view_embeddings_are_an_opt_in_micro_option():
    """``view_embeddings`` (the micro model's per-view-position vectors) is absent from the released layout, changes
    what each view's tokens see when set, survives save / load, and refuses clips longer than it covers."""
    import tempfile

    from vist3a.models import MVDUSt3R, MVDUSt3RConfig, from_pretrained
    from vist3a.models.loading import save_pretrained

    assert "view_embed" not in MVDUSt3R(MVDUSt3RConfig.tiny()).state_dict()
    torch.manual_seed(0)
    model = MVDUSt3R(MVDUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=2,
                                    dec_num_heads=4, skip_channels=16, view_embeddings=3)).eval()
    assert model.state_dict()["view_embed"].shape == (3, 48)
    images = torch.rand(1, 1, 3, 32, 32).expand(1, 3, 3, 32, 32).contiguous()  # three identical views
    with torch.no_grad():
        pts = model(images)["pts3d"][0, 0]
        assert (pts[1] - pts[2]).abs().max() > 1e-4  # same image, other position: other points
        with tempfile.TemporaryDirectory() as d:
            save_pretrained(model, d)
            again = from_pretrained(d)
            assert again.config.view_embeddings == 3
            torch.testing.assert_close(again(images)["pts3d"][0, 0], pts)
        with pytest.raises(ValueError, match="view embeddings for 3 views"):
            model(torch.rand(1, 4, 3, 32, 32))


def test_cameras_from_pointmap_runs_under_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode(): the pose refinement needs gradients all the same."""
    from vist3a.models.geometry import cameras_from_pointmap

    h, w, f = 16, 16, 20.0
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d = 2 + torch.rand(h, w, generator=torch.Generator().manual_seed(0))
    cam = torch.stack([(u - w / 2) / f * d, (v - h / 2) / f * d, d], -1)
    pts = torch.stack([cam, cam + torch.tensor([0.2, 0.0, 0.0])])  # view 1: camera moved by -0.2 in x
    with torch.inference_mode():
        c2w, k, _ = cameras_from_pointmap(pts, torch.ones(2, h, w))
    assert abs(float(k[0, 0, 0]) - f) < 1e-3
    torch.testing.assert_close(c2w[1, :3, 3], torch.tensor([0.2, 0.0, 0.0]), atol=1e-3, rtol=0)


def test_tiny_model_builds_each_kind_and_refuses_others():
    from vist3a.models import VGGT, AnySplat, tiny_model

    assert isinstance(tiny_model("anysplat"), AnySplat) and isinstance(tiny_model("vggt"), VGGT)
    mvd = tiny_model("mvdust3r", seed=3)
    assert isinstance(mvd, MVDUSt3R) and mvd.config.n_ref == 4
    torch.testing.assert_close(mvd.state_dict()["enc_norm.weight"], tiny_model("mvdust3r", seed=3).state_dict()[
        "enc_norm.weight"])
    assert not torch.equal(mvd.state_dict()["decoder_embed.weight"],
                           tiny_model("mvdust3r", seed=4).state_dict()["decoder_embed.weight"])
    with pytest.raises(ValueError, match="unknown 3D model 'dust3r'"):
        tiny_model("dust3r")
