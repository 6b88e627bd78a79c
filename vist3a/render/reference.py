"""Slow dense reference rasteriser, for tests and benchmarks only.

Every pixel is blended against every visible splat (same projection and culling as the fast path) in global depth
order, one splat at a time, with the per-pixel loop body of gsplat's classic CUDA kernel: skip when ``sigma < 0`` or
``alpha < 1/255``; stop (excluding the splat) when ``T (1 - alpha) <= 1e-4``. No tiles, no cumulative products, so it
checks the tiled rasteriser's tiling, sorting, padding and cumprod transmittance independently. It loops over splats
in Python: use it for small scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .api import RenderOutput, render_with
from .projection import ALPHA_THRESHOLD
from .rasterizer import MAX_ALPHA, TRANSMITTANCE_STOP

__all__ = ["rasterize_dense", "render_reference"]


def rasterize_dense(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    depths: Tensor,
    radii: Tensor,
    visible: Tensor,
    width: int,
    height: int,
    background: Tensor,
) -> tuple[Tensor, Tensor]:
    """Render one camera densely; same arguments and returns as :func:`vist3a.render.rasterizer.rasterize_tiles`."""
    del radii  # every pixel sees every visible splat
    device, dtype = means2d.device, means2d.dtype
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    px, py = xs.reshape(-1), ys.reshape(-1)
    trans = torch.ones_like(px)
    done = torch.zeros_like(px, dtype=torch.bool)
    acc = px.new_zeros(len(px), features.shape[-1])
    ids = torch.nonzero(visible, as_tuple=False)[:, 0]
    ids = ids[torch.argsort(depths.detach()[ids], stable=True)]
    for i in ids.tolist():
        dx, dy = means2d[i, 0] - px, means2d[i, 1] - py
        a, b, c = conics[i]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = (opacities[i] * torch.exp(-sigma)).clamp_max(MAX_ALPHA)
        next_trans = trans * (1.0 - alpha)
        with torch.no_grad():
            used = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
            stop = used & (next_trans <= TRANSMITTANCE_STOP)
            done = done | stop
            used = used & ~stop
        acc = acc + torch.where(used, alpha * trans, torch.zeros_like(alpha))[:, None] * features[i]
        trans = torch.where(used, next_trans, trans)
    image = acc + trans[:, None] * background
    return image.reshape(height, width, -1), trans.reshape(height, width)


def render_reference(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """:func:`vist3a.render.render` computed by :func:`rasterize_dense` (same arguments and output; slow)."""
    return render_with(
        rasterize_dense,
        gaussians,
        cameras,
        sh_degree=sh_degree,
        background=background,
        near_plane=near_plane,
        far_plane=far_plane,
    )
