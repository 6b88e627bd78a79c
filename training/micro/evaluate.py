"""Measurements on the micro world's held-out (``test``) scenes: novel-view synthesis of the micro AnySplat from
frames, of a stitched decoder from latents, and of VAE-decode-then-AnySplat, optionally with latent noise.

Protocol (the one of ``training.eval_nvs``, on the micro world's own ground truth): the 9 orbit frames are the
context. The 3D model predicts Gaussians and the 9 context cameras in its own frame; the ground-truth context
cameras are aligned to the predicted ones by a similarity transform (:func:`training.eval_nvs.map_targets`), the 4
novel target views are mapped through it and rendered at 56x56; PSNR / SSIM (and LPIPS where its weights are found
locally) against the ground-truth target renders resized to 56 like every 3D-model input.

Latents are the VAE posterior means of the 64-px clip (deterministic); noisy latents are
``z' = z + a * ||z|| * eps`` with ``||z||`` the per-sample RMS (``training.eval_noise_robustness.perturb``) and a
fixed ``eps`` per scene.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from vist3a import Cameras

from ..eval_noise_robustness import perturb
from ..eval_nvs import map_targets, render_views
from ..metrics import psnr, ssim
from .shards import MicroScenes, to_model_size

__all__ = ["METHODS", "NVSResult", "decode_latent", "encode_clip", "model_input_size", "nvs_scores", "predict",
           "scene_nvs", "spearman"]

logger = logging.getLogger("vist3a.micro")

METHODS = ("anysplat", "model", "stitched", "decode_reconstruct")


class NVSResult(dict):
    """{metric: mean over scenes} plus ``per_scene``; a dict so it serialises as JSON."""


@torch.no_grad()
def encode_clip(vae, frames: Tensor) -> Tensor:
    """(T, 3, 64, 64) in [0, 1] -> raw latent mean (1, 16, T_lat, 8, 8) of a diffusers AutoencoderKLWan."""
    x = frames[None].permute(0, 2, 1, 3, 4).to(next(vae.parameters()).dtype) * 2 - 1
    return vae.encode(x).latent_dist.mean.float()


@torch.no_grad()
def decode_latent(vae, z: Tensor, size: int) -> Tensor:
    """Raw latent (1, 16, T_lat, h, w) -> frames (1, T, 3, size, size) in [0, 1] (bicubic-antialias resize)."""
    x = vae.decode(z.to(next(vae.parameters()).dtype)).sample.float().clamp(-1, 1) * 0.5 + 0.5
    return to_model_size(x.permute(0, 2, 1, 3, 4), size)


def model_input_size(model, video_size: int) -> int:
    """The frame size a micro 3D model reads: AnySplat its aggregator's ``img_size`` (56), MVDUSt3R the video's own
    size (64: a multiple of its patch 16, no resize)."""
    agg = getattr(model.config, "aggregator", None)
    return int(agg.img_size) if agg is not None else int(video_size)


@torch.no_grad()
def predict(method: str, item: dict, *, model=None, decoder=None, vae=None, alpha: float = 0.0,
            head_frames: str = "decoded", seed: int = 0):
    """One scene's prediction (``.gaussians[0]``, ``.cameras[0]``) by ``method``:

    * ``anysplat``: the micro 3D model (AnySplat, or MVDUSt3R) on the 9 clean frames at its input size (56 / 64
      px; ``alpha`` must be 0); ``model`` is the same (a name that fits MVDUSt3R);
    * ``stitched``: the stitched decoder on the (noisy) latent; its pixel-reading heads get the VAE-decoded frames
      (``head_frames="decoded"``, as in text-to-3D) or the clean frames (``"input"``, as in video-to-3D);
    * ``decode_reconstruct``: the (noisy) latent VAE-decoded, resized to 56, then the micro AnySplat.
    """
    f = int(item["clip_frames"])
    clip = item["frames"][:f]
    s = (model_input_size(model, clip.shape[-1]) if model is not None else
         decoder.model_size_for((clip.shape[-2], clip.shape[-1]))[0])
    if method in ("anysplat", "model"):
        if alpha:
            raise ValueError(f"predict: the {method!r} method reads clean frames; use decode_reconstruct for noise")
        return model.predict(to_model_size(clip, s)[None])
    z = encode_clip(vae, clip)
    if alpha:
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
        z = perturb(z, alpha, eps, norm="rms")
    if method == "decode_reconstruct":
        return model.predict(decode_latent(vae, z, s))
    if method == "stitched":
        heads = decode_latent(vae, z, s) if head_frames == "decoded" else to_model_size(clip, s)[None]
        return decoder.predict(z, heads)
    raise ValueError(f"predict: unknown method {method!r}; one of {METHODS}")


def scene_nvs(pred, item: dict, size: int, lpips=None) -> dict[str, Any]:
    """Render ``pred`` at the scene's target views (mapped by the context alignment) -> per-view metrics."""
    f = int(item["clip_frames"])
    cams = MicroScenes.cameras(item, size=size)
    gt_ctx, gt_tgt = cams[slice(0, f)], cams[slice(f, None)]
    pred_ctx = pred.cameras[0].to(device="cpu", dtype=torch.float64)
    targets, align = map_targets(pred_ctx, gt_ctx, gt_tgt)
    renders = render_views(pred.gaussians[0].to(dtype=torch.float32), targets)
    gt = to_model_size(item["frames"][f:], size)
    out = {"psnr": psnr(renders, gt).tolist(), "ssim": ssim(renders, gt).tolist(),
           "scale": align["scale"], "residual": align["context_center_residual"]}
    if lpips is not None:
        out["lpips"] = lpips(renders, gt).tolist()
    return out


def nvs_scores(method: str, scenes: MicroScenes, indices: Iterable[int], *, size: int = 56, lpips=None,
               progress: bool = False, desc: str | None = None, **kw) -> NVSResult:
    """Mean target-view PSNR / SSIM (/ LPIPS) of ``method`` over the scenes ``indices`` (per scene, then mean)."""
    from tqdm import tqdm

    per_scene = []
    idx = list(indices)
    for i in tqdm(idx, desc=desc or method, unit="scene", disable=not progress, leave=False):
        item = scenes[i]
        pred = predict(method, item, seed=1000 + i, **kw)
        m = scene_nvs(pred, item, size, lpips)
        per_scene.append({"scene": i, **{k: sum(v) / len(v) if isinstance(v, list) else v for k, v in m.items()}})
    res = NVSResult()
    for key in ("psnr", "ssim", "lpips"):
        vals = [p[key] for p in per_scene if key in p]
        if vals:
            res[key] = sum(vals) / len(vals)
    res["scenes"] = len(per_scene)
    res["per_scene"] = per_scene
    return res


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties)."""
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman: need two sequences of equal length >= 2")
    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else float("nan")


def cameras_at(item: dict, size: int) -> Cameras:
    return MicroScenes.cameras(item, size=size)
