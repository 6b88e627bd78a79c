"""DINOv2 ViT with register tokens, as used by VGGT/AnySplat for patch embedding (ViT-L/14, 4 registers).

Token layout inside the blocks: ``[cls, register x R, patches (row-major)]``. Order of operations when embedding:
patch conv -> prepend cls -> add the (interpolated) position embedding to cls + patches -> insert the registers
after cls (registers get no position embedding). After the last block the final LayerNorm is applied and only the
patch tokens are returned.

The position embedding is stored for a square grid of ``img_size / patch_size`` tokens per side (37 for 518 px).
For any other grid it is resized with bicubic interpolation, ``antialias=True`` and an explicit output size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import Block

__all__ = ["DinoVisionTransformer", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, H/p * W/p, C) with one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"PatchEmbed: image size {h}x{w} must be a multiple of {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINOv2 with registers. ``forward(images (B, 3, H, W)) -> normalised patch tokens (B, H/p*W/p, C)``.

    Cut-point helpers: :meth:`embed` (tokens entering block 0), :meth:`run_blocks` (blocks [start, end)),
    :meth:`finish` (final norm, prefix dropped) and :meth:`add_prefix` (cls + position embedding + registers for
    patch features coming from elsewhere, the stitched-decoder path).

    :meth:`cut_front` (stitched decoders) deletes the patch conv and the first k blocks for good; the kept blocks
    are re-indexed from 0 (``blocks.j`` = original block j + k, the official VIST3A layout) and ``first_block``
    remembers k, so ``run_blocks`` keeps taking ORIGINAL block indices.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.embed_dim = embed_dim
        # Parameter registration order reproduces the published state-dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference, kept for the checkpoint
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, qk_norm=False, norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.first_block = 0  # original index of blocks[0] (> 0 after cut_front)
        self.gradient_checkpointing = False  # recompute blocks in backward (training only; no numerical effect)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        """Position embedding (1, 1 + grid_h*grid_w, C) for a token grid, interpolated when it differs."""
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        if grid_h * grid_w == n and grid_h == grid_w:
            return self.pos_embed.to(dtype)
        pe = self.pos_embed.float()
        cls_pe, patch_pe = pe[:, :1], pe[:, 1:]
        patch_pe = patch_pe.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pe = F.interpolate(patch_pe, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pe, patch_pe], dim=1).to(dtype)

    def add_prefix(self, patch_tokens: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """(B, grid_h*grid_w, C) patch features -> (B, 1 + R + N, C): cls, + position embedding, registers."""
        b = patch_tokens.shape[0]
        x = torch.cat([self.cls_token.to(patch_tokens.dtype).expand(b, -1, -1), patch_tokens], dim=1)
        x = x + self.position_embedding(grid_h, grid_w, x.dtype)
        regs = self.register_tokens.to(x.dtype).expand(b, -1, -1)
        return torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)

    def cut_front(self, k: int) -> None:
        """Delete the patch conv and the first ``k`` blocks (original numbering); the rest are re-indexed from 0."""
        if not self.first_block <= k <= self.first_block + len(self.blocks):
            raise ValueError(f"DINOv2 cut_front({k}): blocks {self.first_block}..{self.first_block + len(self.blocks)}"
                             " are present")
        self.blocks = nn.ModuleList(list(self.blocks)[k - self.first_block:])
        self.first_block = k
        self.patch_embed = None

    def embed(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + R + N, C) entering block 0."""
        if self.patch_embed is None:
            raise ValueError(f"DINOv2: the patch embedding and blocks 0..{self.first_block - 1} were removed "
                             "(stitched decoder); feed features from the stitching layer instead of images")
        h, w = images.shape[-2:]
        x = self.patch_embed(images)
        return self.add_prefix(x, h // self.patch_size, w // self.patch_size)

    def run_blocks(self, tokens: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """Blocks [start, end) in original numbering (see :meth:`cut_front`)."""
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if start < self.first_block:
            raise ValueError(f"DINOv2: blocks before {self.first_block} were removed; cannot start at block {start}")
        first = self.first_block
        for blk in self.blocks[start - first:None if end is None else end - first]:
            tokens = checkpoint(blk, tokens, use_reentrant=False) if ckpt else blk(tokens)
        return tokens

    def finish(self, tokens: Tensor) -> Tensor:
        """Final LayerNorm and drop cls + registers -> (B, N, C)."""
        return self.norm(tokens)[:, self.num_prefix_tokens:]

    def forward(self, images: Tensor) -> Tensor:
        return self.finish(self.run_blocks(self.embed(images)))
