"""EWA projection of 3D Gaussians into pinhole cameras, in gsplat's "classic" 3DGS conventions.

Everything here matches gsplat 1.5 (``fully_fused_projection`` with opacities, ``eps2d=0.3``, no compensation):

* camera-space means ``t = R_w2c @ mean + t_w2c``; camera-space covariance ``R_w2c (R S S^T R^T) R_w2c^T`` with
  ``R`` from the wxyz quaternion and ``S = diag(scales)``;
* EWA Jacobian ``J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]`` where tx/z, ty/z are clamped to the frustum
  limits ``-(cx/fx + 0.3 tan_fovx) .. (W - cx)/fx + 0.3 tan_fovx`` (same for y), ``tan_fovx = 0.5 W / fx``;
* ``cov2d = J cov_c J^T + 0.3 I`` (low-pass filter), conic ``(a, b, c)`` = upper triangle of ``cov2d^-1``;
* ``means2d = (fx x/z + cx, fy y/z + cy)`` in pixels (pixel (i, j) has its centre at (j + 0.5, i + 0.5));
* a splat is dropped for a camera when ``z < near`` or ``z > far``, ``det(cov2d) <= 0``, ``opacity < 1/255``, or
  its pixel box misses the image;
* the box half-size per axis is ``ceil(extent * sqrt(cov2d_xx))`` / ``ceil(extent * sqrt(cov2d_yy))`` with the
  opacity-aware ``extent = min(3.33, sqrt(2 ln(255 opacity)))``, outside which ``alpha < 1/255``.

The projection is differentiable w.r.t. means, scales, rotations (and the cameras); radii and the visibility mask are
integer / boolean and carry no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..rotations import quat_to_matrix

__all__ = ["ALPHA_THRESHOLD", "EPS2D", "MAX_EXTENT", "Projection", "box_extent", "project_gaussians"]

ALPHA_THRESHOLD = 1.0 / 255.0  # contributions below this are skipped (gsplat ALPHA_THRESHOLD)
EPS2D = 0.3  # screen-space low-pass added to the 2D covariance
MAX_EXTENT = 3.33  # largest box half-size in standard deviations


@dataclass
class Projection:
    """Per-camera screen-space splats for V cameras and N Gaussians.

    Attributes:
        means2d: (V, N, 2) pixel coordinates of the projected centres.
        depths: (V, N) camera-space z of the centres.
        conics: (V, N, 3) (a, b, c), the upper triangle of the inverse 2D covariance [[a, b], [b, c]].
        cov2d: (V, N, 2, 2) 2D covariance including the 0.3 low-pass.
        radii: (V, N, 2) int32 pixel box half-sizes (x, y); 0 where the splat is not visible.
        visible: (V, N) bool, the splat survives every culling rule for that camera.
    """

    means2d: Tensor
    depths: Tensor
    conics: Tensor
    cov2d: Tensor
    radii: Tensor
    visible: Tensor


def project_gaussians(
    means: Tensor,
    rotations: Tensor,
    scales: Tensor,
    opacities: Tensor,
    w2c: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = EPS2D,
) -> Projection:
    """Project N Gaussians into V cameras (see the module docstring for the exact rules).

    Args:
        means: (N, 3) world-space centres.
        rotations: (N, 4) wxyz quaternions (normalised here).
        scales: (N, 3) linear standard deviations.
        opacities: (N,) in [0, 1]; only used for culling and the box size.
        w2c: (V, 4, 4) world-to-camera, OpenCV axes.
        K: (V, 3, 3) pixel intrinsics (skew is ignored, as in gsplat's CUDA kernels).
        width, height: image size in pixels.
        near_plane, far_plane: camera-space z range that is kept.
        eps2d: low-pass added to the diagonal of the 2D covariance.

    Returns:
        :class:`Projection` with (V, N, ...) tensors.
    """
    rot = quat_to_matrix(rotations)  # (N, 3, 3)
    m = rot * scales[:, None, :]  # R S
    cov3d = m @ m.transpose(-1, -2)  # (N, 3, 3)

    r_cam = w2c[:, None, :3, :3]  # (V, 1, 3, 3)
    t_cam = w2c[:, None, :3, 3]  # (V, 1, 3)
    means_c = (r_cam @ means[None, :, :, None])[..., 0] + t_cam  # (V, N, 3)
    cov_c = r_cam @ cov3d[None] @ r_cam.transpose(-1, -2)  # (V, N, 3, 3)

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # (V, 1)
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy

    x, y, z = means_c.unbind(-1)  # (V, N)
    with torch.no_grad():
        in_range = (z >= near_plane) & (z <= far_plane)
    # Culled depths (e.g. z = 0) are replaced by 1 so that no inf/NaN enters the graph (it would poison gradients).
    rz = 1.0 / torch.where(in_range, z, torch.ones_like(z))
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    c_xx, c_xy, c_yy = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = c_xx * c_yy - c_xy * c_xy
    det_ok = det > 0
    safe_det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c_yy / safe_det, -c_xy / safe_det, c_xx / safe_det], dim=-1)

    with torch.no_grad():
        opac = opacities.detach()[None].expand_as(z)
        opaque_enough = opac >= ALPHA_THRESHOLD
        extent = box_extent(opac)
        rad_x = torch.ceil(extent * c_xx.detach().clamp_min(0).sqrt())
        rad_y = torch.ceil(extent * c_yy.detach().clamp_min(0).sqrt())
        mx, my = means2d.detach().unbind(-1)
        on_image = (mx + rad_x > 0) & (mx - rad_x < width) & (my + rad_y > 0) & (my - rad_y < height)
        visible = in_range & det_ok & opaque_enough & ((rad_x > 0) | (rad_y > 0)) & on_image
        visible &= torch.isfinite(means2d.detach()).all(-1)
        radii = torch.stack([rad_x, rad_y], dim=-1)
        radii = torch.where(visible[..., None], radii, torch.zeros_like(radii)).to(torch.int32)

    return Projection(means2d=means2d, depths=z, conics=conics, cov2d=cov2d, radii=radii, visible=visible)


def box_extent(opacities: Tensor) -> Tensor:
    """Opacity-aware box half-size in standard deviations, ``min(3.33, sqrt(2 ln(255 opacity)))`` (same shape)."""
    return torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) * 255.0)).clamp_max(MAX_EXTENT)
