"""`Pointmap`: per-pixel world points of V views (VGGT's output form).

* ``points``     (V, H, W, 3) world-space point seen at each pixel.
* ``confidence`` (V, H, W)    non-negative, larger = more reliable (VGGT's is 1 + exp(x) >= 1).
* ``colors``     (V, H, W, 3) RGB in [0, 1] of each pixel.
* ``cameras``    :class:`~vist3a.cameras.Cameras` with V views of size W x H, or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras
from .pointcloud import PointCloud

__all__ = ["Pointmap"]


@dataclass(eq=False)
class Pointmap:
    points: Tensor
    confidence: Tensor
    colors: Tensor
    cameras: Cameras | None = None

    def __post_init__(self) -> None:
        if self.points.ndim != 4 or self.points.shape[-1] != 3:
            raise ValueError(f"Pointmap: points must be (V, H, W, 3), got {tuple(self.points.shape)}")
        v, h, w = self.points.shape[:3]
        if tuple(self.confidence.shape) != (v, h, w):
            raise ValueError(f"Pointmap: confidence must be ({v}, {h}, {w}), got {tuple(self.confidence.shape)}")
        if tuple(self.colors.shape) != (v, h, w, 3):
            raise ValueError(f"Pointmap: colors must be ({v}, {h}, {w}, 3), got {tuple(self.colors.shape)}")
        if self.cameras is not None and (
            len(self.cameras) != v or (self.cameras.width, self.cameras.height) != (w, h)
        ):
            raise ValueError(
                f"Pointmap: cameras ({len(self.cameras)} views of {self.cameras.width}x{self.cameras.height}) "
                f"do not match the points ({v} views of {w}x{h})"
            )

    @property
    def num_views(self) -> int:
        return self.points.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Pointmap":
        cams = None if self.cameras is None else self.cameras.to(device=device, dtype=dtype)
        return Pointmap(
            self.points.to(device=device, dtype=dtype),
            self.confidence.to(device=device, dtype=dtype),
            self.colors.to(device=device, dtype=dtype),
            cams,
        )

    def to_point_cloud(self, min_confidence: float = 0.0, drop_percentile: float = 0.0) -> PointCloud:
        """Flatten to a :class:`PointCloud`, keeping finite points whose confidence is >= ``min_confidence`` and,
        when ``drop_percentile`` p > 0, above the p-th percentile of all confidences (VGGT demo style)."""
        if not 0.0 <= drop_percentile < 100.0:
            raise ValueError(f"Pointmap.to_point_cloud: drop_percentile must be in [0, 100), got {drop_percentile}")
        pts = self.points.reshape(-1, 3)
        conf = self.confidence.reshape(-1)
        cols = self.colors.reshape(-1, 3).clamp(0.0, 1.0)
        keep = torch.isfinite(pts).all(dim=-1) & torch.isfinite(conf) & (conf >= min_confidence)
        if drop_percentile > 0 and conf.numel():
            # kthvalue, unlike torch.quantile, has no input-size limit (pointmaps reach tens of millions of pixels)
            k = max(1, min(conf.numel(), int(round(drop_percentile / 100.0 * conf.numel()))))
            keep &= conf > conf.float().kthvalue(k).values.to(conf.dtype)
        return PointCloud(pts[keep], cols[keep], conf[keep])
