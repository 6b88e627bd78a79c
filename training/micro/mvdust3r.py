"""The micro MVDUSt3R: this pack's :class:`vist3a.models.MVDUSt3R` at a small config, trained feed-forward on the
micro world. It is the second 3D model of the micro world (the paper's best text-to-3D rows stitch MVDUSt3R), stitched
into the micro VAE's latent space by ``python -m training.micro stitch-mvdust3r``.

Input: the 9 orbit frames at their stored 64x64 (patch 16: a 4x4 token grid per view, the grid the micro VAE's 8x8
latent gives through a stride-2 stitching conv, so no resize anywhere). Output (path 0, MV-DUSt3R's single
reference): every view's pointmap in the camera frame of view 0 (OpenCV axes), a confidence, and one Gaussian per
pixel (colour from the input image, the released models' ``use_img_rgb``).

Ground truth: :func:`training.micro.model3d.normalise_scene` (first camera = identity, scale = mean distance of all 9
views' surface points from it). The world stores depth at the AnySplat size (56 px); it is resized bilinearly to 64
px here, which blurs depth across object edges by about a pixel (the confidence-weighted loss can discount those
pixels).

Losses per step (one scene):

* pointmap: DUSt3R's confidence-aware regression ``conf * |p / s_p - g / s_g| - 0.2 log conf`` over the 9 views,
  where s_p and s_g are the mean distances of the predicted and true points from the origin (DUSt3R's ``avg_dis``
  normalisation; the prediction's scale is free);
* photometric (after ``render_warmup`` steps, ramped over as many again): the predicted Gaussians (means = the
  normalised points, as :func:`vist3a.models.mvdust3r.mvdust3r_gaussians` builds them at inference) rendered with
  ``vist3a.render`` at the ground-truth cameras of ``render_context`` input views and ``render_targets`` novel
  views, L1 + 0.2 (1 - SSIM) against the frames. MVDUSt3R predicts no cameras; rendering at the true ones trains
  its Gaussians' size, opacity and orientation, and the points where they must be for unseen views.

Frame order: MVDUSt3R's views are unordered; a non-reference view's pointmap must be placed in view 0's frame by
matching content across views. Trained from scratch at this scale it did not learn that: the first micro MVDUSt3R
(3000 steps, no view embeddings) gave all 8 non-reference views nearly the same pointmap (the mean over orbit
positions; the pointmaps of views 1 and 8 differed by 0.06 of the points' mean distance, the ground truth's by 1.09),
and its novel views reached 12.96 dB (report, 60 held-out scenes). As the micro AnySplat has one camera token
entry per frame, the micro MVDUSt3R adds one learnt vector per view position of the ordered 9-frame clip to its
decoder tokens (``MVDUSt3RConfig.view_embeddings = 9``; 0 = the released models). The report measures both
(``view_spread``).

Micro-scale choices (the rest is MVDUSt3R): widths 128 (encoder, 6 blocks) and 128 (decoder, 4 blocks), a 16-channel
skip branch, view embeddings (above), and a Gaussian scale clip of (1e-3, 0.05) mean distances instead of the released (1e-4, 4e-3), sized for
224-px inputs: one 64-px pixel at distance 1 spans 1/61 of it (focal 61.5 px), so the released upper bound would
keep every splat below a third of a pixel. The Gaussian head's scale MLP has no bias and its raw output is clipped
(no gradient outside the clip), so its last layer starts non-negative: every splat begins inside the clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vist3a import Cameras
from vist3a.models import MVDUSt3R, MVDUSt3RConfig

from .model3d import Model3DTrainConfig, normalise_scene, train_scene_model

__all__ = ["MODEL_SIZE", "MVDUSt3RTrainConfig", "ground_truth_points", "micro_mvdust3r", "micro_mvdust3r_config",
           "mvdust3r_losses", "train_mvdust3r"]

logger = logging.getLogger("vist3a.micro")

MODEL_SIZE = 64  # the micro MVDUSt3R's input size: the world's stored frames (patch 16 -> 4x4 tokens)
MICRO_SCALE_CLIP = (1e-3, 0.05)


def micro_mvdust3r_config() -> MVDUSt3RConfig:
    """The micro MV-DUSt3R (one reference path): see the module docstring."""
    return MVDUSt3RConfig(patch_size=16, enc_embed_dim=128, enc_depth=6, enc_num_heads=4, dec_embed_dim=128,
                          dec_depth=4, dec_num_heads=4, n_ref=1, skip_channels=16, sh_degree=0,
                          gs_scale_clip=MICRO_SCALE_CLIP, view_embeddings=9)


def micro_mvdust3r(seed: int = 0) -> MVDUSt3R:
    """A freshly initialised micro MVDUSt3R (scale MLPs start non-negative, module docstring)."""
    torch.manual_seed(seed)
    model = MVDUSt3R(micro_mvdust3r_config())
    with torch.no_grad():
        for head in model.downstream_GS_head:
            last = head.mlp_scale2[-1].weight
            last.copy_(last.abs() * 0.1)
    return model


@dataclass
class MVDUSt3RTrainConfig(Model3DTrainConfig):
    """The micro AnySplat's schedule (:class:`Model3DTrainConfig`) with its own defaults, plus DUSt3R's confidence
    weight ``conf_alpha``."""

    steps: int = 2400
    warmup: int = 200
    render_warmup: int = 300
    conf_alpha: float = 0.2


def ground_truth_points(item: dict, size: int = MODEL_SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """The item's first ``clip_frames`` views as a pointmap in view 0's camera frame, normalised
    (:func:`normalise_scene`). Returns (points (F, size, size, 3), c2w (F + T, 4, 4) normalised, K (3, 3) at
    ``size``)."""
    f = int(item["clip_frames"])
    k = item["K"].clone()
    k[:2] *= size / item["frames"].shape[-1]
    depth = F.interpolate(item["depth"][:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    c2w, depth, _ = normalise_scene(item["c2w"], k, depth, size, f)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    rays = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(k).T       # (s, s, 3), z = 1
    cam = rays[None] * depth[:f, ..., None]
    pts = cam @ c2w[:f, None, :3, :3].transpose(-1, -2) + c2w[:f, None, None, :3, 3]
    return pts, c2w, k


def mvdust3r_losses(model: MVDUSt3R, item: dict, cfg: MVDUSt3RTrainConfig, rng, render_w: float
                    ) -> tuple[Tensor, dict]:
    """The loss of one scene (module docstring) and its parts."""
    from vist3a.models.mvdust3r import mvdust3r_gaussians
    from vist3a.render import render

    from ..metrics import ssim

    f = int(item["clip_frames"])
    frames = item["frames"]                                               # (F + T, 3, 64, 64) in [0, 1]
    s = frames.shape[-1]
    gt, c2w, k = ground_truth_points(item, s)
    out = model(frames[None, :f])
    pts, conf = out["pts3d"][0, 0], out["conf"][0, 0]                     # (F, s, s, 3), (F, s, s)
    s_pred = pts.norm(dim=-1).mean().clamp_min(1e-6)
    s_gt = gt.norm(dim=-1).mean()
    p = pts / s_pred
    err = (p - gt / s_gt).norm(dim=-1)
    loss = (conf * err).mean() - cfg.conf_alpha * torch.log(conf).mean()
    parts = {"points": err.mean().item(), "conf": conf.mean().item()}
    if render_w > 0:
        ctx = rng.sample(range(f), cfg.render_context)
        tgt = [f + i for i in rng.sample(range(frames.shape[0] - f), cfg.render_targets)]
        views = ctx + tgt
        fields = {name: out[name][0, 0] for name in ("rgb", "opacity", "scale", "rotation")}
        fields["pts3d"] = p * s_gt                                        # the true frame's scale
        g = mvdust3r_gaussians(fields, frames[:f].permute(0, 2, 3, 1), scale_clip=model.config.gs_scale_clip)
        cams = Cameras(c2w[views], k.expand(len(views), 3, 3).contiguous(), s, s)
        rgb = render(g, cams, backend="torch").rgb.permute(0, 3, 1, 2)
        target = frames[views]
        l1 = (rgb - target).abs().mean()
        ss = ssim(rgb.clamp(0, 1), target).mean()
        loss = loss + render_w * cfg.render_weight * (l1 + 0.2 * (1 - ss))
        parts.update(render_l1=l1.item(), render_ssim=ss.item())
    return loss, parts


def train_mvdust3r(world: str | Path, out: str | Path, cfg: MVDUSt3RTrainConfig, *, progress: bool = True,
                   stop_after: int | None = None) -> int:
    """Train (or resume) the micro MVDUSt3R into ``out``; export ``out/mvdust3r`` (``save_pretrained``) when done.
    Returns the exit code (0 done or stopped by ``stop_after``, 130 / 143 interrupted)."""
    return train_scene_model(world, out, cfg, micro_mvdust3r(cfg.seed), mvdust3r_losses, tag="mvdust3r",
                             desc="micro MVDUSt3R", export="mvdust3r", progress=progress, stop_after=stop_after)
