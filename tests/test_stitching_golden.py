"""The published-checkpoint import + StitchedDecoder reproduce the official VIST3A stitched golden (README section 6).

A published-format ``.pth`` is written with the golden's weight rule over the EXACT structure of
``vist3a_stitched_ckpt_keys.json`` (1075 LoRA entries, stitching layer, tokens; float32 values as the golden was
made), imported onto a crc32-initialised full AnySplat with :func:`load_published_stitched` and run on the golden
latent and frames.

* small config (latent (1, 16, 2, 32, 32), 5 frames, 224x224): ~6 GB RAM, 1-2 minutes of CPU;
* official shape (latent (1, 16, 4, 64, 64), 13 frames, 448x448): ~10-11 GB and 5+ minutes, only with
  ``VIST3A_HEAVY_GOLDEN=1``.
"""

import gc
import json
import logging
import os

import pytest
import torch
from _models_helpers import build_crc32, published_checkpoint, rel_err
from safetensors.torch import load_file

from vist3a.models import AnySplat
from vist3a.stitching import load_published_stitched

TOL = 1e-4
log = logging.getLogger(__name__)


def _run(golden_dir, tmp_path, file_name: str, step: int):
    golden = load_file(str(golden_dir / file_name))
    listing = json.loads((golden_dir / "vist3a_stitched_ckpt_keys.json").read_text())
    path = tmp_path / "anysplat_stitched.pth"
    torch.save(published_checkpoint(listing["structure"]), path)
    gc.collect()
    decoder = load_published_stitched(path, base=build_crc32(AnySplat))
    assert decoder.model.aggregator.patch_embed.patch_embed is None
    assert len(decoder.model.aggregator.patch_embed.blocks) == 22

    latent = golden["input.latent"]
    if "input.feedforward_image" in golden:
        ff = golden["input.feedforward_image"]
    else:
        ff = golden["input.feedforward_image_uint8_codes"].float() / 128 - 1
    frames = ((ff + 1) / 2).permute(0, 2, 1, 3, 4).contiguous()  # (B, T, 3, H, W) in [0, 1]
    del ff
    t = frames.shape[1]
    grid = (frames.shape[-2] // 14, frames.shape[-1] // 14)

    store = {}
    hooks = [decoder.model.aggregator.patch_embed.norm.register_forward_hook(
                 lambda _m, _i, out: store.__setitem__("norm", out[:, :16].clone())),
             decoder.stitching.register_forward_hook(lambda _m, _i, out: store.__setitem__("y", out[:, :64].clone()))]
    with torch.no_grad():
        x = decoder.stitching.resize(latent, grid)
        out = decoder(latent, frames)
    for h in hooks:
        h.remove()
    del decoder
    gc.collect()

    sub = (..., slice(None, None, step), slice(None, None, step))
    res = {
        "debug.stitching_layer_input": x[sub],
        "debug.stitching_layer_output.first64ch": store["y"],
        "debug.stitching_layer_output.first16ch": store["y"][:, :16],
        "debug.patch_embed_norm_out.first16tokens": store["norm"],
        "pose_enc": out["pose_enc"],
        "pose_enc_list": out["pose_enc_list"],
        "pred_context_pose.extrinsic_c2w": out["c2w"],
        "pred_context_pose.intrinsic_normalized": out["intrinsic_normalized"],
        "depth": out["depth"][:, :, ::step, ::step],
        "depth_conf": out["depth_conf"][sub],
        "gs_head.conf": out["gs_conf"][sub],
        "infos.scene_scale": out["scene_scale"].reshape(1),
    }
    idx = golden["gaussians.subset_indices"]
    anchor = out.pop("anchor_feats")
    res["gs_head.anchor_feats.subset"] = anchor[0].permute(0, 2, 3, 1).reshape(-1, anchor.shape[2])[idx]
    g = out["gaussians"][0]
    assert g.means.shape[0] == t * frames.shape[-1] * frames.shape[-2]
    for field in ("means", "scales", "rotations", "harmonics", "opacities", "covariances"):
        v = getattr(g, field)
        d = v.double()
        res.update({f"gaussians.{field}.subset": v[idx], f"gaussians.{field}.mean": d.mean().reshape(1),
                    f"gaussians.{field}.std": d.std().reshape(1), f"gaussians.{field}.channel_mean": d.mean(0),
                    f"gaussians.{field}.channel_std": d.std(0)})
    names = [k for k in golden if not k.startswith("input.") and k != "gaussians.subset_indices"]
    assert set(names) <= set(res), sorted(set(names) - set(res))
    errors = {k: rel_err(res[k], golden[k]) for k in names}
    bad = {k: e for k, e in errors.items() if not e <= TOL}
    assert not bad, bad
    return errors


@pytest.mark.slow
def test_published_import_reproduces_small_stitched_golden(golden_dir, tmp_path):
    errors = _run(golden_dir, tmp_path, "vist3a_stitched_golden.safetensors", step=1)
    worst = max(errors.items(), key=lambda kv: kv[1])
    log.info("stitched (small) worst relative error: %s", worst)
    print("stitched (small) worst relative error:", worst)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VIST3A_HEAVY_GOLDEN") != "1",
                    reason="official-shape stitched golden needs ~10-11 GB and 5+ minutes; set VIST3A_HEAVY_GOLDEN=1")
def test_published_import_reproduces_official_shape_stitched_golden(golden_dir, tmp_path):
    errors = _run(golden_dir, tmp_path, "vist3a_stitched_golden_official.safetensors", step=4)
    worst = max(errors.items(), key=lambda kv: kv[1])
    print("stitched (official shape) worst relative error:", worst)
