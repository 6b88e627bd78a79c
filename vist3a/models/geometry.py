"""Depth unprojection for VGGT/AnySplat outputs (float32 regardless of the network dtype).

The pose encoding and its decoding to extrinsics/intrinsics live with the camera conventions in
:mod:`vist3a.cameras` (:func:`~vist3a.cameras.vggt_pose_encoding_to_extrinsics`).

* :func:`cameras_from_pointmap` (MVDUSt3R, which predicts no cameras): pixel centres at (u + 0.5, v + 0.5).
* Unprojection: pixel u = 0..W-1 (no +0.5), ``x = (u - cx) d / fx``, ``y = (v - cy) d / fy``, ``z = d``, then
  ``world = R^T (cam - t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import invert_rigid

__all__ = ["cameras_from_pointmap", "unproject_depth"]


def unproject_depth(depth: Tensor, extrinsic: Tensor, intrinsic: Tensor) -> Tensor:
    """depth (B, S, H, W[, 1]), world-to-camera (B, S, 3, 4), pixel K (B, S, 3, 3) -> world points (B, S, H, W, 3)."""
    if depth.ndim == 5:
        depth = depth[..., 0]
    b, s, h, w = depth.shape
    d = depth.float().reshape(b * s, h, w)
    k = intrinsic.float().reshape(b * s, 3, 3)
    fx, fy, cx, cy = (k[:, 0, 0, None, None], k[:, 1, 1, None, None], k[:, 0, 2, None, None],
                      k[:, 1, 2, None, None])
    u = torch.arange(w, device=d.device)[None, None, :]
    v = torch.arange(h, device=d.device)[None, :, None]
    cam = torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], dim=-1)  # (BS, H, W, 3)
    c2w = invert_rigid(extrinsic.float().reshape(b * s, 3, 4))
    homo = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1).reshape(b * s, h * w, 4)
    world = torch.bmm(c2w, homo.transpose(1, 2)).transpose(1, 2)[..., :3]
    return world.reshape(b, s, h, w, 3)


def _pixel_grid(h: int, w: int, device) -> tuple[Tensor, Tensor]:
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64) + 0.5,
                          torch.arange(w, device=device, dtype=torch.float64) + 0.5, indexing="ij")
    return u, v


def cameras_from_pointmap(points: Tensor, conf: Tensor, samples: int = 2048) -> tuple[Tensor, Tensor, Tensor]:
    """Cameras for per-pixel points given in the frame of view 0 (MVDUSt3R's output, OpenCV axes).

    * One shared pinhole K (a video's frames share their camera), principal point at the image centre, focal from
      view 0 by confidence-weighted least squares on ``(u - cx, v - cy) = f (x / z, y / z)`` (view 0's points are
      in its own camera frame); ``max(H, W)`` when that fails (no point in front, non-finite).
    * View 0: identity pose. View v >= 1: linear PnP with the known K on ``samples`` pixels (the most confident,
      weights sqrt(conf)): the 3x4 [R | t] from the null space of the ray constraints, R projected to the nearest
      rotation; identity when the fit is degenerate or puts the points behind the camera.

    Args: points (V, H, W, 3), conf (V, H, W). Returns c2w (V, 4, 4), K (V, 3, 3) in pixels, depth (V, H, W) (z of
    every point in its own view's camera), all float32.
    """
    pts = points.double()
    v_count, h, w, _ = pts.shape
    dev = pts.device
    wgt = conf.double().clamp(min=0).nan_to_num(0)
    u, vv = _pixel_grid(h, w, dev)
    cx, cy = w / 2.0, h / 2.0
    p0, w0 = pts[0], wgt[0]
    front = (p0[..., 2] > 1e-8) & torch.isfinite(p0).all(-1)
    f = float("nan")
    if front.any():
        xz, yz = p0[..., 0][front] / p0[..., 2][front], p0[..., 1][front] / p0[..., 2][front]
        ww = w0[front]
        num = (ww * ((u[front] - cx) * xz + (vv[front] - cy) * yz)).sum()
        den = (ww * (xz * xz + yz * yz)).sum()
        f = float(num / den) if den > 0 else float("nan")
    if not (f > 0 and f < 1e6):
        f = float(max(h, w))
    k = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64, device=dev)
    w2c = torch.eye(4, dtype=torch.float64, device=dev).repeat(v_count, 1, 1)
    mx, my = ((u - cx) / f).reshape(-1), ((vv - cy) / f).reshape(-1)
    for i in range(1, v_count):
        x = pts[i].reshape(-1, 3)
        c = wgt[i].reshape(-1)
        ok = torch.isfinite(x).all(-1)
        idx = torch.nonzero(ok)[:, 0]
        if idx.numel() < 6:
            continue
        idx = idx[torch.argsort(c[idx], descending=True)[:samples]]
        xs, sw = x[idx], c[idx].sqrt().clamp(min=1e-6)
        center, scale = xs.mean(0), (xs - xs.mean(0)).norm(dim=-1).mean().clamp(min=1e-12)
        xh = torch.cat([(xs - center) / scale, torch.ones_like(xs[:, :1])], dim=-1)  # (N, 4)
        zero = torch.zeros_like(xh)
        ax = torch.cat([-xh, zero, mx[idx, None] * xh], dim=-1)
        ay = torch.cat([zero, -xh, my[idx, None] * xh], dim=-1)
        a = torch.cat([ax, ay]) * torch.cat([sw, sw])[:, None]
        try:
            p = torch.linalg.svd(a, full_matrices=False)[2][-1].reshape(3, 4)
        except RuntimeError:
            continue
        t_norm = torch.eye(4, dtype=torch.float64, device=dev)
        t_norm[:3, :3] /= scale
        t_norm[:3, 3] = -center / scale
        p = p @ t_norm
        m = p[:, :3]
        if torch.linalg.det(m) < 0:
            p, m = -p, -m
        uu, sv, vh = torch.linalg.svd(m)
        s_mean = sv.mean()
        if not torch.isfinite(sv).all() or s_mean <= 0:
            continue
        rot = uu @ vh
        t = p[:, 3] / s_mean
        if torch.linalg.det(rot) < 0 or not bool(((xs @ rot.T + t)[:, 2] > 0).float().mean() > 0.5):
            continue
        w2c[i, :3, :3], w2c[i, :3, 3] = rot, t
    c2w = invert_rigid(w2c[:, :3, :4])
    cam = torch.einsum("vij,vhwj->vhwi", w2c[:, :3, :3], pts) + w2c[:, None, None, :3, 3]
    return c2w.float(), k.expand(v_count, 3, 3).float().clone(), cam[..., 2].float()
