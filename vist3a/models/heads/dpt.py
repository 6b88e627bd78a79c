"""DPT dense head (VGGT version) used for depth, world points, track features and, extended, AnySplat Gaussians.

Per selected aggregator layer (B, S, P, 2C): drop the first ``patch_start_idx`` tokens, a LayerNorm shared by all
layers, a 1x1 projection to ``out_channels[i]``, a UV sin-cos position embedding (x 0.1), and a resize
(ConvT 4x4/4, ConvT 2x2/2, identity, Conv 3x3/2). Then 3x3 ``layer*_rn`` convolutions (no bias) and RefineNet
fusion from coarse to fine; ``output_conv1``; bilinear (align_corners) resize to the image size / ``down_ratio``;
position embedding again; ``output_conv2`` (conv3x3 -> ReLU -> conv1x1) and the output activation.

Residual conv units compute ``relu(x) + conv2(relu(conv1(relu(x))))``: the official code applies an in-place
ReLU to its input before the skip connection, so the skip carries ``relu(x)``; we reproduce that explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DPTHead", "activate_dense", "uv_position_embedding"]


# ---------------------------------------------------------------------- position embedding
def _uv_grid(width: int, height: int, aspect_ratio: float, dtype, device) -> Tensor:
    """(height, width, 2) grid spanning the image diagonal-normalised plane, (u, v) per pixel."""
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype,
                        device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                        device=device)
    vv, uu = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def _sincos(dim: int, pos: Tensor, omega_0: float) -> Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0 ** omega
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def uv_position_embedding(channels: int, height: int, width: int, aspect_ratio: float, dtype, device,
                          omega_0: float = 100.0) -> Tensor:
    """Sin-cos embedding (channels, height, width): first half from u, second half from v."""
    grid = _uv_grid(width, height, aspect_ratio, dtype, device).reshape(-1, 2)
    emb = torch.cat([_sincos(channels // 2, grid[:, 0], omega_0), _sincos(channels // 2, grid[:, 1], omega_0)],
                    dim=-1).float()
    return emb.reshape(height, width, channels).permute(2, 0, 1).to(dtype)


def activate_dense(out: Tensor, activation: str, conf_activation: str = "expp1") -> tuple[Tensor, Tensor]:
    """(N, C, H, W) -> (values (N, H, W, C-1), confidence (N, H, W)); the last channel is the confidence."""
    fmap = out.permute(0, 2, 3, 1)
    x, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        x = torch.exp(x)
    elif activation == "inv_log":
        x = torch.sign(x) * torch.expm1(torch.abs(x))
    elif activation == "norm_exp":
        d = x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        x = x / d * torch.expm1(d)
    elif activation == "relu":
        x = F.relu(x)
    elif activation == "sigmoid":
        x = torch.sigmoid(x)
    elif activation != "linear":
        raise ValueError(f"activate_dense: unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"activate_dense: unknown conf_activation {conf_activation!r}")
    return x, conf


# ---------------------------------------------------------------------- fusion blocks
class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0, bias=True)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    def __init__(self, in_channels: Sequence[int], features: int) -> None:
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, 1, 1, bias=False))
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False)


# ---------------------------------------------------------------------- head
class DPTHead(nn.Module):
    """Dense head over 4 aggregator layers.

    ``forward(layers, image_hw, patch_start_idx)`` with ``layers`` the 4 selected layer outputs (B, S, P, 2C).
    Returns (values (B, S, H, W, C-1), confidence (B, S, H, W)); with ``feature_only`` the features
    (B, S, features, H/down, W/down).
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        head_hidden: int = 32,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, 1, 0) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = _Scratch(oc, features)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, 1, 1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, 1, 1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, head_hidden, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(head_hidden, output_dim, 1, 1, 0),
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def _add_pos(self, x: Tensor, width: int, height: int) -> Tensor:
        pe = uv_position_embedding(x.shape[1], x.shape[-2], x.shape[-1], width / height, x.dtype, x.device)
        return x + 0.1 * pe[None]

    def fused_features(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                       frames: slice | None = None) -> Tensor:
        """Trunk up to ``output_conv1`` -> (B*S', C', h, w) at the coarse (4x patch grid) resolution."""
        h, w = image_hw
        gh, gw = h // self.patch_size, w // self.patch_size
        feats = []
        for i, tokens in enumerate(layers):
            x = tokens[:, :, patch_start_idx:]
            if frames is not None:
                x = x[:, frames]
            x = x.reshape(-1, x.shape[-2], x.shape[-1]).to(self.dtype)
            x = self.norm(x)
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], gh, gw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = self._add_pos(x, w, h)
            feats.append(self.resize_layers[i](x))
        s = self.scratch
        l1, l2, l3, l4 = (s.layer1_rn(feats[0]), s.layer2_rn(feats[1]), s.layer3_rn(feats[2]), s.layer4_rn(feats[3]))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)

    def _forward_frames(self, layers, image_hw, patch_start_idx, frames) -> Tensor:
        h, w = image_hw
        gh, gw = h // self.patch_size, w // self.patch_size
        out = self.fused_features(layers, image_hw, patch_start_idx, frames)
        size = (int(gh * self.patch_size / self.down_ratio), int(gw * self.patch_size / self.down_ratio))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.pos_embed:
            out = self._add_pos(out, w, h)
        if self.feature_only:
            return out
        return self.scratch.output_conv2(out)

    def raw(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start_idx: int,
            frames_chunk_size: int = 8) -> Tensor:
        """Pre-activation output (B, S, C_out, H, W) (features with ``feature_only``), chunked over frames."""
        b, s = layers[0].shape[:2]
        chunk = s if not frames_chunk_size or frames_chunk_size >= s else frames_chunk_size
        outs = [self._forward_frames(layers, image_hw, patch_start_idx, slice(i, min(i + chunk, s)))
                for i in range(0, s, chunk)]
        outs = [o.reshape(b, -1, *o.shape[1:]) for o in outs]
        return torch.cat(outs, dim=1)

    def forward(self, layers: Sequence[Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                frames_chunk_size: int = 8):
        out = self.raw(layers, image_hw, patch_start_idx, frames_chunk_size)
        if self.feature_only:
            return out
        b, s = out.shape[:2]
        values, conf = activate_dense(out.flatten(0, 1), self.activation, self.conf_activation)
        return values.reshape(b, s, *values.shape[1:]), conf.reshape(b, s, *conf.shape[1:])
