"""MVDUSt3R's per-view heads: the linear pointmap head (with its image skip branch) and the Gaussian head.

Pixel layout shared by both: a token's vector of ``c * p * p`` values (p = 16) becomes a p x p pixel block through
``pixel_shuffle(p)``: channel ``ch`` at pixel (p*i + a, p*j + b) is element ``ch*p*p + a*p + b`` of token (i, j).

Outputs are channels-last per view: (B, H, W, C) (``conf`` / ``opacity`` (B, H, W)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SKIP_SCALE", "GaussianPixelHead", "LinearPts3dHead", "tokens_to_pixels"]

SKIP_SCALE = 1e-4  # the skip branch's output is added to the xyz channels times this


def tokens_to_pixels(tokens: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """(B, gh*gw, c*p*p) -> (B, c, gh*p, gw*p) (``pixel_shuffle``)."""
    b, n, d = tokens.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"MVDUSt3R head: {n} tokens do not form a {gh}x{gw} grid")
    x = tokens.transpose(1, 2).reshape(b, d, gh, gw)
    return F.pixel_shuffle(x, patch)


class _ConvBN(nn.Module):
    """``conv`` (zero padding, bias) -> ``norm`` (BatchNorm2d, eps 1e-5; running statistics in eval mode)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class LinearPts3dHead(nn.Module):
    """DUSt3R's ``LinearPts3d`` with MVDUSt3R's skip branch (``pts_head_config={'skip': True}``).

    ``feat = pixel_shuffle(proj(tokens))`` has 4 channels (x, y, z, conf). The skip branch reads
    ``concat(image in [-1, 1], feat[:3])`` (6 channels): conv3x3 -> BN -> SELU, conv5x5 -> BN -> SELU,
    conv5x5 -> BN -> SELU, conv3x3 -> BN (3 channels), and ``feat[:3] += 1e-4 * skip``. Then
    ``pts3d = xyz / |xyz| * expm1(|xyz|)`` (depth mode exp, |xyz| clamped at 1e-8) and
    ``conf = 1 + min(exp(feat[3]), 1e9 - 1)``.
    """

    def __init__(self, dim: int, patch: int = 16, skip: bool = True, skip_channels: int = 256) -> None:
        super().__init__()
        self.patch = int(patch)
        self.proj = nn.Linear(dim, 4 * self.patch ** 2)
        c = int(skip_channels)
        self.skip_proj = (nn.ModuleList([_ConvBN(6, c, 3), _ConvBN(c, c, 5), _ConvBN(c, c, 5), _ConvBN(c, 3, 3)])
                          if skip else None)

    def skip(self, images: Tensor, xyz: Tensor) -> Tensor:
        """The skip branch (before the 1e-4): images (B, 3, H, W) in [-1, 1], xyz (B, 3, H, W) -> (B, 3, H, W)."""
        x = torch.cat([images.to(xyz.dtype), xyz], dim=1)
        last = len(self.skip_proj) - 1
        for i, unit in enumerate(self.skip_proj):
            x = unit(x)
            if i < last:
                x = F.selu(x)
        return x

    def raw(self, tokens: Tensor, grid: tuple[int, int], images: Tensor | None, with_skip: bool = True) -> Tensor:
        """tokens (B, N, C), images (B, 3, H, W) in [-1, 1] -> raw feature map (B, 4, H, W) (skip included unless
        ``with_skip=False`` or the head has none)."""
        feat = tokens_to_pixels(self.proj(tokens), grid, self.patch)
        if self.skip_proj is not None and with_skip:
            if images is None:
                raise ValueError("MVDUSt3R point head: its skip branch reads the input images; pass them")
            xyz = feat[:, :3]
            feat = torch.cat([xyz + SKIP_SCALE * self.skip(images, xyz), feat[:, 3:]], dim=1)
        return feat

    @staticmethod
    def postprocess(feat: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 4, H, W) -> pts3d (B, H, W, 3), conf (B, H, W)."""
        xyz = feat[:, :3].permute(0, 2, 3, 1)
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        pts3d = xyz / d * torch.expm1(d)
        conf = 1.0 + feat[:, 3].exp().clamp(max=1e9 - 1)
        return pts3d, conf

    def forward(self, tokens: Tensor, grid: tuple[int, int], images: Tensor | None, with_skip: bool = True
                ) -> tuple[Tensor, Tensor]:
        return self.postprocess(self.raw(tokens, grid, images, with_skip))


def _mlp(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, out, bias=False))


class GaussianPixelHead(nn.Module):
    """MVDUSt3R's ``GSHead`` (skip off): one Gaussian per pixel from the (already ``dec_norm``-ed) tokens.

    ``t = LayerNorm(eps 1e-5)(tokens)``; four bias-free MLPs (Linear -> ReLU -> Linear) give, per pixel after the
    pixel shuffle: ``rgb`` (3 (sh_degree+1)^2, raw), ``opacity`` (sigmoid), ``scale`` (0.1 * raw, **not** forced
    positive) and ``rotation`` (raw / max(|raw|, 1e-5), a quaternion read as wxyz by the official renderer).
    """

    def __init__(self, dim: int, patch: int = 16, sh_degree: int = 0) -> None:
        super().__init__()
        self.patch = int(patch)
        p2 = self.patch ** 2
        self.rgb_channels = 3 * (int(sh_degree) + 1) ** 2
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.mlp_rgb = _mlp(dim, self.rgb_channels * p2)
        self.mlp_opacity = _mlp(dim, p2)
        self.mlp_scale2 = _mlp(dim, 3 * p2)
        self.mlp_rotation = _mlp(dim, 4 * p2)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
        """tokens (B, N, C) -> ``rgb`` (B, H, W, 3K), ``opacity`` (B, H, W), ``scale`` (B, H, W, 3), ``rotation``
        (B, H, W, 4)."""
        t = self.norm(tokens)

        def pix(mlp: nn.Module) -> Tensor:
            return tokens_to_pixels(mlp(t), grid, self.patch).permute(0, 2, 3, 1)

        return {
            "rgb": pix(self.mlp_rgb),
            "opacity": pix(self.mlp_opacity)[..., 0].sigmoid(),
            "scale": 0.1 * pix(self.mlp_scale2),
            "rotation": F.normalize(pix(self.mlp_rotation), dim=-1, eps=1e-5),
        }
