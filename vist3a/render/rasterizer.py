"""Tiled, vectorised Gaussian-splat rasteriser in pure PyTorch (any device, float32 / float64, differentiable).

It composites projected splats (see :mod:`vist3a.render.projection`) exactly as gsplat's "classic" CUDA kernel does:

* pixel (i, j) is evaluated at its centre (j + 0.5, i + 0.5); with ``d = mean2d - pixel`` and conic (a, b, c),
  ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` and ``alpha = min(0.999, opacity exp(-sigma))``;
* a splat is skipped at a pixel when ``sigma < 0`` or ``alpha < 1/255``;
* splats are blended front to back in depth order with transmittance ``T`` (1 at the start); a pixel stops at the
  first splat that would bring ``T (1 - alpha)`` to <= 1e-4, and that splat is not blended;
* ``out = sum_i alpha_i T_i f_i + T_final * background`` for the per-splat features ``f`` (colour and depth).

Implementation: the image is cut into square tiles (8x8 by default; gsplat uses 16x16; the tile size does not change
the result, because outside a splat's pixel box its alpha is below 1/255, where it is skipped anyway). Each splat is
listed in every tile its pixel box touches (gsplat's rule), built with tensor ops (``repeat_interleave``), and the (tile, splat) pairs are sorted by
tile and, stably, by depth. Tiles are processed in chunks of similar list length, longest first: a chunk gathers its
splat lists padded to its longest list and evaluates every pixel against every listed splat at once. Transmittance
comes from a cumulative product along the list (exclusive product for ``T_i``, inclusive product for the stop test;
the blended splats form a prefix because the product never increases). ``chunk_elements`` bounds the pixel x splat
pairs held at once; longer lists are split into segments that carry the transmittance and the running product from
one to the next. Python loops run over chunks and segments only, never over splats or pixels. Everything is
differentiable with autograd (cumprod's backward is safe because ``1 - alpha >= 0.001``).
"""

from __future__ import annotations

import bisect

import torch
import torch.utils.checkpoint
from torch import Tensor

from .projection import ALPHA_THRESHOLD

__all__ = ["MAX_ALPHA", "TILE_SIZE", "TRANSMITTANCE_STOP", "composite_segment", "rasterize_tiles"]

TILE_SIZE = 8  # results do not depend on it (boxes are conservative); 8 is ~2x faster than 16 on CPU
MAX_ALPHA = 0.999
TRANSMITTANCE_STOP = 1e-4
# Pixel x splat pairs evaluated at once: 2M (8 MB per float32 temporary) keeps the working set cache-friendly; on
# the 2-core benchmark it is ~2.5x faster than 8M.
DEFAULT_CHUNK_ELEMENTS = 1 << 21
CHECKPOINT_AFTER = 8  # with autograd, recompute segments in backward once the work exceeds this many budgets


def composite_segment(
    xs: Tensor,
    ys: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    mask: Tensor,
    state: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Blend one depth-sorted segment of splats into G pixel grids (e.g. tiles) of Y x X pixels.

    Args:
        xs: (G, X) pixel-centre x coordinates of each grid's columns.
        ys: (G, Y) pixel-centre y coordinates of each grid's rows.
        means2d: (G, L, 2) splat centres, front to back along L.
        conics: (G, L, 3) inverse 2D covariances (a, b, c).
        opacities: (G, L).
        features: (G, L, F) values to blend (colour, depth, ...).
        mask: (G, L) bool, False for padding.
        state: None before the first segment, else the state returned for the previous segment.

    Returns:
        accumulated (G, Y, X, F) = sum_i alpha_i T_i f_i over the segment, and the state after it: (transmittance
        (G, Y, X) after the last blended splat, running product (G, Y, X) of (1 - alpha) over all splats so far,
        including those after the stop, which keeps a stopped pixel stopped in later segments).
    """
    g, n_y, n_x, n_l = len(xs), ys.shape[1], xs.shape[1], means2d.shape[1]
    # sigma = 0.5 a dx^2 + 0.5 c dy^2 + b dx dy splits into a row term, a column term and one product, so only three
    # full-size (G, Y, X, L) operations are needed; computed as -sigma to save a negation.
    dx = means2d[:, None, :, 0] - xs[:, :, None]  # (G, X, L)
    dy = means2d[:, None, :, 1] - ys[:, :, None]  # (G, Y, L)
    a, b, c = conics.unbind(-1)  # (G, L)
    col = (-0.5 * a)[:, None] * dx * dx  # (G, X, L)
    row = (-0.5 * c)[:, None] * dy * dy  # (G, Y, L)
    cross = -b[:, None] * dx  # (G, X, L)
    neg_sigma = (row[:, :, None] + col[:, None]) + dy[:, :, None] * cross[:, None]  # (G, Y, X, L)
    alpha = (opacities[:, None, None] * torch.exp(neg_sigma)).clamp_max(MAX_ALPHA)
    with torch.no_grad():
        used = (neg_sigma <= 0) & (alpha >= ALPHA_THRESHOLD) & mask[:, None, None]
    alpha = alpha * used  # (multiplying by a bool mask is much faster than torch.where on CPU)
    # inclusive[..., i] = running product after splat i; exclusive[..., i] = before splat i.
    inclusive = torch.cumprod(1.0 - alpha, dim=-1)
    if state is None:
        transmittance = running = alpha.new_ones(g, n_y, n_x)
    else:
        transmittance, running = state
        inclusive = running[..., None] * inclusive
    exclusive = torch.cat([running[..., None], inclusive[..., :-1]], dim=-1)
    with torch.no_grad():
        # The blended splats are a prefix of every row because the product never increases; its length comes from
        # a binary search on the (ascending) negated products.
        keep = inclusive > TRANSMITTANCE_STOP
        stop = torch.full_like(running[..., None], -TRANSMITTANCE_STOP)
        n_keep = torch.searchsorted(-inclusive, stop, side="left")  # (G, Y, X, 1)
    weights = (alpha * keep) * exclusive
    accumulated = (weights.reshape(g, n_y * n_x, n_l) @ features).reshape(g, n_y, n_x, -1)
    last = inclusive.gather(-1, (n_keep - 1).clamp_min(0))[..., 0]
    transmittance = torch.where(n_keep[..., 0] > 0, last, transmittance)
    return accumulated, (transmittance, inclusive[..., -1])


def _tile_pairs(means2d: Tensor, radii: Tensor, tiles_x: int, tiles_y: int, tile_size: int) -> tuple[Tensor, Tensor]:
    """(tile id, splat index) pairs for depth-sorted splats, sorted by tile and, within a tile, by depth.

    A splat with centre m and box half-size r touches tiles floor((m - r)/ts) .. ceil((m + r)/ts) - 1 per axis,
    clamped to the grid (gsplat's rule). ``means2d`` (M, 2) and ``radii`` (M, 2) must already be in depth order.
    """
    device = means2d.device
    m = means2d.detach()
    r = radii.to(m.dtype)
    lo = torch.floor((m - r) / tile_size)
    hi = torch.ceil((m + r) / tile_size)
    limits = torch.tensor([tiles_x, tiles_y], device=device, dtype=m.dtype)
    lo = torch.minimum(lo.clamp_min(0), limits).long()
    hi = torch.minimum(hi.clamp_min(0), limits).long()
    size = (hi - lo).clamp_min(0)
    counts = size[:, 0] * size[:, 1]  # (M,)
    splat = torch.repeat_interleave(torch.arange(len(m), device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(splat), device=device) - start[splat]
    width = size[splat, 0]
    tx = lo[splat, 0] + local % width.clamp_min(1)
    ty = lo[splat, 1] + local // width.clamp_min(1)
    tile = ty * tiles_x + tx
    tile, order = torch.sort(tile, stable=True)  # stable: depth order survives within a tile
    return tile, splat[order]


def rasterize_tiles(
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
    tile_size: int = TILE_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Render one camera with the tiled rasteriser.

    Args:
        means2d: (N, 2) pixel coordinates of the splat centres.
        conics: (N, 3) inverse 2D covariances (a, b, c).
        opacities: (N,).
        features: (N, F) per-splat values to blend (e.g. RGB and depth).
        depths: (N,) camera-space z, the blending order.
        radii: (N, 2) integer pixel box half-sizes.
        visible: (N,) bool; invisible splats are ignored.
        width, height: image size.
        background: (F,) added with weight T_final.
        tile_size: tile edge in pixels.
        chunk_elements: memory budget, the number of pixel x splat pairs evaluated at once.

    Returns:
        (image (height, width, F), transmittance T_final (height, width)).
    """
    device, dtype = means2d.device, means2d.dtype
    n_feat = features.shape[-1]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles, tile_pixels = tiles_x * tiles_y, tile_size * tile_size

    ids = torch.nonzero(visible, as_tuple=False)[:, 0]
    ids = ids[torch.argsort(depths.detach()[ids], stable=True)]  # front to back
    tile, splat = _tile_pairs(means2d[ids], radii[ids], tiles_x, tiles_y, tile_size)
    pair_gaussian = ids[splat]  # (pairs,) Gaussian index per (tile, splat) pair
    counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.cumsum(counts, 0) - counts

    # Longest lists first, so a chunk's padding (to its first tile's length) stays small.
    tile_order = torch.argsort(counts, descending=True, stable=True)
    counts_sorted = counts[tile_order].tolist()
    local = torch.arange(tile_size, device=device, dtype=dtype) + 0.5

    plan = _plan_chunks(counts_sorted, tile_pixels, chunk_elements)
    # With autograd, every chunk's temporaries stay alive until backward. When that would exceed a few memory
    # budgets, recompute each segment in backward instead (activation checkpointing): peak memory stays ~one chunk.
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    padded = sum(n_group * tile_pixels * longest for _, n_group, longest in plan)
    recompute = needs_grad and padded > CHECKPOINT_AFTER * chunk_elements

    colors_out, trans_out = [], []
    for start, n_group, longest in plan:
        group = tile_order[start : start + n_group]
        xs = (group % tiles_x).to(dtype)[:, None] * tile_size + local  # (G, ts)
        ys = (group // tiles_x).to(dtype)[:, None] * tile_size + local
        group_counts, group_offsets = counts[group][:, None], offsets[group][:, None]
        acc = state = None
        seg_len = max(1, chunk_elements // (n_group * tile_pixels))
        for seg in range(0, longest, seg_len):
            slot = torch.arange(seg, min(seg + seg_len, longest), device=device)[None]
            mask = slot < group_counts  # (G, L)
            g = pair_gaussian[torch.where(mask, group_offsets + slot, 0)]  # (G, L) Gaussian ids
            args = (xs, ys, means2d[g], conics[g], opacities[g], features[g], mask, state)
            if recompute:
                part, state = torch.utils.checkpoint.checkpoint(composite_segment, *args, use_reentrant=False)
            else:
                part, state = composite_segment(*args)
            acc = part if acc is None else acc + part
        if state is None:  # tiles without splats
            acc = xs.new_zeros(n_group, tile_size, tile_size, n_feat)
            trans = xs.new_ones(n_group, tile_size, tile_size)
        else:
            trans = state[0]
        colors_out.append(acc.reshape(n_group, tile_pixels, n_feat))
        trans_out.append(trans.reshape(n_group, tile_pixels))

    inverse = torch.argsort(tile_order)
    colors = torch.cat(colors_out)[inverse]  # (n_tiles, P, F) in tile order
    trans = torch.cat(trans_out)[inverse]
    image = colors + trans[..., None] * background
    image = _untile(image, tiles_x, tiles_y, tile_size)[:height, :width]
    trans = _untile(trans[..., None], tiles_x, tiles_y, tile_size)[:height, :width, 0]
    return image, trans


def _plan_chunks(counts_sorted: list[int], tile_pixels: int, chunk_elements: int) -> list[tuple[int, int, int]]:
    """Group tiles (sorted by descending list length) into chunks: (first index, number of tiles, longest list).

    A chunk holds at most ``chunk_elements`` pixel x splat pairs (at least one tile; its list is then split into
    segments) and ends where lists drop below half its longest, so padding wastes at most about half the work.
    """
    neg = [-c for c in counts_sorted]  # ascending, for bisect
    plan, start, n_tiles = [], 0, len(counts_sorted)
    while start < n_tiles:
        longest = counts_sorted[start]
        n_group = min(n_tiles - start, chunk_elements // (tile_pixels * max(longest, 1)))
        n_similar = bisect.bisect_right(neg, -0.5 * longest, lo=start) - start
        n_group = max(1, min(n_group, n_similar))
        plan.append((start, n_group, longest))
        start += n_group
    return plan


def _untile(x: Tensor, tiles_x: int, tiles_y: int, tile_size: int) -> Tensor:
    """(tiles_y * tiles_x, ts * ts, F) -> (tiles_y * ts, tiles_x * ts, F)."""
    f = x.shape[-1]
    x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, f).permute(0, 2, 1, 3, 4)
    return x.reshape(tiles_y * tile_size, tiles_x * tile_size, f)
