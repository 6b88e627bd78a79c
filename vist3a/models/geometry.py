"""Camera geometry of VGGT/AnySplat outputs (float32 regardless of the network dtype).

* Pose encoding (..., 9) = [t, quaternion xyzw, fov_h, fov_w]; [R(q) | t] is **world-to-camera** (OpenCV).
* AnySplat's intrinsics: ``f = (size/2) / (tan(fov/2) + eps)`` with eps = 1e-3, principal point (W/2, H/2).
* Unprojection: pixel u = 0..W-1 (no +0.5), ``x = (u - cx) d / fx``, ``y = (v - cy) d / fy``, ``z = d``, then
  ``world = R^T (cam - t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["invert_se3", "pose_encoding_to_extri_intri", "quat_xyzw_to_rotation", "unproject_depth"]


def quat_xyzw_to_rotation(q: Tensor) -> Tensor:
    """(..., 4) xyzw, any norm -> (..., 3, 3) with normaliser 2/|q|^2 (as VGGT's ``quat_to_mat``)."""
    i, j, k, r = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack([
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ], dim=-1)
    return m.reshape(*q.shape[:-1], 3, 3)


def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw: tuple[int, int], eps: float = 1e-3
                                 ) -> tuple[Tensor, Tensor]:
    """pose_enc (B, S, 9) -> world-to-camera (B, S, 3, 4) and pixel intrinsics (B, S, 3, 3)."""
    h, w = image_hw
    pose_enc = pose_enc.float()
    t, q, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsic = torch.cat([quat_xyzw_to_rotation(q), t[..., None]], dim=-1)
    k = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    k[..., 0, 0] = (w / 2.0) / (torch.tan(fov_w / 2.0) + eps)
    k[..., 1, 1] = (h / 2.0) / (torch.tan(fov_h / 2.0) + eps)
    k[..., 0, 2] = w / 2
    k[..., 1, 2] = h / 2
    k[..., 2, 2] = 1.0
    return extrinsic, k


def invert_se3(m: Tensor) -> Tensor:
    """Closed-form inverse (..., 4, 4) of rigid (..., 3, 4) or (..., 4, 4) transforms."""
    r, t = m[..., :3, :3], m[..., :3, 3:]
    rt = r.transpose(-1, -2)
    out = torch.zeros(*m.shape[:-2], 4, 4, dtype=m.dtype, device=m.device)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1
    return out


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
    c2w = invert_se3(extrinsic.float().reshape(b * s, 3, 4))
    homo = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1).reshape(b * s, h * w, 4)
    world = torch.bmm(c2w, homo.transpose(1, 2)).transpose(1, 2)[..., :3]
    return world.reshape(b, s, h, w, 3)
