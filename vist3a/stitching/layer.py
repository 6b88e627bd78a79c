"""The VIST3A stitching layer: Wan latent -> 3D-model token features, plus the pieces the closed-form search needs.

Data flow (released config ``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1``, 512 px video, 13 frames)::

    latent (B, 16, T_lat=4, 64, 64)               un-normalised Wan latent (z * std + mean)
      -> resize_latent (trilinear, align_corners=True) to (T = (T_lat-1)*4+1 = 13, 64, 64)
      -> replicate pad (2, 1, 1) -> Conv3d(16 -> 1024, k (5,3,3), stride (1,2,2)) + bias
      -> (B, 1024, 13, 32, 32)                    32 x 32 tokens = 448 / 14

The spatial size the latent is resized to is the one the conv needs to output the token grid ``target_hw``:
``out * stride`` when that gives exactly ``out`` (the official choice: R/8 = 64 for a 32-token grid), otherwise the
smallest input size that does (:meth:`StitchingConfig.input_size_for`). The temporal size is T when the conv keeps
the frame count (the released layer does), else the size that makes the conv output T frames.

How each conv rank sees the 5-D latent (all tuples in the conv's own order):

* conv3d: over (T, H, W);
* conv2d: per frame over (H, W) (frames folded into the batch);
* conv1d: per pixel over T (pixels folded into the batch); the latent is resized spatially straight to the grid.

:meth:`StitchingLayer.unfold` is the matching im2col: rows ordered (B, T, h, w), columns ordered like
``weight.flatten(1)`` (in_channels, *kernel), built with the SAME replicate padding as the conv, so
``unfold(x) @ weight.flatten(1).T + bias == to_rows(conv(x))`` (the official search padded with zeros; we do not).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import StitchingConfig

__all__ = ["TEMPORAL_FACTOR", "StitchingLayer", "num_video_frames", "resize_latent", "to_rows"]

logger = logging.getLogger(__name__)

TEMPORAL_FACTOR = 4  # Wan VAE: latent frame count = (F - 1) // 4 + 1


def num_video_frames(latent_frames: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Video frames T for ``latent_frames`` Wan latent frames: (T_lat - 1) * 4 + 1."""
    return (int(latent_frames) - 1) * temporal_factor + 1


def resize_latent(latent: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Trilinear resize (align_corners=True) of (B, C, T_lat, h, w) to (B, C, *size); a no-op when equal."""
    if tuple(latent.shape[2:]) == tuple(size):
        return latent
    return F.interpolate(latent, size=tuple(int(s) for s in size), mode="trilinear", align_corners=True)


def to_rows(features: Tensor) -> Tensor:
    """(B, C, T, h, w) -> (B*T*h*w, C): the row layout of :meth:`StitchingLayer.unfold` and of token targets."""
    return features.permute(0, 2, 3, 4, 1).reshape(-1, features.shape[1])


class StitchingLayer(nn.Module):
    """One conv from the Wan latent space to the 3D model's token space.

    Parameters ``weight`` (out, in, *kernel) and ``bias`` (out,) are stored directly on this module (state-dict keys
    ``weight``/``bias``, like the official checkpoint's ``stitching_layer`` entry).

    Args:
        config: a :class:`StitchingConfig` or its string (``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1``).
        in_channels: latent channels (default: the config's, i.e. 16 for Wan 2.1 unless the config says otherwise).
        temporal_factor: video frames per latent frame step (4 for Wan 2.1).
    """

    def __init__(self, config: StitchingConfig | str, in_channels: int | None = None,
                 temporal_factor: int = TEMPORAL_FACTOR, device=None, dtype=None):
        super().__init__()
        self.config = StitchingConfig.parse(config, in_channels=in_channels)
        self.temporal_factor = int(temporal_factor)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.config.weight_shape, **kw))
        self.bias = nn.Parameter(torch.empty(self.config.out_channels, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Conv init (kaiming-uniform a=sqrt(5), uniform bias)."""
        if self.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.config.fan_in)
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def extra_repr(self) -> str:
        return f"{self.config.to_string()}, in_channels={self.in_channels}, padding_mode=replicate"

    # ------------------------------------------------------------------------------------------ validation
    def check_latent(self, latent: Tensor) -> None:
        """Raise ValueError unless ``latent`` is (B, in_channels, T_lat >= 1, h, w)."""
        if not isinstance(latent, Tensor):
            raise TypeError(f"stitching layer: latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.dim() != 5:
            raise ValueError(f"stitching layer: latent must be 5-D (B, {self.in_channels}, T_lat, h, w), got shape "
                             f"{tuple(latent.shape)}; add a batch dimension with latent[None] if needed")
        if latent.shape[1] != self.in_channels:
            raise ValueError(f"stitching layer: latent has {latent.shape[1]} channels, expected {self.in_channels} "
                             f"(Wan 2.1 VAE latent, layout (B, C, T_lat, h, w)); got shape {tuple(latent.shape)}")
        if min(latent.shape[2:]) < 1 or latent.shape[0] < 1:
            raise ValueError(f"stitching layer: latent shape {tuple(latent.shape)} has an empty dimension; need at "
                             f"least 1 latent frame (1 video frame) and a non-empty image")

    # ------------------------------------------------------------------------------------------ sizes
    def _input_extent(self, out: int, dim: int, current: int | None = None) -> int:
        """Input extent along conv dim ``dim`` that makes the conv output ``out``: out*stride if exact, else the
        latent's own extent ``current`` if it works (MVDUSt3R's layer: 48 latent pixels -> 14 tokens with kernel 7,
        stride 3, no padding), else the smallest one that works."""
        cfg = self.config
        natural = out * cfg.stride[dim]
        r, p, s = cfg.receptive[dim], cfg.padding[dim], cfg.stride[dim]
        if (natural + 2 * p - r) // s + 1 == out:
            return natural
        if current is not None and current >= 1 and (current + 2 * p - r) // s + 1 == out:
            return int(current)
        smallest = (out - 1) * s + r - 2 * p
        if smallest < 1:
            raise ValueError(f"stitching conv {cfg.to_string()}: cannot output {out} along dim {dim}")
        return smallest

    def input_size(self, latent_frames: int, target_hw: tuple[int, int],
                   current_hw: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(T_in, H_in, W_in) the latent is resized to so the conv outputs (T, *target_hw),
        T = (latent_frames - 1) * temporal_factor + 1; ``current_hw`` (the latent's own h, w) is kept when the conv
        already gives the grid from it and ``out * stride`` does not."""
        t = num_video_frames(latent_frames, self.temporal_factor)
        gh, gw = (int(v) for v in target_hw)
        if t < 1 or gh < 1 or gw < 1:
            raise ValueError(f"stitching layer: need >= 1 latent frame and a positive token grid, got "
                             f"latent_frames={latent_frames}, target_hw={tuple(target_hw)}")
        d = self.config.dims
        ch, cw = current_hw if current_hw is not None else (None, None)
        if d == 3:
            return self._input_extent(t, 0), self._input_extent(gh, 1, ch), self._input_extent(gw, 2, cw)
        if d == 2:
            return t, self._input_extent(gh, 0, ch), self._input_extent(gw, 1, cw)
        return self._input_extent(t, 0), gh, gw

    def output_size(self, latent_frames: int, target_hw: tuple[int, int],
                    current_hw: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(T, h', w') of :meth:`forward`'s output; checks that it equals (T, *target_hw)."""
        t_in, h_in, w_in = self.input_size(latent_frames, target_hw, current_hw)
        d = self.config.dims
        if d == 3:
            out = self.config.output_size((t_in, h_in, w_in))
        elif d == 2:
            out = (t_in, *self.config.output_size((h_in, w_in)))
        else:
            out = (*self.config.output_size((t_in,)), h_in, w_in)
        return tuple(out)

    def resize(self, latent: Tensor, target_hw: tuple[int, int]) -> Tensor:
        """(B, 16, T_lat, h, w) -> (B, 16, T_in, H_in, W_in): the conv's input for token grid ``target_hw``."""
        self.check_latent(latent)
        size = self.input_size(latent.shape[2], target_hw, tuple(latent.shape[-2:]))
        return resize_latent(latent.to(self.weight.dtype), size)

    def natural_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid the conv gives on the latent as it is (no resize): ``(h + 2p - r) // s + 1`` per side (conv3d
        and conv2d; conv1d keeps h, w)."""
        h, w = (int(v) for v in latent_hw)
        d = self.config.dims
        if d == 1:
            return h, w
        out = self.config.output_size((1, h, w) if d == 3 else (h, w))
        return int(out[-2]), int(out[-1])

    # ------------------------------------------------------------------------------------------ conv
    def _fold(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """(B, C, T, H, W) -> the conv's layout (N, C, *dims)."""
        b, c, t, h, w = x.shape
        if self.config.dims == 3:
            return x, (b, t, h, w)
        if self.config.dims == 2:
            return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), (b, t, h, w)
        return x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t), (b, t, h, w)

    def _unfold_layout(self, y: Tensor, b: int, h: int, w: int) -> Tensor:
        """Inverse of :meth:`_fold` for conv outputs (N, C', *out_dims) -> (B, C', T', h', w')."""
        d = self.config.dims
        if d == 3:
            return y
        if d == 2:
            n, c, oh, ow = y.shape
            return y.reshape(b, n // b, c, oh, ow).permute(0, 2, 1, 3, 4)
        _, c, ot = y.shape
        return y.reshape(b, h, w, c, ot).permute(0, 3, 4, 1, 2)

    def _pad(self, x: Tensor, mode: str = "replicate") -> Tensor:
        pad = [p for p in reversed(self.config.padding) for _ in range(2)]
        if not any(pad):
            return x
        if mode == "zeros":
            return F.pad(x, pad, mode="constant", value=0.0)
        return F.pad(x, pad, mode="replicate")

    def conv(self, x: Tensor) -> Tensor:
        """The conv alone on an already-resized input (B, 16, T_in, H_in, W_in) -> (B, out, T, h', w')."""
        cfg = self.config
        folded, (b, _t, h, w) = self._fold(x)
        fn = (F.conv1d, F.conv2d, F.conv3d)[cfg.dims - 1]
        y = fn(self._pad(folded), self.weight, self.bias, stride=cfg.stride, dilation=cfg.dilation)
        return self._unfold_layout(y, b, h, w)

    def forward(self, latent: Tensor, target_hw: tuple[int, int]) -> Tensor:
        """(B, 16, T_lat, h, w) un-normalised Wan latent -> (B, out, T, *target_hw) token features,
        T = (T_lat - 1) * 4 + 1."""
        x = self.resize(latent, target_hw)
        y = self.conv(x)
        expected = (num_video_frames(latent.shape[2], self.temporal_factor), *(int(v) for v in target_hw))
        if tuple(y.shape[2:]) != expected:  # only reachable with exotic configs (e.g. temporal stride)
            raise ValueError(f"stitching conv {self.config.to_string()} produced {tuple(y.shape[2:])} but "
                             f"(frames, rows, cols) = {expected} are needed; choose a config that keeps the frame "
                             f"count (temporal stride 1, padding (k-1)/2)")
        return y

    # ------------------------------------------------------------------------------------------ im2col
    def unfold(self, x: Tensor, padding_mode: str = "replicate") -> Tensor:
        """im2col of a resized input (B, 16, T_in, H_in, W_in) with the conv's replicate padding, stride and
        dilation -> (B*T*h'*w', in*prod(kernel)); rows ordered (B, T, h', w') like :func:`to_rows`, columns like
        ``weight.flatten(1)``. So ``unfold(x) @ weight.flatten(1).T + bias == to_rows(conv(x))``.
        ``padding_mode="zeros"``: zero padding instead, as the official layer search's im2col (not the conv)."""
        if padding_mode not in ("replicate", "zeros"):
            raise ValueError(f"unfold: padding_mode must be 'replicate' or 'zeros', got {padding_mode!r}")
        cfg = self.config
        folded, (b, _t, h, w) = self._fold(x)
        xp = self._pad(folded, padding_mode)
        n, c = xp.shape[:2]
        d = cfg.dims
        for i in range(d):
            xp = xp.unfold(2 + i, cfg.receptive[i], cfg.stride[i])  # (N, C, *out, *receptive)
        if any(v != 1 for v in cfg.dilation):
            xp = xp[(..., *(slice(None, None, dl) for dl in cfg.dilation))]
        out = xp.shape[2:2 + d]
        perm = (0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))
        cols = xp.permute(perm).reshape(n, *out, c * math.prod(cfg.kernel))  # (N, *out, C*K)
        if d == 3:
            rows = cols
        elif d == 2:
            rows = cols.reshape(b, n // b, *out, -1)
        else:
            rows = cols.reshape(b, h, w, out[0], -1).permute(0, 3, 1, 2, 4)
        return rows.reshape(-1, cols.shape[-1])
