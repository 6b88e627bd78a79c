"""2D rotary position embedding (VGGT convention).

A token at grid position (y, x) rotates the first half of each head's channels by its row y and the second half by
its column x. Within each half the rotate-half convention is used with frequencies ``base^(-2i/d)``, d = half size.
Patch (row r, col c) of the token grid gets position (r + 1, c + 1); special tokens (camera, registers) get (0, 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RotaryEmbedding2D", "grid_positions"]


def grid_positions(batch: int, height: int, width: int, num_special: int, device=None) -> Tensor:
    """Positions (batch, num_special + height*width, 2) as int64 (y, x): specials at (0, 0), patches row-major +1."""
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    patches = torch.stack([ys, xs], dim=-1) + 1
    special = torch.zeros(num_special, 2, dtype=patches.dtype, device=device)
    return torch.cat([special, patches], dim=0)[None].expand(batch, -1, -1)


class RotaryEmbedding2D:
    """Callable ``rope(tokens (B, heads, N, D), positions (B, N, 2)) -> tokens``; D must be divisible by 4."""

    def __init__(self, frequency: float = 100.0) -> None:
        self.frequency = float(frequency)
        self._cache: dict = {}

    def _tables(self, dim: int, length: int, device, dtype) -> tuple[Tensor, Tensor]:
        key = (dim, length, device, dtype)
        if key not in self._cache:
            exponents = torch.arange(0, dim, 2, device=device).float() / dim
            inv_freq = 1.0 / (self.frequency ** exponents)
            angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq).to(dtype)
            angles = torch.cat([angles, angles], dim=-1)  # (length, dim)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def _apply_1d(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        c = cos[pos][:, None]  # (B, 1, N, d)
        s = sin[pos][:, None]
        return x * c + self._rotate_half(x) * s

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        half = tokens.shape[-1] // 2
        length = int(positions.max()) + 1
        cos, sin = self._tables(half, length, tokens.device, tokens.dtype)
        y_part, x_part = tokens[..., :half], tokens[..., half:]
        y_part = self._apply_1d(y_part, positions[..., 0], cos, sin)
        x_part = self._apply_1d(x_part, positions[..., 1], cos, sin)
        return torch.cat([y_part, x_part], dim=-1)
