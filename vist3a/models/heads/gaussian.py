"""AnySplat Gaussian head and Gaussian adapter.

:class:`GaussianHead` is the DPT trunk of :mod:`.dpt` (same layers, same key names) with one addition: after
``output_conv1`` and the bilinear resize to (H, W) it adds ``ReLU(conv7x7(3 -> hidden)(image in [0, 1]))``
(``input_merger``), then the position embedding x 0.1, then ``output_conv2`` (conv3x3 -> ReLU -> conv1x1).
No activation: channel 0 is the density logit, channels 1 .. 7 + 3K are raw Gaussian parameters (K SH bases), the
last channel is a confidence used only for voxel fusion.

:func:`gaussian_adapter` maps raw parameters to Gaussians (AnySplat's ``UnifiedGaussianAdapter``):
``scales = min(0.001 * softplus(raw[0:3]), 0.3)``, ``rotations = raw[3:7] / (|raw[3:7]| + 1e-8)`` (**xyzw**),
``harmonics = raw[7:].view(3, K) * sh_mask`` (channel-major: the first K values are R), and
``covariances = R S S^T R^T``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...rotations import quat_xyzw_to_matrix
from .dpt import DPTHead

__all__ = [
    "GaussianAdapterOutput",
    "GaussianHead",
    "gaussian_adapter",
    "opacity_from_density",
    "sh_mask",
]


class GaussianHead(DPTHead):
    """``forward(layers, images (B, S, 3, H, W) in [0, 1], patch_start_idx) -> raw (B, S, output_dim, H, W)``."""

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 84, features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024), hidden: int = 128) -> None:
        super().__init__(dim_in, patch_size, output_dim, activation="linear", features=features,
                         out_channels=out_channels, pos_embed=True, feature_only=False, down_ratio=1)
        self.input_merger = nn.Sequential(nn.Conv2d(3, hidden, 7, 1, 3), nn.ReLU())
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, hidden, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, output_dim, 1, 1, 0),
        )

    def _forward_frames_rgb(self, layers, images: Tensor, patch_start_idx: int, frames: slice) -> Tensor:
        imgs = images[:, frames]
        h, w = imgs.shape[-2:]
        out = self.fused_features(layers, (h, w), patch_start_idx, frames)
        direct = self.input_merger(imgs.flatten(0, 1).to(self.dtype))
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        out = self._add_pos(out + direct, w, h)
        return self.scratch.output_conv2(out)

    def forward(self, layers: Sequence[Tensor], images: Tensor, patch_start_idx: int,
                frames_chunk_size: int = 8) -> Tensor:
        b, s = images.shape[:2]
        chunk = s if not frames_chunk_size or frames_chunk_size >= s else frames_chunk_size
        outs = [self._forward_frames_rgb(layers, images, patch_start_idx, slice(i, min(i + chunk, s)))
                for i in range(0, s, chunk)]
        return torch.cat([o.reshape(b, -1, *o.shape[1:]) for o in outs], dim=1)


# ---------------------------------------------------------------------- adapter
def sh_mask(degree: int, dtype=torch.float32, device=None) -> Tensor:
    """(K,) weights: 1 for degree 0, 0.1 * 0.25**l for degree l >= 1."""
    mask = torch.ones((degree + 1) ** 2, dtype=dtype, device=device)
    for l in range(1, degree + 1):
        mask[l * l:(l + 1) ** 2] = 0.1 * 0.25 ** l
    return mask


def opacity_from_density(density: Tensor, global_step: int = 0, initial: float = 0.0, final: float = 0.0,
                         warm_up: int = 1) -> Tensor:
    """AnySplat's ``map_pdf_to_opacity``: ``0.5 * (1 - (1-p)^e + p^(1/e))`` with ``e = 2^x`` (x ramps
    from ``initial`` to ``final`` over ``warm_up`` steps). With the published (0, 0, 1) this is p."""
    x = initial + min(global_step / warm_up, 1) * (final - initial)
    e = 2 ** x
    return 0.5 * (1 - (1 - density) ** e + density ** (1 / e))


@dataclass
class GaussianAdapterOutput:
    """Batched Gaussians in AnySplat's layout: means (B, N, 3), scales (B, N, 3), rotations (B, N, 4) **xyzw**,
    harmonics (B, N, 3, K), opacities (B, N), covariances (B, N, 3, 3)."""

    means: Tensor
    scales: Tensor
    rotations: Tensor
    harmonics: Tensor
    opacities: Tensor
    covariances: Tensor


def gaussian_adapter(means: Tensor, opacities: Tensor, raw: Tensor, sh_degree: int, eps: float = 1e-8
                     ) -> GaussianAdapterOutput:
    """means (B, N, 3), opacities (B, N), raw (B, N, 7 + 3K) -> :class:`GaussianAdapterOutput` (float32)."""
    k = (sh_degree + 1) ** 2
    if raw.shape[-1] != 7 + 3 * k:
        raise ValueError(f"gaussian_adapter: raw has {raw.shape[-1]} channels, expected {7 + 3 * k}")
    scales = (0.001 * F.softplus(raw[..., 0:3])).clamp_max(0.3)
    rot = raw[..., 3:7]
    rot = rot / (rot.norm(dim=-1, keepdim=True) + eps)
    sh = raw[..., 7:].reshape(*raw.shape[:-1], 3, k) * sh_mask(sh_degree, raw.dtype, raw.device)
    r = quat_xyzw_to_matrix(rot, eps=1e-8)
    s = scales.diag_embed()
    cov = r @ s @ s.transpose(-1, -2) @ r.transpose(-1, -2)
    return GaussianAdapterOutput(means.float(), scales.float(), rot.float(), sh.float(), opacities.float(),
                                 cov.float())
