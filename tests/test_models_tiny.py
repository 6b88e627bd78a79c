"""Tiny-config checks of the AnySplat / VGGT implementations: shapes, dtypes, containers, cut points, pieces."""

import math

import pytest
import torch
import torch.nn.functional as F
from _models_helpers import build_crc32

from vist3a import Cameras, Gaussians, Pointmap
from vist3a.models import VGGT, AnySplat, AnySplatConfig, VGGTConfig, voxel_fuse
from vist3a.models.dinov2 import DinoVisionTransformer
from vist3a.cameras import invert_rigid, vggt_pose_encoding_to_extrinsics
from vist3a.models.anysplat import ANYSPLAT_FOCAL_EPS
from vist3a.models.geometry import unproject_depth
from vist3a.models.heads.dpt import ResidualConvUnit
from vist3a.models.rope import RotaryEmbedding2D, grid_positions

H, W = 28, 42  # non-square, not the stored 4x4 position grid: exercises the interpolation


@pytest.fixture(scope="module")
def anysplat():
    return build_crc32(AnySplat, AnySplatConfig.tiny())


@pytest.fixture(scope="module")
def vggt():
    return build_crc32(VGGT, VGGTConfig.tiny())


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 3, H, W, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- AnySplat
def test_anysplat_forward_shapes(anysplat, images):
    cfg = anysplat.config
    b, v = images.shape[:2]
    with torch.no_grad():
        out = anysplat(images)
    assert out["pose_enc"].shape == (b, v, 9)
    assert out["pose_enc_list"].shape == (cfg.camera_iterations, b, v, 9)
    assert out["extrinsic"].shape == (b, v, 3, 4) and out["intrinsic"].shape == (b, v, 3, 3)
    assert out["c2w"].shape == (b, v, 4, 4) and out["intrinsic_normalized"].shape == (b, v, 3, 3)
    assert out["depth"].shape == (b, v, H, W, 1) and out["depth_conf"].shape == (b, v, H, W)
    assert out["world_points"].shape == (b, v, H, W, 3)
    assert out["anchor_feats"].shape == (b, v, cfg.raw_gs_dim, H, W) and out["gs_conf"].shape == (b, v, H, W)
    assert (out["depth"] > 0).all() and (out["depth_conf"] >= 1).all()
    k = (cfg.sh_degree + 1) ** 2
    assert len(out["gaussians"]) == b
    for i, g in enumerate(out["gaussians"]):
        n = v * H * W
        assert g.means.shape == (n, 3) and g.harmonics.shape == (n, 3, k) and g.covariances.shape == (n, 3, 3)
        # one Gaussian per pixel, flat index v*H*W + y*W + x
        torch.testing.assert_close(g.means, out["world_points"][i].reshape(-1, 3))
        torch.testing.assert_close(g.opacities, out["anchor_feats"][i, :, 0].reshape(-1).sigmoid(), atol=1e-6,
                                   rtol=0)
    torch.testing.assert_close(out["c2w"], invert_rigid(out["extrinsic"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["intrinsic_normalized"][..., 0, 2], torch.full((b, v), 0.5))


def test_anysplat_predict_containers(anysplat, images):
    pred = anysplat.predict(images)
    raw = pred.raw
    assert len(pred.gaussians) == len(pred.cameras) == images.shape[0]
    g, ref = pred.gaussians[0], raw["gaussians"][0]
    assert isinstance(g, Gaussians) and isinstance(pred.cameras[0], Cameras)
    Gaussians(g.means, g.scales, g.rotations, g.opacities, g.sh)  # passes full validation
    torch.testing.assert_close(g.rotations, ref.rotations[:, [3, 0, 1, 2]])  # xyzw -> wxyz
    torch.testing.assert_close(g.sh, ref.harmonics.transpose(1, 2))  # (N, 3, K) -> (N, K, 3)
    cams = pred.cameras[1]
    assert (cams.width, cams.height) == (W, H)
    torch.testing.assert_close(cams.c2w, raw["c2w"][1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cams.normalized_K, raw["intrinsic_normalized"][1])
    assert pred.depth.shape == (2, 3, H, W) and pred.depth_conf.shape == (2, 3, H, W)


def test_anysplat_geometry_conventions():
    # A camera at the origin looking along +z: unprojection of depth d at the principal point is (0, 0, d).
    pose = torch.zeros(1, 1, 9)
    pose[..., 6] = 1.0  # identity quaternion (xyzw)
    pose[..., 7:] = 1.0  # fov 1 rad
    extr, intr = vggt_pose_encoding_to_extrinsics(pose, 4, 6, eps=ANYSPLAT_FOCAL_EPS)
    torch.testing.assert_close(extr[0, 0], torch.eye(3, 4))
    assert intr[0, 0, 0, 0] == pytest.approx(3 / (torch.tan(torch.tensor(0.5)).item() + 1e-3))
    depth = torch.full((1, 1, 4, 6, 1), 2.0)
    pts = unproject_depth(depth, extr, intr)
    torch.testing.assert_close(pts[0, 0, 2, 3], torch.tensor([0.0, 0.0, 2.0]))


def test_anysplat_dtypes_run(images):
    for dtype in (torch.bfloat16, torch.float16):
        model = build_crc32(AnySplat, AnySplatConfig.tiny()).to(dtype)
        with torch.no_grad():
            out = model(images[:1])
        assert out["depth"].dtype == dtype
        g = out["gaussians"][0]
        assert g.means.dtype == torch.float32 and torch.isfinite(g.means).all()
    # the official mixed setting: aggregator in bf16, heads in float32
    model = build_crc32(AnySplat, AnySplatConfig.tiny())
    model.encoder.aggregator.to(torch.bfloat16)
    with torch.no_grad():
        out = model(images[:1])
    assert out["depth"].dtype == torch.float32 and torch.isfinite(out["depth"]).all()


def test_anysplat_rejects_bad_sizes(anysplat):
    with pytest.raises(ValueError, match="multiples of 14"):
        anysplat(torch.rand(1, 2, 3, 30, 42))
    with pytest.raises(ValueError, match=r"\(B, V, 3, H, W\)"):
        anysplat(torch.rand(2, 3, 28, 28))


def test_voxel_fuse_weights_by_confidence_softmax():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0004, 0.0, 0.0], [1.0, 1.0, 1.0]])
    feats = torch.tensor([[1.0], [3.0], [5.0]])
    conf = torch.tensor([0.0, 1.0, 2.0])
    vp, vf = voxel_fuse(pts, feats, conf, voxel_size=0.001)
    w = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    order = vp[:, 0].argsort()
    vp, vf = vp[order], vf[order]
    torch.testing.assert_close(vf[0, 0], (w[0] * 1 + w[1] * 3) / (1 + 1e-6), rtol=1e-5, atol=0)
    torch.testing.assert_close(vp[1], torch.tensor([1.0, 1.0, 1.0]) / (1 + 1e-6))


def test_anysplat_voxelize_reduces_gaussians(images):
    cfg = AnySplatConfig.tiny()
    cfg.voxelize, cfg.voxel_size = True, 0.05
    model = build_crc32(AnySplat, cfg)
    with torch.no_grad():
        out = model(images[:1])
    n = out["gaussians"][0].means.shape[0]
    assert 0 < n < images.shape[1] * H * W


# ---------------------------------------------------------------------- VGGT
def test_vggt_forward_and_track_shapes(vggt, images):
    q = torch.tensor([[[3.0, 4.0], [10.0, 20.0], [40.5, 1.25]]]).expand(2, -1, -1)
    with torch.no_grad():
        out = vggt(images, query_points=q)
    b, s = images.shape[:2]
    assert out["pose_enc"].shape == (b, s, 9)
    assert out["depth"].shape == (b, s, H, W, 1) and out["depth_conf"].shape == (b, s, H, W)
    assert out["world_points"].shape == (b, s, H, W, 3) and out["world_points_conf"].shape == (b, s, H, W)
    assert out["track"].shape == (b, s, 3, 2) and out["vis"].shape == (b, s, 3) and out["conf"].shape == (b, s, 3)
    torch.testing.assert_close(out["track"][:, 0], q)
    assert ((out["vis"] >= 0) & (out["vis"] <= 1)).all()
    with torch.no_grad():
        single = vggt(images[0])  # (S, 3, H, W) accepted
    torch.testing.assert_close(single["depth"], out["depth"][:1])


def test_vggt_predict_pointmaps(vggt, images):
    for mode in ("depth", "head"):
        pred = vggt.predict(images, points_from=mode)
        pm = pred.pointmaps[0]
        assert isinstance(pm, Pointmap) and pm.points.shape == (3, H, W, 3)
        assert pm.cameras is not None and len(pm.cameras) == 3
        torch.testing.assert_close(pm.colors, images[0].permute(0, 2, 3, 1))
    with pytest.raises(ValueError):
        vggt.predict(images, points_from="nope")


def test_vggt_dtypes_run(images):
    q = torch.tensor([[[3.0, 4.0]]])
    for dtype in (torch.bfloat16, torch.float16):
        model = build_crc32(VGGT, VGGTConfig.tiny()).to(dtype)
        with torch.no_grad():
            out = model(images[:1], query_points=q)
        assert all(torch.isfinite(out[k].float()).all() for k in ("pose_enc", "depth", "world_points", "track"))


# ---------------------------------------------------------------------- cut points
@pytest.mark.parametrize("name", ["enc_blocks_1", "enc_blocks_3", "agg_blocks_1", "agg_blocks_2", "agg_blocks_4"])
def test_cut_point_round_trip_anysplat(anysplat, images, name):
    with torch.no_grad():
        full = anysplat(images)
        act = anysplat.capture(images, [name])[name]
        out = anysplat.forward_from(name, act, images)
    for k in ("pose_enc", "depth", "depth_conf", "anchor_feats", "c2w"):
        torch.testing.assert_close(out[k], full[k], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["gaussians"][0].means, full["gaussians"][0].means, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["enc_blocks_2", "agg_blocks_3"])
def test_cut_point_round_trip_vggt(vggt, images, name):
    with torch.no_grad():
        full = vggt(images)
        act = vggt.capture(images, [name])[name]
        out = vggt.forward_from(name, act, images)
    for k in ("pose_enc", "depth", "world_points"):
        torch.testing.assert_close(out[k], full[k], rtol=1e-5, atol=1e-5)


def test_capture_many_layers_one_forward_and_stops_early(anysplat, images):
    names = anysplat.cut_points()
    assert names[0] == "enc_blocks_1" and names[2] == "enc_blocks_3" and names[-1] == "agg_blocks_4"
    calls = []
    handle = anysplat.encoder.camera_head.register_forward_hook(lambda *a: calls.append(1))
    embeds = []
    handle2 = anysplat.encoder.aggregator.patch_embed.patch_embed.register_forward_hook(lambda *a: embeds.append(1))
    try:
        with torch.no_grad():
            acts = anysplat.capture(images, ["enc_blocks_1", "enc_blocks_2", "agg_blocks_2"])
    finally:
        handle.remove()
        handle2.remove()
    assert len(embeds) == 1 and not calls  # one pass, heads skipped
    n_tok = 1 + 4 + (H // 14) * (W // 14)
    assert acts["enc_blocks_1"].shape == (6, n_tok, 64)
    assert acts["agg_blocks_2"]["tokens"].shape == (6, 5 + (H // 14) * (W // 14), 64)
    assert sorted(acts["agg_blocks_2"]["layers"]) == [0, 1]
    with pytest.raises(ValueError, match="unknown cut point"):
        anysplat.capture(images, ["enc_blocks_9"])


def test_forward_from_patch_features_adds_fresh_prefix(anysplat, images):
    # Stitched-decoder path: patch-only features get cls + interpolated position embedding + registers.
    dino = anysplat.aggregator.patch_embed
    feats = torch.randn(6, (H // 14) * (W // 14), 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = anysplat.forward_from("enc_blocks_2", feats, images)
        b = anysplat.forward_from("enc_blocks_2", dino.add_prefix(feats, H // 14, W // 14), images)
    torch.testing.assert_close(a["depth"], b["depth"])
    with pytest.raises(ValueError, match="tokens"):
        anysplat.forward_from("enc_blocks_2", feats[:, :3], images)


def test_forward_from_agg_requires_earlier_layers(anysplat, images):
    with torch.no_grad():
        act = anysplat.capture(images, ["agg_blocks_3"])["agg_blocks_3"]
    act = {"tokens": act["tokens"], "layers": {}}
    with pytest.raises(ValueError, match="earlier layer outputs"):
        anysplat.forward_from("agg_blocks_3", act, images)


# ---------------------------------------------------------------------- pieces
def test_position_embedding_interpolation_is_bicubic_antialias():
    dino = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=8, depth=1, num_heads=2)
    torch.nn.init.normal_(dino.pos_embed)
    assert dino.position_embedding(4, 4, torch.float32) is not None
    torch.testing.assert_close(dino.position_embedding(4, 4, torch.float32), dino.pos_embed.detach())
    pe = dino.position_embedding(2, 3, torch.float32)
    grid = dino.pos_embed[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(2, 3), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 6, 8)
    torch.testing.assert_close(pe[:, 1:], ref)
    torch.testing.assert_close(pe[:, :1], dino.pos_embed[:, :1])


def test_rope_positions_and_rotation():
    pos = grid_positions(1, 2, 3, num_special=5)
    assert pos.shape == (1, 11, 2)
    assert pos[0, :5].abs().sum() == 0
    assert pos[0, 5:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    rope = RotaryEmbedding2D(100.0)
    x = torch.randn(1, 2, 11, 16)
    y = rope(x, pos)
    torch.testing.assert_close(y[:, :, :5], x[:, :, :5])  # position (0, 0): no rotation
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # rotations keep norms
    # first half rotates with y only: two tokens in the same row share the rotation of the first half
    x2 = x.clone()
    x2[:, :, 6] = x2[:, :, 5]
    y2 = rope(x2, pos)
    torch.testing.assert_close(y2[:, :, 6, :8], y2[:, :, 5, :8])


def test_residual_conv_unit_skip_carries_relu():
    rcu = ResidualConvUnit(2)
    torch.nn.init.zeros_(rcu.conv2.weight)
    torch.nn.init.zeros_(rcu.conv2.bias)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(rcu(x), F.relu(x))  # the official in-place ReLU makes the skip relu(x)


def test_gradient_checkpointing_matches_plain_backward(images):
    def grads(flag):
        model = build_crc32(AnySplat, AnySplatConfig.tiny()).train()
        model.aggregator.set_gradient_checkpointing(flag)
        out = model(images[:1])
        (out["depth"].mean() + out["pose_enc"].square().mean() + out["anchor_feats"].mean()).backward()
        return model.aggregator.patch_embed.blocks[0].attn.qkv.weight.grad.clone()

    torch.testing.assert_close(grads(True), grads(False), rtol=1e-4, atol=1e-7)


def test_forward_from_casts_features_to_the_aggregator_dtype(images):
    model = build_crc32(AnySplat, AnySplatConfig.tiny())
    model.encoder.aggregator.to(torch.bfloat16)  # official mixed precision: bf16 aggregator, fp32 heads
    feats = torch.randn(3, (H // 14) * (W // 14), 64)
    with torch.no_grad():
        out = model.forward_from("enc_blocks_1", feats, images[:1])
    assert out["depth"].dtype == torch.float32 and torch.isfinite(out["depth"]).all()


def _voxel_fuse_brute_force(points, feats, conf, voxel_size):
    """Independent reference: Python loops in float64; voxel = round-half-even(p / size) (Python's round, as
    torch.round), voxels in lexicographic order, softmax weights with the official + 1e-6."""
    groups = {}
    for i, p in enumerate(points.tolist()):
        groups.setdefault(tuple(int(round(c / voxel_size)) for c in p), []).append(i)
    out_p, out_f = [], []
    for key in sorted(groups):
        idx = groups[key]
        c = [float(conf[i]) for i in idx]
        m = max(c)
        e = [math.exp(x - m) for x in c]
        s = sum(e) + 1e-6
        w = [x / s for x in e]
        out_p.append([sum(w[j] * float(points[i, d]) for j, i in enumerate(idx)) for d in range(3)])
        out_f.append([sum(w[j] * float(feats[i, d]) for j, i in enumerate(idx)) for d in range(feats.shape[1])])
    return torch.tensor(out_p, dtype=torch.float64), torch.tensor(out_f, dtype=torch.float64)


def test_voxel_fuse_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    size = 0.25
    # many collisions (points on a coarse lattice + jitter) and exact half-voxel ties (round half to even)
    lattice = torch.randint(-3, 4, (300, 3), generator=g).double() * size * 0.5
    pts = torch.cat([lattice + 0.01 * torch.randn(300, 3, generator=g, dtype=torch.float64),
                     torch.tensor([[0.5, 1.5, -2.5], [2.5, -0.5, 0.0]], dtype=torch.float64) * size])
    feats = torch.randn(pts.shape[0], 5, generator=g, dtype=torch.float64)
    conf = 3 * torch.randn(pts.shape[0], generator=g, dtype=torch.float64)
    vp, vf = voxel_fuse(pts, feats, conf, size)
    rp, rf = _voxel_fuse_brute_force(pts, feats, conf, size)
    assert vp.shape == rp.shape and 10 < vp.shape[0] < pts.shape[0]
    torch.testing.assert_close(vp, rp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vf, rf, rtol=1e-12, atol=1e-12)
