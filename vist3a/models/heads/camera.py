"""VGGT camera head: iterative refinement of the ``absT_quaR_FoV`` pose encoding from the camera tokens.

Input: the last aggregator layer (B, S, P, 2C); its token 0 of every frame (the camera token) -> LayerNorm.
Each of ``num_iterations`` steps: modulation input = ``embed_pose`` of the learned empty token (first step) or of
the un-activated running sum; ``(shift, scale, gate) = Linear(SiLU(.))``;
``x = gate * (LN_noaffine(tokens) * (1 + scale) + shift) + tokens``; trunk blocks -> LayerNorm -> MLP -> delta,
added to the running sum. Activation per step: translation and quaternion linear, field of view ReLU.

Pose encoding (..., 9) = [t (3), quaternion xyzw (4), fov_h, fov_w]; [R(q) | t] is world-to-camera (OpenCV).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import Block, Mlp

__all__ = ["CameraHead", "activate_pose"]


def activate_pose(enc: Tensor) -> Tensor:
    """Translation and quaternion linear, field of view ReLU."""
    return torch.cat([enc[..., :7], F.relu(enc[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, num_iterations: int = 4) -> None:
        super().__init__()
        self.target_dim = 9
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(*[
            Block(dim_in, num_heads, mlp_ratio, init_values=init_values, qk_norm=False, norm_eps=1e-5)
            for _ in range(trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, last_layer: Tensor, num_iterations: int | None = None) -> list[Tensor]:
        """last_layer (B, S, P, 2C) -> list of activated pose encodings (B, S, 9), one per iteration."""
        dtype = self.token_norm.weight.dtype
        tokens = self.token_norm(last_layer[:, :, 0].to(dtype))  # (B, S, C)
        b, s, _ = tokens.shape
        running = None
        outputs = []
        for _ in range(num_iterations or self.num_iterations):
            source = self.empty_pose_tokens.expand(b, s, -1) if running is None else running.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            running = delta if running is None else running + delta
            outputs.append(activate_pose(running))
        return outputs
