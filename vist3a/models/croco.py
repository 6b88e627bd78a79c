"""CroCo building blocks of MVDUSt3R: the ViT encoder and the cross-attention decoder block.

Attribute names follow the released MVDUSt3R checkpoints (``patch_embed.proj``, ``enc_blocks.i.attn.qkv``,
``dec_blocks.i.cross_attn.projq`` ...), so their state dicts load unchanged.

Conventions (stated once, used by :mod:`.mvdust3r`):

* tokens are (B, N, C), flattened row-major from the (H/16, W/16) patch grid: token t <-> (y, x) =
  (t // gw, t % gw);
* 2D RoPE (base 100) on q and k of every attention: the first half of each head rotates with the row y, the second
  with the column x, positions are the integer grid indices without offset (:func:`patch_positions`); memory
  tokens of other views carry their own (identical) grid positions;
* every LayerNorm of the encoder and decoder has eps 1e-6; no LayerScale, no drop-path, exact GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, Block, Mlp
from .rope import RotaryEmbedding2D

__all__ = ["CROCO_NORM_EPS", "CrossAttention", "DecoderBlock", "PatchEmbed16", "encoder_block", "patch_positions"]

CROCO_NORM_EPS = 1e-6


def patch_positions(batch: int, grid_h: int, grid_w: int, device=None) -> Tensor:
    """(batch, grid_h * grid_w, 2) int64 (y, x) grid indices, row-major, no offset."""
    ys = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    xs = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.stack([ys, xs], dim=-1)[None].expand(batch, -1, -1)


class PatchEmbed16(nn.Module):
    """``Conv2d(3 -> dim, k=p, s=p)`` with bias, flattened to tokens (B, gh*gw, dim). No norm, no position
    embedding, no cls token."""

    def __init__(self, dim: int, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [-1, 1], H and W multiples of the patch size -> tokens (B, gh*gw, dim)."""
        return self.proj(images).flatten(2).transpose(1, 2)


def encoder_block(dim: int, num_heads: int, mlp_ratio: float, rope: RotaryEmbedding2D) -> Block:
    """CroCo encoder block: pre-norm ``x + attn(LN(x))``, ``x + mlp(LN(x))`` (eps 1e-6, no LayerScale)."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, init_values=None, norm_eps=CROCO_NORM_EPS,
                 rope=rope)


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate ``projq/projk/projv`` (bias) and output ``proj``; RoPE on q (query
    positions) and k (memory positions); SDPA with scale 1/sqrt(head_dim)."""

    def __init__(self, dim: int, num_heads: int, rope: RotaryEmbedding2D | None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CrossAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self._rope = rope

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, hd)

    def forward(self, query: Tensor, memory: Tensor, qpos: Tensor, mpos: Tensor) -> Tensor:
        """query (B, Nq, C), memory (B, Nm, C), positions (B, Nq, 2) / (B, Nm, 2) -> (B, Nq, C)."""
        q, k, v = self._split(self.projq(query)), self._split(self.projk(memory)), self._split(self.projv(memory))
        if self._rope is not None:
            q, k = self._rope(q, qpos), self._rope(k, mpos)
        x = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class DecoderBlock(nn.Module):
    """CroCo decoder block (multi-view form)::

        x = x + SelfAttn(norm1(x))
        x = x + CrossAttn(q = norm2(x), k = v = norm_y(memory))     memory: the other views' tokens, concatenated
        x = x + Mlp(norm3(x))
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RotaryEmbedding2D) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=CROCO_NORM_EPS)
        # the self-attention is the encoder's (``attn.qkv`` / ``attn.proj``)
        self.attn = Attention(dim, num_heads, qkv_bias=True, rope=rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=CROCO_NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=CROCO_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=CROCO_NORM_EPS)

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, mpos: Tensor) -> Tensor:
        """x (B, N, C) one view; memory (B, M*N, C) other views; pos (B, N, 2); mpos (B, M*N, 2)."""
        x = x + self.attn(self.norm1(x), pos=pos)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(memory), pos, mpos)
        return x + self.mlp(self.norm3(x))
