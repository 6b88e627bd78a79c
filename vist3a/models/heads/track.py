"""VGGT track head: a DPT feature extractor (features only, half resolution, no position embedding) and an
iterative CoTracker-style predictor (correlation pyramid + space/time transformer with virtual tracks).

Forward: query points (B, N, 2) in pixels (x, y) of frame 0 -> per-iteration tracks (B, S, N, 2) in pixels,
visibility (B, S, N) and confidence (B, S, N) in [0, 1]. Frame 0 keeps the query points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Mlp
from .dpt import DPTHead

__all__ = ["TrackHead", "TrackerPredictor", "UpdateFormer"]


# ---------------------------------------------------------------------- sampling helpers
def _grid_sample_pixels(x: Tensor, coords: Tensor, padding_mode: str) -> Tensor:
    """Bilinear sample (B, C, H, W) at pixel coordinates (B, Ho, Wo, 2) (x, y), 0 = first pixel centre."""
    h, w = x.shape[-2:]
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], dtype=x.dtype, device=x.device)
    grid = coords.to(x.dtype) * scale - 1
    return F.grid_sample(x, grid, align_corners=True, padding_mode=padding_mode)


def _sample_points(fmap: Tensor, points: Tensor) -> Tensor:
    """fmap (B, C, H, W), points (B, R, 2) -> (B, R, C) (border padding)."""
    b = fmap.shape[0]
    feats = _grid_sample_pixels(fmap, points[:, :, None], "border")  # (B, C, R, 1)
    return feats.permute(0, 2, 1, 3).reshape(b, -1, feats.shape[1])


def _sincos_1d(dim: int, pos: Tensor, base: float = 10000.0) -> Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / base ** omega
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def _grid_sincos(dim: int, h: int, w: int) -> Tensor:
    """(1, dim, h, w): first half embeds the column x, second half the row y (base 10000)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, xs), _sincos_1d(dim // 2, ys)], dim=1)
    return emb.reshape(1, h, w, dim).permute(0, 3, 1, 2)


def _flow_embedding(xy: Tensor, channels: int) -> Tensor:
    """(B, N, 2) -> (B, N, 2*channels): interleaved sin/cos of x then of y, frequencies k * 1000/channels."""
    div = (torch.arange(0, channels, 2, device=xy.device, dtype=torch.float32) * (1000.0 / channels))
    out = []
    for c in (xy[..., 0:1], xy[..., 1:2]):
        pe = torch.zeros(*xy.shape[:-1], channels, device=xy.device, dtype=torch.float32)
        pe[..., 0::2] = torch.sin(c * div)
        pe[..., 1::2] = torch.cos(c * div)
        out.append(pe)
    return torch.cat(out, dim=-1)


# ---------------------------------------------------------------------- transformer
class AttnBlock(nn.Module):
    """x = norm1(x); x = x + MHA(x); x = x + mlp(norm2(x)) (note: the residual starts after norm1)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.cross_attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Alternating time attention (per track) and space attention through ``num_virtual`` virtual tracks."""

    def __init__(self, depth: int, input_dim: int, hidden: int, output_dim: int, num_heads: int = 8,
                 mlp_ratio: float = 4.0, num_virtual: int = 64) -> None:
        super().__init__()
        self.num_virtual = num_virtual
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual, 1, hidden))  # (sic) published name
        self.time_blocks = nn.ModuleList(AttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, T, input_dim) -> (B, N, T, output_dim)."""
        tokens = self.input_transform(self.input_norm(x))
        init = tokens
        b, _, t, _ = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.repeat(b, 1, t, 1).to(tokens.dtype)], dim=1)
        n = tokens.shape[1]
        every = len(self.time_blocks) // len(self.space_virtual_blocks)
        j = 0
        for i, blk in enumerate(self.time_blocks):
            tokens = blk(tokens.reshape(b * n, t, -1)).reshape(b, n, t, -1)
            if i % every == 0:
                space = tokens.permute(0, 2, 1, 3).reshape(b * t, n, -1)
                points, virtual = space[:, :n - self.num_virtual], space[:, n - self.num_virtual:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                tokens = torch.cat([points, virtual], dim=1).reshape(b, t, n, -1).permute(0, 2, 1, 3)
                j += 1
        tokens = tokens[:, :n - self.num_virtual] + init
        return self.flow_head(self.output_norm(tokens))


class TrackerPredictor(nn.Module):
    def __init__(self, latent_dim: int = 128, hidden: int = 384, stride: int = 2, corr_levels: int = 7,
                 corr_radius: int = 4, depth: int = 6, max_scale: float = 518.0, num_heads: int = 8,
                 num_virtual: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.stride = stride
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.max_scale = max_scale
        self.transformer_dim = 3 * latent_dim + 4
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden, latent_dim)
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(depth, self.transformer_dim, hidden, latent_dim + 2, num_heads, 4.0,
                                         num_virtual)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def _correlations(self, pyramid: list[Tensor], targets: Tensor, coords: Tensor) -> Tensor:
        """targets (B, S, N, C), coords (B, S, N, 2) at feature resolution -> (B, S, N, levels*(2r+1)^2)."""
        b, s, n, c = targets.shape
        r = self.corr_radius
        d = torch.linspace(-r, r, 2 * r + 1, dtype=coords.dtype, device=coords.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        delta = torch.stack([dy, dx], dim=-1)  # (as published: offsets stacked (dy, dx) and used as (x, y))
        out = []
        for i, fmaps in enumerate(pyramid):
            h, w = fmaps.shape[-2:]
            corr = torch.matmul(targets, fmaps.reshape(b, s, c, h * w)) / math.sqrt(c)
            centre = coords.reshape(b * s * n, 1, 1, 2) / (2 ** i)
            sampled = _grid_sample_pixels(corr.reshape(b * s * n, 1, h, w), centre + delta[None], "zeros")
            out.append(sampled.reshape(b, s, n, -1))
        return torch.cat(out, dim=-1)

    def forward(self, query_points: Tensor, fmaps: Tensor, iters: int = 4) -> tuple[list[Tensor], Tensor, Tensor]:
        b, n, _ = query_points.shape
        _, s, c, hh, ww = fmaps.shape
        dtype = self.fmap_norm.weight.dtype
        fmaps, query_points = fmaps.to(dtype), query_points.to(dtype)
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        q = query_points / float(self.stride)
        coords = q.reshape(b, 1, n, 2).repeat(1, s, 1, 1)
        track_feats = _sample_points(fmaps[:, 0], coords[:, 0]).unsqueeze(1).repeat(1, s, 1, 1)
        first = coords[:, 0].clone()
        pyramid = [fmaps]
        for _ in range(self.corr_levels - 1):
            prev = pyramid[-1]
            pooled = F.avg_pool2d(prev.flatten(0, 1), 2, 2)
            pyramid.append(pooled.reshape(b, s, c, *pooled.shape[-2:]))
        pos = _grid_sincos(self.transformer_dim, hh, ww).to(device=fmaps.device, dtype=dtype)
        ref = torch.cat([self.query_ref_token[:, :1], self.query_ref_token[:, 1:2].expand(-1, s - 1, -1)], dim=1)
        preds = []
        for _ in range(iters):
            coords = coords.detach()
            corr = self._correlations(pyramid, track_feats, coords)
            corr = self.corr_mlp(corr.permute(0, 2, 1, 3).reshape(b * n, s, -1))
            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(b * n, s, 2)
            flow_emb = torch.cat([_flow_embedding(flows, self.latent_dim // 2).to(dtype), flows / self.max_scale,
                                  flows / self.max_scale], dim=-1)
            feats = track_feats.permute(0, 2, 1, 3).reshape(b * n, s, self.latent_dim)
            x = torch.cat([flow_emb, corr, feats], dim=2)
            x = x + _sample_points(pos.expand(b, -1, -1, -1), coords[:, 0]).reshape(b * n, 1, -1)
            x = x + ref.to(x.dtype)
            delta = self.updateformer(x.reshape(b, n, s, -1)).reshape(b * n, s, -1)
            feats = feats.reshape(-1, self.latent_dim)
            feats = self.ffeat_updater(self.ffeat_norm(delta[..., 2:].reshape(-1, self.latent_dim))) + feats
            track_feats = feats.reshape(b, n, s, self.latent_dim).permute(0, 2, 1, 3)
            coords = coords + delta[..., :2].reshape(b, n, s, 2).permute(0, 2, 1, 3)
            coords[:, 0] = first
            preds.append(coords * self.stride)
        flat = track_feats.reshape(b * s * n, self.latent_dim)
        vis = torch.sigmoid(self.vis_predictor(flat).reshape(b, s, n))
        conf = torch.sigmoid(self.conf_predictor(flat).reshape(b, s, n))
        return preds, vis, conf


class TrackHead(nn.Module):
    def __init__(self, dim_in: int = 2048, patch_size: int = 14, features: int = 128, iters: int = 4,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024), hidden: int = 384, depth: int = 6,
                 corr_levels: int = 7, corr_radius: int = 4, num_heads: int = 8, num_virtual: int = 64) -> None:
        super().__init__()
        self.iters = iters
        self.feature_extractor = DPTHead(dim_in, patch_size, features=features, out_channels=out_channels,
                                         feature_only=True, down_ratio=2, pos_embed=False)
        self.tracker = TrackerPredictor(features, hidden, stride=2, corr_levels=corr_levels,
                                        corr_radius=corr_radius, depth=depth, num_heads=num_heads,
                                        num_virtual=num_virtual)

    def forward(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                query_points: Tensor, iters: int | None = None) -> tuple[list[Tensor], Tensor, Tensor]:
        fmaps = self.feature_extractor(layers, image_hw, patch_start_idx)
        return self.tracker(query_points.to(fmaps.dtype), fmaps, iters or self.iters)
