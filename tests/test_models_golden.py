"""Numerical proof against the official code (shared/golden, README sections 4, 5 and 9).

The full-size models are built on the meta device, materialised on CPU and filled with the README's crc32 rule.
Metric per stored tensor: max|ours - golden| <= 1e-4 * max|golden| (the track head: 5e-2, README section 9).
Each test needs about 5.5 GB of RAM and half a minute of CPU.
"""

import gc

import pytest
import torch
from _models_helpers import build_crc32, rel_err
from safetensors.torch import load_file

from vist3a.models import VGGT, AnySplat

TOL = 1e-4
TRACK_TOL = 5e-2


def _check(results: dict, golden: dict, tol: float, names) -> dict:
    errors = {k: rel_err(results[k], golden[k]) for k in names}
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errors


def _stats(prefix: str, t: torch.Tensor, idx: torch.Tensor) -> dict:
    d = t.double()
    return {
        f"{prefix}.subset": t[idx],
        f"{prefix}.mean": d.mean().reshape(1),
        f"{prefix}.std": d.std().reshape(1),
        f"{prefix}.channel_mean": d.mean(0),
        f"{prefix}.channel_std": d.std(0),
    }


@pytest.mark.slow
def test_anysplat_matches_official_golden(golden_dir):
    golden = load_file(str(golden_dir / "anysplat_golden.safetensors"))
    model = build_crc32(AnySplat)
    images = golden["input.images"]
    agg_names = [f"agg_blocks_{i + 1}" for i in (4, 11, 17, 23)]
    with torch.no_grad():
        cap = model.capture(images, agg_names, run_heads=True)
    del model
    gc.collect()
    out = cap.pop("outputs")
    res = {f"debug.aggregator_tokens.layer{i}.first16": cap[f"agg_blocks_{i + 1}"]["layers"][i][:, :, :16]
           for i in (4, 11, 17, 23)}
    res.update({
        "pose_enc": out["pose_enc"],
        "pose_enc_list": out["pose_enc_list"],
        "extrinsic_w2c_3x4": out["extrinsic"],
        "intrinsic_pixels": out["intrinsic"],
        "pred_context_pose.extrinsic_c2w": out["c2w"],
        "pred_context_pose.intrinsic_normalized": out["intrinsic_normalized"],
        "depth": out["depth"],
        "depth_conf": out["depth_conf"],
        "gs_head.conf": out["gs_conf"],
        "infos.scene_scale": out["scene_scale"].reshape(1),
    })
    idx = golden["gaussians.subset_indices"]
    anchor = out["anchor_feats"][0].permute(0, 2, 3, 1).reshape(-1, out["anchor_feats"].shape[2])
    assert anchor.shape[0] == 100352
    res["gs_head.anchor_feats.subset"] = anchor[idx]
    g = out["gaussians"][0]
    for field in ("means", "scales", "rotations", "harmonics", "opacities", "covariances"):
        res.update(_stats(f"gaussians.{field}", getattr(g, field), idx))
    names = [k for k in golden if not k.startswith("input.") and k != "gaussians.subset_indices"]
    assert set(names) <= set(res), sorted(set(names) - set(res))
    for k in names:
        assert tuple(res[k].shape) == tuple(golden[k].shape), k
    errors = _check(res, golden, TOL, names)
    print("AnySplat worst relative error:", max(errors.items(), key=lambda kv: kv[1]))


@pytest.mark.slow
def test_vggt_matches_official_golden(golden_dir):
    golden = load_file(str(golden_dir / "vggt_golden.safetensors"))
    model = build_crc32(VGGT)
    with torch.no_grad():
        out = model(golden["input.images"], query_points=golden["input.query_points"])
    del model
    gc.collect()
    main = ["pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"]
    for k in main + ["track", "vis", "conf"]:
        assert tuple(out[k].shape) == tuple(golden[k].shape), k
    errors = _check(out, golden, TOL, main)
    errors.update(_check(out, golden, TRACK_TOL, ["track", "vis", "conf"]))
    # frame 0 of the track is the query itself
    torch.testing.assert_close(out["track"][:, 0], golden["input.query_points"])
    print("VGGT relative errors:", errors)
