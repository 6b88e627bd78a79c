"""The micro 3D model: this pack's :class:`vist3a.models.AnySplat` at a small config, trained feed-forward on the
micro world. It plays the part of the pretrained 3D foundation model that VIST3A stitches.

Input: the 9 orbit frames at 56x56 (the 64-px renders resized, as every stitched path feeds a 3D model). Output:
cameras, depth and one Gaussian per pixel, in AnySplat's normalised frame: the first camera is the world origin
and the scene is scaled so that the mean distance of the ground-truth surface points (all 9 views) from it is 1
(:func:`normalise_scene`, VGGT's convention). Everything the model predicts lives in that frame.

Losses per step (one scene, 9 views):

* camera: L1 between the predicted pose encodings (every refinement iteration, weight 0.8^(last - i)) and the
  ground truth ``absT_quaR_FoV``;
* depth: VGGT's aleatoric form ``conf * |d - d*| - 0.2 log conf`` plus an L1 on the image gradients of depth;
* photometric: the predicted Gaussians (the model's own means, i.e. its own depth and cameras) rendered with
  ``vist3a.render`` at the ground-truth cameras of ``render_context`` random context views and ``render_targets``
  novel target views (one of each by default: rendering dominates a step's cost on a CPU), L1 + 0.2 (1 - SSIM) against the frames. It starts after ``render_warmup`` steps (ramped over
  as many again): at random init the predicted cameras scatter the means and rendering would be slow and useless.

Frame order: AnySplat gives its aggregator two learnt camera / register tokens, one for the reference frame and one
for all others, so relative poses must be found by matching content across views. At this scale and CPU budget
that does not happen: trained from scratch, the camera head settled on the mean pose of the clip for every frame
(28 degrees of rotation error after 1000 camera-only steps, the error of the mean) while depth was learnt within
a few hundred steps. The micro AnySplat therefore has one token entry per frame position of the ordered 9-frame
clip (``AggregatorConfig.frame_tokens = 9``; 8 degrees after 250 steps), which tells it where each frame sits in the
orbit; everything else is AnySplat. ``python -m training.micro ablate-cameras`` measures both.

Initialisation: AnySplat's Gaussian adapter maps a raw channel x to a scale 0.001 softplus(x), sized for 448-px
inputs; at 56 px one pixel at depth 1 spans about 1/54, so the scale and density output biases start at
softplus^-1(8) and +2 (Gaussians about half a pixel wide at depth 1, opacity 0.88) instead of near 0. Small
splats keep the rasteriser cheap early on (near-camera ground pixels sit at depth ~0.3); the scales are learnt.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from vist3a import Cameras
from vist3a.models import AnySplat, AnySplatConfig
from vist3a.models.config import AggregatorConfig

from .loop import step_rng, train_loop
from .shards import MicroScenes, to_model_size

__all__ = [
    "Model3DTrainConfig",
    "micro_anysplat",
    "micro_anysplat_config",
    "normalise_scene",
    "scene_losses",
    "train_model3d",
    "train_scene_model",
]

logger = logging.getLogger("vist3a.micro")


def micro_anysplat_config(frame_tokens: int = 9) -> AnySplatConfig:
    """The micro AnySplat: 56-px frames (4x4 tokens), width 128, 6 DINO blocks, 6 frame/global pairs, SH degree 1,
    and one camera / register token entry per frame of the 9-frame clip (``frame_tokens``; AnySplat: 2)."""
    agg = AggregatorConfig(img_size=56, patch_size=14, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0,
                           num_register_tokens=4, dino_depth=6, dino_num_heads=4, frame_tokens=frame_tokens)
    return AnySplatConfig(aggregator=agg, intermediate_layer_idx=(1, 3, 4, 5), camera_trunk_depth=1,
                          camera_num_heads=4, camera_iterations=4, dpt_features=64, dpt_out_channels=(32, 64, 128, 128),
                          dpt_hidden=16, gs_hidden=32, sh_degree=1)


def micro_anysplat(seed: int = 0) -> AnySplat:
    """A freshly initialised micro AnySplat (see the module docstring for the output-bias initialisation)."""
    torch.manual_seed(seed)
    model = AnySplat(micro_anysplat_config())
    last = model.encoder.gaussian_param_head.scratch.output_conv2[-1]
    with torch.no_grad():
        last.bias[0] = 2.0                                   # density logit -> opacity ~0.88
        last.bias[1:4] = math.log(math.expm1(8.0))          # softplus^-1(8): scale ~0.008
    return model


@dataclass
class Model3DTrainConfig:
    steps: int = 3500
    lr: float = 3e-4
    warmup: int = 300
    weight_decay: float = 0.01
    render_warmup: int = 400
    render_context: int = 1
    render_targets: int = 1
    render_weight: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_scene(c2w: Tensor, K: Tensor, depth: Tensor, size: int, ref_views: int) -> tuple[Tensor, Tensor, float]:
    """Ground truth in the model's frame: ``c2w`` (V, 4, 4) of all views moved so the first is the identity,
    translations and ``depth`` (V, s, s) divided by the mean distance of the first ``ref_views`` views' surface
    points from the first camera. ``K`` (3, 3) is at ``size`` px. Returns (c2w', depth', scale)."""
    c2w = c2w.double()
    rel = torch.linalg.inv(c2w[0]) @ c2w
    v = ref_views
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5,
                            torch.arange(size, dtype=torch.float64) + 0.5, indexing="ij")
    kinv = torch.linalg.inv(K.double())
    rays = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ kinv.T  # (s, s, 3), z = 1
    pts = rays[None] * depth[:v, ..., None].double()                 # camera frame
    world = pts @ rel[:v, None, :3, :3].transpose(-1, -2) + rel[:v, None, None, :3, 3]
    scale = float(world.reshape(-1, 3).norm(dim=-1).mean().clamp_min(1e-6))
    out = rel.clone()
    out[:, :3, 3] /= scale
    return out.float(), (depth / scale).float(), scale


def _pose_encoding(c2w: Tensor, K: Tensor, size: int) -> Tensor:
    return Cameras(c2w, K.expand(c2w.shape[0], 3, 3).contiguous(), size, size).to_vggt_pose_encoding()


def scene_losses(model: AnySplat, item: dict, cfg: Model3DTrainConfig, rng, render_w: float) -> tuple[Tensor, dict]:
    """The loss of one scene (module docstring) and its parts."""
    from vist3a.models.anysplat import to_gaussians
    from vist3a.render import render

    from ..metrics import ssim

    f = int(item["clip_frames"])
    s = model.config.aggregator.img_size
    frames = to_model_size(item["frames"], s)                  # (F + T, 3, s, s)
    k = item["K"].clone()
    k[:2] *= s / item["frames"].shape[-1]
    c2w, depth, _ = normalise_scene(item["c2w"], k, item["depth"], s, f)
    out = model(frames[None, :f])
    gt_pose = _pose_encoding(c2w[:f], k, s)
    pose_list = out["pose_enc_list"][:, 0]                     # (iterations, F, 9)
    n_it = pose_list.shape[0]
    cam = sum(0.8 ** (n_it - 1 - i) * (pose_list[i] - gt_pose).abs().mean() for i in range(n_it))
    d_pred, conf = out["depth"][0, ..., 0], out["depth_conf"][0]
    d_gt = depth[:f]
    err = (d_pred - d_gt).abs()
    depth_l = (conf * err).mean() - 0.2 * torch.log(conf).mean()
    grad_l = ((d_pred.diff(dim=-1) - d_gt.diff(dim=-1)).abs().mean()
              + (d_pred.diff(dim=-2) - d_gt.diff(dim=-2)).abs().mean())
    loss = cam + depth_l + grad_l
    parts = {"camera": cam.item(), "depth": err.mean().item(), "depth_grad": grad_l.item()}
    if render_w > 0:
        ctx = rng.sample(range(f), cfg.render_context)
        tgt = [f + i for i in rng.sample(range(frames.shape[0] - f), cfg.render_targets)]
        views = ctx + tgt
        g = to_gaussians(out["gaussians"][0])
        cams = Cameras(c2w[views], k.expand(len(views), 3, 3).contiguous(), s, s)
        rgb = render(g, cams, backend="torch").rgb.permute(0, 3, 1, 2)
        gt = frames[views]
        l1 = (rgb - gt).abs().mean()
        ss = ssim(rgb.clamp(0, 1), gt).mean()
        photo = l1 + 0.2 * (1 - ss)
        loss = loss + render_w * cfg.render_weight * photo
        parts.update(render_l1=l1.item(), render_ssim=ss.item())
    return loss, parts


def train_model3d(world: str | Path, out: str | Path, cfg: Model3DTrainConfig, *, progress: bool = True,
                  stop_after: int | None = None) -> int:
    """Train (or resume) the micro AnySplat into ``out``; export ``out/anysplat`` (``save_pretrained``: config.json
    + model.safetensors, loads with ``vist3a.models.from_pretrained``) when done. Returns the exit code."""
    return train_scene_model(world, out, cfg, micro_anysplat(cfg.seed), scene_losses, tag="model3d",
                             desc="micro AnySplat", export="anysplat", progress=progress, stop_after=stop_after)


def train_scene_model(world: str | Path, out: str | Path, cfg, model, losses, *, tag: str, desc: str, export: str,
                      progress: bool = True, stop_after: int | None = None) -> int:
    """The loop every micro 3D model trains with: one training scene per step drawn from (seed, step, ``tag``),
    ``losses(model, item, cfg, rng, render_weight) -> (loss, parts)`` with the photometric weight ramped in after
    ``cfg.render_warmup`` steps, AdamW + cosine schedule, gradient clip 1; ``save_pretrained`` into ``out/export``
    when done. ``cfg`` has steps, lr, warmup, weight_decay, render_warmup, seed and ``to_dict()``."""
    from vist3a.models.loading import save_pretrained

    from ..runtime import cosine_with_warmup

    out = Path(out)
    scenes = MicroScenes(world, "train")
    model = model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = cosine_with_warmup(opt, cfg.warmup, cfg.steps, 0.05)

    def step_fn(step: int) -> dict:
        rng = step_rng(cfg.seed, step, tag)
        item = scenes[rng.randrange(len(scenes))]
        ramp = 0.0 if step < cfg.render_warmup else min(1.0, (step - cfg.render_warmup + 1) / max(cfg.render_warmup, 1))
        loss, parts = losses(model, item, cfg, rng, ramp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        return {"loss": loss.item(), **parts, "grad_norm": gn.item()}

    res = train_loop(out, params=params, optimizer=opt, scheduler=sched, step_fn=step_fn, steps=cfg.steps,
                     config=cfg.to_dict(), desc=desc, progress=progress, stop_after=stop_after)
    if res.step >= cfg.steps:
        save_pretrained(model.eval(), out / export)
        logger.info("%s exported to %s", desc, out / export)
    return res.code


def rotation_errors(pred_c2w: Tensor, gt_c2w: Tensor) -> Tensor:
    """Per-view rotation error in degrees between camera-to-world rotations (V, 4, 4) or (V, 3, 3)."""
    rel = pred_c2w[:, :3, :3].double().transpose(1, 2) @ gt_c2w[:, :3, :3].double()
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def camera_ablation(world: str | Path, frame_tokens: int, steps: int = 1000, lr: float = 1e-3, seed: int = 0,
                    eval_scenes: int = 16, every: int = 250, progress: bool = True) -> dict:
    """Train only the aggregator and camera head of a fresh micro AnySplat with ``frame_tokens`` token entries on
    the camera loss for ``steps`` steps and return the mean rotation error (degrees) on held-out scenes every
    ``every`` steps: the measurement behind the micro AnySplat's ``frame_tokens = 9``."""
    from tqdm import tqdm

    from vist3a.cameras import vggt_pose_encoding_to_extrinsics

    torch.manual_seed(seed)
    model = AnySplat(micro_anysplat_config(frame_tokens)).train()
    train, test = MicroScenes(world, "train"), MicroScenes(world, "test")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    s = model.config.aggregator.img_size
    last = model.aggregator.depth - 1

    def prep(item):
        f = int(item["clip_frames"])
        k = item["K"].clone()
        k[:2] *= s / item["frames"].shape[-1]
        c2w, _, _ = normalise_scene(item["c2w"], k, item["depth"], s, f)
        return to_model_size(item["frames"][:f], s), _pose_encoding(c2w[:f], k, s), c2w[:f]

    held = [prep(test[i]) for i in range(min(eval_scenes, len(test)))]

    @torch.no_grad()
    def error() -> float:
        errs = []
        for frames, _, c2w in held:
            layers, _ = model.aggregator(frames[None], layers={last})
            enc = model.encoder.camera_head(layers[last])[-1][0]
            w2c, _ = vggt_pose_encoding_to_extrinsics(enc.float(), s, s)
            errs.append(float(rotation_errors(torch.linalg.inv(_as4x4(w2c)), c2w).mean()))
        return sum(errs) / len(errs)

    curve = [(0, error())]
    rng = step_rng(seed, 0, "camera-ablation")
    for step in tqdm(range(1, steps + 1), desc=f"cameras, {frame_tokens} token entries", disable=not progress):
        frames, enc_gt, _ = prep(train[rng.randrange(len(train))])
        layers, _ = model.aggregator(frames[None], layers={last})
        pose_list = model.encoder.camera_head(layers[last])
        n = len(pose_list)
        loss = sum(0.8 ** (n - 1 - i) * (pose_list[i][0] - enc_gt).abs().mean() for i in range(n))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % every == 0:
            curve.append((step, error()))
    return {"frame_tokens": frame_tokens, "steps": steps, "lr": lr, "eval_scenes": len(held),
            "rotation_error_deg": curve}


def _as4x4(w2c: Tensor) -> Tensor:
    out = torch.eye(4, dtype=w2c.dtype).repeat(w2c.shape[0], 1, 1)
    out[:, :3, :] = w2c
    return out
