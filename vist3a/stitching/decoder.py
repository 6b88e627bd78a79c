"""Stitched decoder: Wan latent (+ decoded frames) -> stitching layer -> the rest of a 3D model -> 3D outputs.

::

    latent (B, 16, T_lat, h, w)          un-normalised Wan latent: raw = z * std + mean (what the VAE decodes)
      -> StitchingLayer                  (B, C, T, h/2, w/2) for the released layer, T = (T_lat - 1) * 4 + 1
      -> tokens (B*T, gh*gw, C)          ``b c t h w -> (b t) (h w) c``
      -> model.forward_from(cut, tokens, frames)
           DINO: cls + position embedding for the (gh, gw) grid + registers, blocks cut..end, final norm
           aggregator, camera / depth / Gaussian (AnySplat) or point (VGGT) heads

Resolution relation (official pairing): one token covers 16 video pixels (VAE /8, conv stride 2) and 14 pixels of
the 3D model's input, so ``video_size / 16 == model_size / 14`` per side (512 px video <-> 448 px frames, 32x32
tokens). AnySplat's depth and Gaussian heads read pixels, so it needs the VAE-decoded frames resized to the 3D size,
(B, T, 3, 448, 448) in [0, 1] (the official code passes [-1, 1] and converts); VGGT's heads need only the size.

MVDUSt3R (``kind == "mvdust3r"``, paper appendix B.1): the released-style layer is
``conv3d_k5x7x7_o1024_s1x3x3_p2x0x0``; a 384 px video (latent 48) gives ``(48 - 7) // 3 + 1 = 14`` tokens per side, the
encoder grid of a 224 px image (patch 16). Its token grid is the conv's output on the latent as it is
(:meth:`StitchingLayer.natural_grid`, no resize), the 3D size is grid * 16, and the stitching features replace the
CroCo encoder state after block k (``enc_blocks_k``: patch embedding and blocks 0..k-1 deleted). Frames are
optional: its heads read pixels only in the point head's 1e-4 skip branch (mid-grey without frames) and for colours.

Non-square videos: the token grid is (H/14, W/14) and the position embedding is resized to exactly that grid. The
official stitched code passes (W, H) to DINO's ``interpolate_pos_encoding`` and would build a transposed (W/14, H/14)
grid for non-square inputs; all official settings are square, where the two agree. We use the correct grid.

The cut part of the 3D model (DINO patch conv and blocks 0..k-1 for ``enc_blocks_k``) is deleted in the
constructor; the kept DINO blocks are re-indexed from 0 (``...patch_embed.blocks.j`` = original block j + k), the
official checkpoint layout. State-dict keys: ``model.*`` (the kept 3D model) and ``stitching.weight/bias``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor, nn

from ..models import VGGT, AnySplat, MVDUSt3R
from .layer import StitchingLayer, num_video_frames

__all__ = ["MODEL_PATCH", "VAE_SCALE", "VIDEO_PIXELS_PER_TOKEN", "StitchedDecoder", "cut_index"]

logger = logging.getLogger(__name__)

VAE_SCALE = 8                # Wan 2.1 VAE: latent pixel = 8x8 video pixels
VIDEO_PIXELS_PER_TOKEN = 16  # official pairing: VAE /8 then conv stride 2
MODEL_PATCH = 14             # DINOv2 / VGGT patch size

_CUT = re.compile(r"^enc_blocks_(\d+)$")


def cut_index(cut: str) -> int:
    """``"enc_blocks_k"`` -> k. Stitched decoders cut inside DINO only (the official VIST3A locations)."""
    m = _CUT.match(str(cut))
    if m is None:
        raise ValueError(f"stitched decoder: cut {cut!r} is not supported; use 'enc_blocks_k' (k = 1..DINO depth, "
                         "released checkpoints: 'enc_blocks_2'); aggregator cuts need camera/register tokens and "
                         "earlier layer outputs the stitching layer does not produce")
    return int(m.group(1))


class StitchedDecoder(nn.Module):
    """A 3D model (AnySplat or VGGT) fed from Wan latents through a :class:`StitchingLayer`.

    Args:
        model: AnySplat, VGGT or MVDUSt3R (full, or already cut at the same point); modified in place (its cut part
            is deleted to free memory).
        cut: ``"enc_blocks_k"``: the stitching features replace the tokens after DINO block k (MVDUSt3R: the CroCo
            encoder state after block k).
        stitching: the stitching layer; its ``out_channels`` must equal the model width (1024).
        video_pixels_per_token: video pixels per token side (16 = VAE 8 x conv stride 2, the official pairing).
    """

    def __init__(self, model: AnySplat | VGGT | MVDUSt3R, cut: str, stitching: StitchingLayer,
                 video_pixels_per_token: int = VIDEO_PIXELS_PER_TOKEN) -> None:
        super().__init__()
        if not isinstance(model, (AnySplat, VGGT, MVDUSt3R)):
            raise TypeError(f"StitchedDecoder: model must be vist3a.models.AnySplat, VGGT or MVDUSt3R, got "
                            f"{type(model).__name__}")
        if not isinstance(stitching, StitchingLayer):
            raise TypeError(f"StitchedDecoder: stitching must be a StitchingLayer, got {type(stitching).__name__}")
        k = cut_index(cut)
        if isinstance(model, MVDUSt3R):  # the stitching features replace the CroCo encoder state after block k
            front, width = model, model.embed_dim
            total, removed = model.first_block + len(model.enc_blocks), "MVDUSt3R patch embedding and encoder blocks"
            hint = " (paper: conv3d_k5x7x7_o1024_s1x3x3_p2x0x0)"
        else:  # ... the DINO tokens after block k
            front, width = model.aggregator.patch_embed, model.aggregator.embed_dim
            total, removed, hint = front.first_block + len(front.blocks), "DINO patch embedding and blocks", ""
        if not 1 <= k <= total:
            raise ValueError(f"StitchedDecoder: cut {cut!r} is outside enc_blocks_1..enc_blocks_{total}")
        if front.first_block not in (0, k):
            raise ValueError(f"StitchedDecoder: the model was already cut at enc_blocks_{front.first_block}, cannot "
                             f"use it at {cut!r}; build a fresh base model")
        if stitching.out_channels != width:
            raise ValueError(f"StitchedDecoder: stitching layer outputs {stitching.out_channels} channels but the "
                             f"3D model's tokens have {width}; use a config with _o{width}{hint}")
        if front.first_block == 0:
            front.cut_front(k)
            logger.info("StitchedDecoder: removed the %s 0..%d", removed, k - 1)
        self.model = model
        self.stitching = stitching
        self.cut = f"enc_blocks_{k}"
        self.video_pixels_per_token = int(video_pixels_per_token)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """``"anysplat"``, ``"vggt"`` or ``"mvdust3r"``."""
        if isinstance(self.model, MVDUSt3R):
            return "mvdust3r"
        return "anysplat" if isinstance(self.model, AnySplat) else "vggt"

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the decoder gives: ``("splats",)`` (AnySplat), ``("pointmap",)`` (VGGT) or both (MVDUSt3R)."""
        return {"anysplat": ("splats",), "vggt": ("pointmap",), "mvdust3r": ("splats", "pointmap")}[self.kind]

    @property
    def patch_size(self) -> int:
        if isinstance(self.model, MVDUSt3R):
            return self.model.patch_size
        return self.model.aggregator.patch_size

    def token_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid (gh, gw) for a latent of (h, w): video / 16 (AnySplat, VGGT: the latent is resized to what
        the conv needs) or the conv's own output on the latent (MVDUSt3R)."""
        h, w = (int(v) for v in latent_hw)
        if self.kind == "mvdust3r":
            return self.stitching.natural_grid((h, w))
        mh, mw = self.model_size_for((h * VAE_SCALE, w * VAE_SCALE))
        return mh // self.patch_size, mw // self.patch_size

    @property
    def needs_frames(self) -> bool:
        """AnySplat's Gaussian head reads RGB, so decoded frames are required; VGGT needs none."""
        return self.kind == "anysplat"

    def model_size_for(self, video_hw: tuple[int, int]) -> tuple[int, int]:
        """3D-model frame size (H, W) for a video size: video / 16 * 14 per side (512 -> 448); MVDUSt3R: the conv's
        grid on the latent (video / 8) times 16 (384 -> 224)."""
        vh, vw = video_hw
        if self.kind == "mvdust3r":
            if vh % VAE_SCALE or vw % VAE_SCALE:
                raise ValueError(f"stitched MVDUSt3R: video size {vh}x{vw} must be a multiple of {VAE_SCALE}")
            gh, gw = self.stitching.natural_grid((vh // VAE_SCALE, vw // VAE_SCALE))
            return gh * self.patch_size, gw * self.patch_size
        ppt = self.video_pixels_per_token
        if vh % ppt or vw % ppt:
            raise ValueError(f"stitched decoder: video size {vh}x{vw} must be a multiple of {ppt} per side "
                             f"(VAE 8 x conv stride 2); e.g. 512x512")
        return vh // ppt * self.patch_size, vw // ppt * self.patch_size

    # ------------------------------------------------------------------------------------------ checks
    def _grid_and_images(self, latent: Tensor, frames: Tensor | None) -> tuple[tuple[int, int], Tensor]:
        self.stitching.check_latent(latent)
        b, _, t_lat, h, w = latent.shape
        t = num_video_frames(t_lat, self.stitching.temporal_factor)
        video_hw = (h * VAE_SCALE, w * VAE_SCALE)
        mh, mw = self.model_size_for(video_hw)
        grid = self.token_grid((h, w))
        if frames is None:
            if self.kind == "mvdust3r":  # mid-grey for the point head's skip branch
                return grid, latent.new_full((), 0.5).expand(b, t, 3, mh, mw)
            if self.needs_frames:
                raise ValueError(f"stitched AnySplat: its depth and Gaussian heads read RGB; pass the VAE-decoded "
                                 f"frames as frames=(B={b}, T={t}, 3, {mh}, {mw}) in [0, 1] (decode the latent, "
                                 f"resize {video_hw[0]}x{video_hw[1]} -> {mh}x{mw})")
            return grid, latent.new_zeros(()).expand(b, t, 3, mh, mw)
        if not isinstance(frames, Tensor) or frames.dim() != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"stitched decoder: frames must be (B, T, 3, H, W) in [0, 1], got {shape}; for "
                             f"(B, 3, T, H, W) use frames.permute(0, 2, 1, 3, 4)")
        fb, ft, _, fh, fw = frames.shape
        if fb != b:
            raise ValueError(f"stitched decoder: latent batch {b} but frames batch {fb}")
        if ft != t:
            raise ValueError(f"stitched decoder: {t_lat} latent frames decode to T = ({t_lat}-1)*4+1 = {t} video "
                             f"frames, but {ft} frames were given; pass all {t} decoded frames")
        if (fh, fw) != (mh, mw):
            raise ValueError(f"stitched decoder: latent {h}x{w} is a {video_hw[0]}x{video_hw[1]} video, which pairs "
                             f"with {mh}x{mw} 3D-model frames (video/{self.video_pixels_per_token} == 3D/"
                             f"{self.patch_size}), but frames are {fh}x{fw}; resize the decoded frames to "
                             f"{mh}x{mw}")
        if frames.numel() and float(frames.min()) < -1e-3:
            raise ValueError("stitched decoder: frames must be in [0, 1] but have negative values (the official code "
                             "uses [-1, 1]); pass (frames + 1) / 2")
        return grid, frames

    # ------------------------------------------------------------------------------------------ forward
    def features(self, latent: Tensor, grid: tuple[int, int]) -> Tensor:
        """Stitching-layer features as tokens (B*T, gh*gw, C) (``b c t h w -> (b t) (h w) c``)."""
        y = self.stitching(latent, grid)
        b, c, t, gh, gw = y.shape
        return y.permute(0, 2, 3, 4, 1).reshape(b * t, gh * gw, c)

    def forward(self, latent: Tensor, frames: Tensor | None = None, **kwargs) -> dict[str, Any]:
        """latent (B, 16, T_lat, h, w) un-normalised Wan latent; frames (B, T, 3, H, W) in [0, 1] (required for
        AnySplat) -> the 3D model's raw output dict (see AnySplat / VGGT ``forward``), T = (T_lat-1)*4+1,
        H = h*8/16*14."""
        grid, images = self._grid_and_images(latent, frames)
        tokens = self.features(latent, grid)
        return self.model.forward_from(self.cut, tokens, images, **kwargs)

    @torch.no_grad()
    def predict(self, latent: Tensor, frames: Tensor | None = None, **kwargs):
        """Forward (no grad) wrapped into containers: MVDUSt3R -> :class:`~vist3a.models.MVDUSt3RPrediction`
        (``pointmaps`` and ``gaussians``, no cameras); AnySplat -> :class:`~vist3a.models.AnySplatPrediction`
        (``gaussians`` list of :class:`~vist3a.Gaussians`, ``cameras`` list of :class:`~vist3a.Cameras`, ``depth``
        (B, T, H, W)); VGGT -> :class:`~vist3a.models.VGGTPrediction` (``pointmaps`` list of
        :class:`~vist3a.Pointmap`, ``cameras``; point colours are black without ``frames``)."""
        grid, images = self._grid_and_images(latent, frames)
        raw = self.model.forward_from(self.cut, self.features(latent, grid), images)
        if self.kind == "mvdust3r":  # path 0 (frame of the first video frame); colours from frames when given
            return self.model.wrap_prediction(raw, None if frames is None else images.float(), **kwargs)
        if self.kind == "anysplat":
            return self.model.wrap_prediction(raw, images)
        return self.model.wrap_prediction(raw, images.float(), **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, cut={self.cut}, stitching={self.stitching.config.to_string()}"
