"""VGGT aggregator: DINOv2 patch embedding followed by alternating frame / global attention.

Input images (B, S, 3, H, W) in [0, 1], H and W multiples of the patch size. They are normalised with the ImageNet
mean/std, embedded by DINOv2 (patch tokens only), and each frame's tokens become
``[camera (1), register (R), patches (N)]`` (``patch_start_idx = 1 + R``). The learned ``camera_token`` and
``register_token`` have a leading dimension of ``frame_tokens`` entries: entry i is used for frame i and the last
one for every later frame. VGGT / AnySplat use 2 (frame 0, every other frame: the model is told which frame is the
reference and nothing else); more entries tell the model each frame's position in an ordered clip.

Then ``depth`` times: a frame block (attention within each frame, tokens (B*S, P, C)) and a global block (attention
across all frames, tokens (B, S*P, C)), both with qk-norm and 2D RoPE. The output of layer i is
``concat(frame_out_i, global_out_i)`` with shape (B, S, P, 2C).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .dinov2 import DinoVisionTransformer
from .layers import Block
from .rope import RotaryEmbedding2D, grid_positions

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Aggregator"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _special_tokens(token: Tensor, b: int, s: int) -> Tensor:
    """(1, K, X, C) -> (B*S, X, C): entry i for frame i < K - 1, entry K - 1 for every later frame (K = 2: index 0
    for frame 0, index 1 for frames 1..S-1)."""
    k = token.shape[1]
    idx = torch.clamp(torch.arange(s, device=token.device), max=k - 1)
    return token[0, idx].unsqueeze(0).expand(b, s, *token.shape[2:]).reshape(b * s, *token.shape[2:])


class Aggregator(nn.Module):
    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
        dino_depth: int = 24,
        dino_num_heads: int = 16,
        frame_tokens: int = 2,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.embed_dim = embed_dim
        self.patch_start_idx = 1 + num_register_tokens
        # Registration order reproduces the published state-dict order (own params first, then children).
        if frame_tokens < 2:
            raise ValueError(f"Aggregator: frame_tokens must be >= 2 (VGGT / AnySplat: 2), got {frame_tokens}")
        self.camera_token = nn.Parameter(torch.zeros(1, frame_tokens, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, frame_tokens, num_register_tokens, embed_dim))
        self.patch_embed = DinoVisionTransformer(img_size, patch_size, embed_dim, dino_depth, dino_num_heads,
                                                 mlp_ratio, num_register_tokens, init_values=1.0)
        self.rope = RotaryEmbedding2D(rope_freq) if rope_freq > 0 else None

        def make() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, qk_norm=True, norm_eps=1e-5,
                         rope=self.rope)

        self.frame_blocks = nn.ModuleList(make() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make() for _ in range(depth))
        self.gradient_checkpointing = False  # recompute blocks in backward (training only; no numerical effect)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the DINOv2 and frame/global blocks during backward (as the official training does)."""
        self.gradient_checkpointing = enabled
        self.patch_embed.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ pieces (also used by cut points)
    def normalize(self, images: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 1, 3, 1, 1)
        return (images - mean) / std

    def initial_tokens(self, patch_tokens: Tensor, b: int, s: int) -> Tensor:
        """DINO patch tokens (B*S, N, C) -> (B*S, P, C) with camera and register tokens prepended."""
        cam = _special_tokens(self.camera_token, b, s).to(patch_tokens.dtype)
        reg = _special_tokens(self.register_token, b, s).to(patch_tokens.dtype)
        return torch.cat([cam, reg, patch_tokens], dim=1)

    def positions(self, b: int, s: int, grid_h: int, grid_w: int, device) -> Tensor | None:
        if self.rope is None:
            return None
        return grid_positions(b * s, grid_h, grid_w, self.patch_start_idx, device=device)

    def run_layers(
        self,
        tokens: Tensor,
        b: int,
        s: int,
        grid_h: int,
        grid_w: int,
        start: int = 0,
        end: int | None = None,
        keep: Iterable[int] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run frame/global pairs ``start .. end-1`` on tokens (B*S, P, C).

        Returns the tokens after the last pair (B*S, P, C) and ``{i: (B, S, P, 2C)}`` for the pairs in ``keep``.
        """
        end = self.depth if end is None else end
        keep = set(keep)
        p, c = tokens.shape[1], tokens.shape[2]
        pos = self.positions(b, s, grid_h, grid_w, tokens.device)
        pos_global = None if pos is None else pos.reshape(b, s * p, 2)
        outputs: dict[int, Tensor] = {}
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()

        def run(block: nn.Module, x: Tensor, pos_: Tensor | None) -> Tensor:
            return checkpoint(block, x, pos_, use_reentrant=False) if ckpt else block(x, pos=pos_)

        for i in range(start, end):
            tokens = run(self.frame_blocks[i], tokens.reshape(b * s, p, c), pos)
            frame_out = tokens.reshape(b, s, p, c)
            tokens = run(self.global_blocks[i], tokens.reshape(b, s * p, c), pos_global)
            if i in keep:
                outputs[i] = torch.cat([frame_out, tokens.reshape(b, s, p, c)], dim=-1)
        return tokens.reshape(b * s, p, c), outputs

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, layers: Iterable[int] | None = None) -> tuple[dict[int, Tensor], int]:
        """images (B, S, 3, H, W) in [0, 1] -> ({layer: (B, S, P, 2C)}, patch_start_idx).

        ``layers`` lists the layer outputs to keep (default: all); the last layer is always kept.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"Aggregator: images must be (B, S, 3, H, W), got {tuple(images.shape)}")
        b, s, _, h, w = images.shape
        keep = set(range(self.depth)) if layers is None else set(layers)
        keep.add(self.depth - 1)
        x = self.normalize(images).reshape(b * s, 3, h, w)
        patch_tokens = self.patch_embed(x)
        tokens = self.initial_tokens(patch_tokens, b, s)
        _, outputs = self.run_layers(tokens, b, s, h // self.patch_size, w // self.patch_size, keep=keep)
        return outputs, self.patch_start_idx
