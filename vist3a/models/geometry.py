"""Depth unprojection for VGGT/AnySplat outputs (float32 regardless of the network dtype).

The pose encoding and its decoding to extrinsics/intrinsics live with the camera conventions in
:mod:`vist3a.cameras` (:func:`~vist3a.cameras.vggt_pose_encoding_to_extrinsics`).

* Unprojection: pixel u = 0..W-1 (no +0.5), ``x = (u - cx) d / fx``, ``y = (v - cy) d / fy``, ``z = d``, then
  ``world = R^T (cam - t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import invert_rigid

__all__ = ["unproject_depth"]


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
