"""Rotation helpers shared by the containers.

Convention (stated once for the whole package): quaternions are **wxyz** (scalar first) unless a function name says
otherwise (``*_xyzw``); rotation matrices act on column vectors, ``x' = R @ x``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "quat_to_matrix",
    "quat_xyzw_to_matrix",
    "matrix_to_quat",
    "quat_multiply",
    "normalize_quat",
]


def normalize_quat(quats: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit quaternions (..., 4) from any non-zero quaternions (..., 4)."""
    return quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_to_matrix(quats: Tensor, eps: float = 0.0) -> Tensor:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) wxyz of any non-zero norm.

    The norm is folded into the factor ``2 / (|q|^2 + eps)`` (the form VGGT and AnySplat use; their ``eps`` is 0 for
    camera poses and 1e-8 for Gaussian rotations), so no separate normalisation is needed.
    """
    w, x, y, z = quats.unbind(-1)
    two_s = 2.0 / ((quats * quats).sum(-1) + eps)
    rows = [
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quat_xyzw_to_matrix(quats_xyzw: Tensor, eps: float = 0.0) -> Tensor:
    """:func:`quat_to_matrix` for scalar-last (xyzw) quaternions, the order VGGT and AnySplat store."""
    return quat_to_matrix(quats_xyzw[..., [3, 0, 1, 2]], eps)


def matrix_to_quat(matrices: Tensor) -> Tensor:
    """Unit quaternions (..., 4) wxyz with w >= 0 from rotation matrices (..., 3, 3).

    Uses the numerically stable branch per element (largest of 1+trace, 1+2*R_ii - trace), so it is exact to rounding
    for all rotations, including 180-degree ones.
    """
    m = matrices
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4*q_i^2 for i in (w, x, y, z); clamp protects sqrt from tiny negative rounding.
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    ).clamp_min(0.0)
    # Each candidate row is 4*q_k * q for the branch k; pick the branch with the largest |q_k|.
    cand = torch.stack(
        [
            torch.stack([sq[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], sq[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], sq[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], sq[..., 3]], -1),
        ],
        dim=-2,
    )  # (..., 4 branches, 4)
    best = sq.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = normalize_quat(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions (..., 4); the rotation of b is applied first."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )
