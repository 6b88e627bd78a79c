"""`PointCloud`: coloured 3D points of one scene.

* ``points``     (N, 3) world space.
* ``colors``     (N, 3) RGB in [0, 1] (files store uchar 0..255).
* ``confidence`` (N,) or None, any non-negative scale (e.g. VGGT's confidence, >= 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussians import Gaussians
from .sh import rgb_to_sh_dc

__all__ = ["PointCloud"]


@dataclass(eq=False)
class PointCloud:
    points: Tensor
    colors: Tensor
    confidence: Tensor | None = None
    validate: bool = True

    def __post_init__(self) -> None:
        if not self.validate:
            return
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"PointCloud: points must be (N, 3), got {tuple(self.points.shape)}")
        n = self.points.shape[0]
        if tuple(self.colors.shape) != (n, 3):
            raise ValueError(f"PointCloud: colors must be ({n}, 3), got {tuple(self.colors.shape)}")
        if self.confidence is not None and tuple(self.confidence.shape) != (n,):
            raise ValueError(f"PointCloud: confidence must be ({n},), got {tuple(self.confidence.shape)}")
        if not self.points.dtype.is_floating_point or not self.colors.dtype.is_floating_point:
            raise ValueError("PointCloud: points and colors must be floating point (colors in [0, 1])")
        if n and not bool(torch.isfinite(self.points).all()):
            raise ValueError("PointCloud: points contain NaN or infinite values")
        if n and not bool(((self.colors >= 0) & (self.colors <= 1)).all()):
            raise ValueError("PointCloud: colors must lie in [0, 1]")
        if self.confidence is not None and n and not bool(torch.isfinite(self.confidence).all()):
            raise ValueError("PointCloud: confidence contains NaN or infinite values")

    def __len__(self) -> int:
        return self.points.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PointCloud":
        conf = None if self.confidence is None else self.confidence.to(device=device, dtype=dtype)
        return PointCloud(self.points.to(device=device, dtype=dtype), self.colors.to(device=device, dtype=dtype),
                          conf, validate=False)

    def __getitem__(self, index) -> "PointCloud":
        conf = None if self.confidence is None else self.confidence[index]
        return PointCloud(self.points[index], self.colors[index], conf, validate=False)

    def to_gaussians(self, radius: float, opacity: float = 1.0) -> Gaussians:
        """Each point as an isotropic splat of standard deviation ``radius`` with its colour (SH degree 0);
        this is how point clouds are rendered."""
        if not radius > 0:
            raise ValueError(f"PointCloud.to_gaussians: radius must be > 0, got {radius}")
        n = len(self)
        pts = self.points
        rot = pts.new_zeros(n, 4)
        rot[:, 0] = 1
        return Gaussians(
            means=pts,
            scales=pts.new_full((n, 3), radius),
            rotations=rot,
            opacities=pts.new_full((n,), opacity),
            sh=rgb_to_sh_dc(self.colors.to(pts))[:, None, :],
        )
