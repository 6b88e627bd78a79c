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


def _weighted_median(x: Tensor, w: Tensor) -> Tensor:
    order = torch.argsort(x)
    cw = torch.cumsum(w[order], 0)
    return x[order][torch.searchsorted(cw, cw[-1] / 2).clamp(max=x.numel() - 1)]


def _robust_focal(a: Tensor, q: Tensor, w: Tensor, iters: int = 3, inlier_px: float = 3.0) -> float:
    """f with ``a ~ f q`` (pixel offsets a (N, 2), normalised coordinates q (N, 2), weights w (N,)): the weighted
    median of the per-pixel ratios, then ``iters`` weighted least-squares refits on the pixels it reprojects within
    ``inlier_px``. Robust to the points a network puts near z = 0 (huge x/z): they dominate a least-squares or L1 fit
    over all pixels, and they are outliers here."""
    qn = (q * q).sum(-1)
    aq = (a * q).sum(-1)
    ok = qn > 1e-12
    if not ok.any():
        return float("nan")
    a, q, w, qn, aq = a[ok], q[ok], w[ok], qn[ok], aq[ok]
    f = _weighted_median(aq / qn, w)
    for _ in range(iters):
        inl = (a - f * q).norm(dim=-1) < inlier_px
        if int(inl.sum()) < 10:
            break
        f = (w[inl] * aq[inl]).sum() / (w[inl] * qn[inl]).sum().clamp(min=1e-30)
    return float(f)


def _linear_pnp(xs: Tensor, mx: Tensor, my: Tensor, sw: Tensor) -> tuple[Tensor, Tensor] | None:
    """World-to-camera (R, t) from points xs (N, 3) seen at normalised image coordinates (mx, my) (N,), rows weighted
    by sw (N,): the null space of the ray constraints (DLT with known K), R projected to the nearest rotation.
    None when degenerate or when most points end up behind the camera."""
    center, scale = xs.mean(0), (xs - xs.mean(0)).norm(dim=-1).mean().clamp(min=1e-12)
    xh = torch.cat([(xs - center) / scale, torch.ones_like(xs[:, :1])], dim=-1)  # (N, 4)
    zero = torch.zeros_like(xh)
    ax = torch.cat([-xh, zero, mx[:, None] * xh], dim=-1)
    ay = torch.cat([zero, -xh, my[:, None] * xh], dim=-1)
    a = torch.cat([ax, ay]) * torch.cat([sw, sw])[:, None]
    try:
        p = torch.linalg.svd(a, full_matrices=False)[2][-1].reshape(3, 4)
    except RuntimeError:
        return None
    t_norm = torch.eye(4, dtype=xs.dtype, device=xs.device)
    t_norm[:3, :3] /= scale
    t_norm[:3, 3] = -center / scale
    p = p @ t_norm
    m = p[:, :3]
    if torch.linalg.det(m) < 0:
        p, m = -p, -m
    uu, sv, vh = torch.linalg.svd(m)
    s_mean = sv.mean()
    if not torch.isfinite(sv).all() or s_mean <= 0:
        return None
    rot = uu @ vh
    t = p[:, 3] / s_mean
    if torch.linalg.det(rot) < 0 or not bool(((xs @ rot.T + t)[:, 2] > 0).float().mean() > 0.5):
        return None
    return rot, t


def _skew(w: Tensor) -> Tensor:
    zero = w.new_zeros(())
    return torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def _robust_cost(xs: Tensor, mx: Tensor, my: Tensor, w: Tensor, rot: Tensor, t: Tensor, f: float,
                 scale: float = 1.0) -> Tensor:
    """Weighted Geman-McClure reprojection cost ``e^2 / (e^2 + scale^2)`` (e in pixels, bounded by 1) of world-to-camera
    (rot, t); a point behind the camera costs 1. Bounded, so outliers and points pushed behind the camera cannot pull
    the pose (a Huber cost let a pose that put every point behind the camera win)."""
    cam = xs @ rot.T + t
    z = cam[:, 2]
    front = z > 1e-6
    zs = torch.where(front, z, torch.ones_like(z))
    e2 = ((cam[:, 0] / zs - mx) ** 2 + (cam[:, 1] / zs - my) ** 2) * (f * f)
    rho = torch.where(front, e2 / (e2 + scale * scale), torch.ones_like(e2))
    return (w * rho).sum() / w.sum().clamp(min=1e-12)


def _refine_pose(xs: Tensor, mx: Tensor, my: Tensor, w: Tensor, rot: Tensor, t: Tensor, f: float,
                 scales: tuple[float, ...] = (16.0, 4.0, 1.0), iters: int = 50) -> tuple[Tensor, Tensor, float]:
    """Minimise :func:`_robust_cost` over (rot, t) from the given start, with the cost's scale shrinking over
    ``scales`` pixels (graduated: wide basins first, then the precise fit); L-BFGS on an axis-angle update and t.
    Returns (rot, t, cost at the last scale). Runs with gradients even under ``no_grad`` / ``inference_mode``
    (ComfyUI runs nodes in inference mode), on normal copies of the inputs."""
    with torch.inference_mode(False):
        xs, mx, my, w, rot, t = (v.clone() for v in (xs, mx, my, w, rot, t))
        return _refine_pose_graduated(xs, mx, my, w, rot, t, f, scales, iters)


def _refine_pose_graduated(xs: Tensor, mx: Tensor, my: Tensor, w: Tensor, rot: Tensor, t: Tensor, f: float,
                           scales: tuple[float, ...], iters: int) -> tuple[Tensor, Tensor, float]:
    for scale in scales:
        omega = torch.zeros(3, dtype=xs.dtype, requires_grad=True)
        tt = t.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([omega, tt], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

        def closure(scale=scale, omega=omega, tt=tt, opt=opt, start=rot):
            opt.zero_grad()
            cost = _robust_cost(xs, mx, my, w, start @ torch.linalg.matrix_exp(_skew(omega)), tt, f, scale)
            cost.backward()
            return cost

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            rot, t = rot @ torch.linalg.matrix_exp(_skew(omega)), tt.detach()
    with torch.no_grad():
        return rot, t, float(_robust_cost(xs, mx, my, w, rot, t, f, scales[-1]))


def cameras_from_pointmap(points: Tensor, conf: Tensor, samples: int = 2048) -> tuple[Tensor, Tensor, Tensor]:
    """Cameras for per-pixel points given in the frame of view 0 (MVDUSt3R's output, OpenCV axes).

    * One shared pinhole K (a video's frames share their camera), principal point at the image centre, focal from
      view 0's points (in its own camera frame) by a robust fit of ``(u - cx, v - cy) = f (x / z, y / z)``
      (confidence-weighted median, then least squares on the pixels within 3 px; robust to the outliers a network
      puts near z = 0); ``max(H, W)`` when that fails (no point in front, non-finite).
    * View 0: identity pose. View v >= 1, on ``samples`` pixels spread evenly over the image (weights conf): PnP with
      the known K, minimising a bounded robust reprojection cost (Geman-McClure, scale 16 -> 4 -> 1 px) by L-BFGS
      from the better of two starts: the linear PnP (the null space of the ray constraints, R projected to the
      nearest rotation) and the previous view's pose (a video's neighbouring frames are close; the identity for
      view 1). A linear fit alone is thrown far off by a few outlying points; a network's pointmaps have them.

    Args: points (V, H, W, 3), conf (V, H, W). Returns c2w (V, 4, 4), K (V, 3, 3) in pixels, depth (V, H, W) (z of
    every point in its own view's camera), all float32 (computed in float64, on the CPU).
    """
    device = points.device
    pts = points.detach().double().cpu()
    v_count, h, w, _ = pts.shape
    dev = pts.device
    wgt = conf.detach().double().cpu().clamp(min=0).nan_to_num(0)
    u, vv = _pixel_grid(h, w, dev)
    cx, cy = w / 2.0, h / 2.0
    p0, w0 = pts[0], wgt[0]
    front = (p0[..., 2] > 1e-8) & torch.isfinite(p0).all(-1)
    f = float("nan")
    if front.any():
        q = p0[front][:, :2] / p0[front][:, 2:3]
        a = torch.stack([u[front] - cx, vv[front] - cy], -1)
        f = _robust_focal(a, q, w0[front])
    if not (f > 0 and f < 1e6):
        f = float(max(h, w))
    k = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64, device=dev)
    w2c = torch.eye(4, dtype=torch.float64, device=dev).repeat(v_count, 1, 1)
    mx, my = ((u - cx) / f).reshape(-1), ((vv - cy) / f).reshape(-1)
    for i in range(1, v_count):
        x = pts[i].reshape(-1, 3)
        c = wgt[i].reshape(-1)
        ok = torch.isfinite(x).all(-1) & (c > 0)
        idx = torch.nonzero(ok)[:, 0]
        if idx.numel() < 6:
            continue
        if idx.numel() > samples:  # spread over the image: the most confident pixels can be one plane (the ground),
            idx = idx[torch.linspace(0, idx.numel() - 1, samples).round().long()]  # the linear PnP's degenerate case
        xs, cw, bx, by = x[idx], c[idx], mx[idx], my[idx]
        starts = [(w2c[i - 1, :3, :3].clone(), w2c[i - 1, :3, 3].clone())]  # view 1: the identity
        linear = _linear_pnp(xs, bx, by, cw.sqrt().clamp(min=1e-6))
        if linear is not None:
            starts.insert(0, linear)
        best = None
        for rot0, t0 in starts:
            rot, t, cost = _refine_pose(xs, bx, by, cw, rot0, t0, f)
            if torch.isfinite(rot).all() and torch.isfinite(t).all() and (best is None or cost < best[2]):
                best = (rot, t, cost)
        if best is not None:
            uu, _, vh = torch.linalg.svd(best[0])  # re-orthonormalise
            w2c[i, :3, :3], w2c[i, :3, 3] = uu @ vh, best[1]
    c2w = invert_rigid(w2c[:, :3, :4])
    cam = torch.einsum("vij,vhwj->vhwi", w2c[:, :3, :3], pts) + w2c[:, None, None, :3, 3]
    out = c2w.float(), k.expand(v_count, 3, 3).float().clone(), cam[..., 2].float()
    return tuple(t.to(device) for t in out)
