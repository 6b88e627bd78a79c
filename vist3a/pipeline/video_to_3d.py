"""Video -> 3D: the stitched decoder as a "3D VAE" decoder for real clips.

::

    frames (T=4k+1, 3, H, W) in [0, 1]  --Wan VAE encode-->  raw latent (1, 16, T_lat, H/8, W/8)
      -> StitchedDecoder.predict(raw, frames resized to H/16*14)  -> SceneOutput

The AnySplat heads read the user's own frames (resized to the 3D size), not a VAE round trip.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ..checks import check_device, check_model_sources, check_seed
from .decoders import load_stitched_decoder
from .output import SceneOutput, frames_size, run_decoder
from .settings import DEFAULT_WAN, check_frames, check_size
from .sources import decoder_sources, video_to_3d_sources
from .wan import load_wan_vae, resize_frames

__all__ = ["VideoTo3DPipeline"]

logger = logging.getLogger(__name__)


class VideoTo3DPipeline:
    """Frames or a clip -> :class:`SceneOutput` via the Wan VAE encoder and a stitched decoder.

    Args:
        vae: diffusers ``AutoencoderKLWan``.
        decoder: :class:`~vist3a.stitching.StitchedDecoder`.
        num_frames, height, width: defaults for :meth:`__call__` (published: 13, 512, 512).
        sample: encode with ``latent_dist.sample()`` (official) instead of the mean.
    """

    def __init__(self, vae, decoder, num_frames: int = 13, height: int = 512, width: int = 512,
                 sample: bool = True, untrained: bool = False) -> None:
        self.vae = vae.eval()
        self.decoder = decoder.eval()
        self.num_frames, self.height, self.width = num_frames, height, width
        self.sample = bool(sample)
        self.untrained = bool(untrained)

    @classmethod
    def from_pretrained(cls, wan: str | Path = DEFAULT_WAN, decoder: str | Path | None = None,
                        base: str | Path | None = None, dtype: torch.dtype = torch.float32,
                        decoder_dtype: torch.dtype | None = None, check_sources: bool = True,
                        **kwargs) -> VideoTo3DPipeline:
        """Wan VAE from ``wan`` (pipeline id / folder, its ``vae/``) and the stitched decoder (None = published).
        Every model is checked first (all missing ones in one ``MissingModelsError``; ``check_sources=False``
        skips that when the caller already ran it)."""
        if check_sources:
            check_model_sources(video_to_3d_sources(wan, decoder, base), "VideoTo3DPipeline.from_pretrained")
        return cls(load_wan_vae(wan, dtype), load_stitched_decoder(decoder, base=base, dtype=decoder_dtype,
                                                                   check=False), **kwargs)

    @classmethod
    def tiny(cls, seed: int = 0, decoder: str | Path | None = None) -> VideoTo3DPipeline:
        """Tiny random Wan VAE + tiny stitched AnySplat (or ``decoder``, a decoder folder trained on the tiny
        models); 64x64 video, 9 frames (plumbing only)."""
        from ..stitching.vae import tiny_video_vae
        from .presets import TINY_SETTINGS, tiny_decoder

        s = TINY_SETTINGS
        if decoder is not None:
            check_model_sources(decoder_sources(decoder), "VideoTo3DPipeline.tiny")
        dec = tiny_decoder(seed) if decoder is None else load_stitched_decoder(decoder, check=False)
        return cls(tiny_video_vae("wan", seed=seed).vae, dec, s.num_frames, s.height, s.width, untrained=True)

    @classmethod
    def micro(cls, model3d: str = "anysplat") -> VideoTo3DPipeline:
        """The shipped micro models (trained on the micro world, :mod:`vist3a.pipeline.presets`): 9 frames of 64x64
        -> the micro VAE's latent mean -> the micro stitched AnySplat (``model3d="mvdust3r"``: the micro stitched
        MVDUSt3R, splats + pointmap). CPU, offline, about a second."""
        from .presets import MICRO_SETTINGS, micro_decoder, micro_video_vae

        s = MICRO_SETTINGS
        return cls(micro_video_vae(), micro_decoder(model3d), s.num_frames, s.height, s.width, sample=False)

    def to(self, device: str | torch.device) -> VideoTo3DPipeline:
        check_device(str(device), "device")
        self.vae.to(device)
        self.decoder.to(device)
        return self

    def enable_vae_tiling(self) -> VideoTo3DPipeline:
        self.vae.enable_tiling()
        return self

    @torch.no_grad()
    def __call__(self, clip: Tensor | str | os.PathLike, *, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0) -> SceneOutput:
        """``clip``: a folder of ordered frames, a video file, or a tensor (T, 3, H, W) in [0, 1] already of 4k+1
        frames at the video size. Paths are resampled to ``num_frames`` and scaled/centre-cropped to
        ``height`` x ``width``; tensors must already match (no silent changes). ``seed`` seeds the encoder sample."""
        from .frames import load_frames

        check_seed(seed)
        t = check_frames(self.num_frames if num_frames is None else num_frames)
        h, w = check_size(self.height if height is None else height, self.width if width is None else width)
        if isinstance(clip, Tensor):
            if clip.dim() != 4 or clip.shape[1] != 3:
                raise ValueError(f"clip tensor must be (T, 3, H, W) in [0, 1], got {tuple(clip.shape)}")
            if tuple(clip.shape) != (t, 3, h, w):
                raise ValueError(f"clip tensor is {tuple(clip.shape)} but ({t}, 3, {h}, {w}) is needed; pass a folder "
                                 "or video path to resample/crop automatically, or set num_frames/height/width")
            frames = clip.float().clamp(0, 1)
        else:
            frames = load_frames(clip, t, h, w)
        if self.untrained:
            from .presets import TINY_WARNING

            logger.warning(TINY_WARNING)
        param = next(self.vae.parameters())
        x = frames[None].to(device=param.device, dtype=param.dtype).permute(0, 2, 1, 3, 4) * 2 - 1
        logger.info("encoding %d frames of %dx%d with the Wan VAE", t, w, h)
        dist = self.vae.encode(x).latent_dist
        if self.sample:
            gen = torch.Generator(param.device).manual_seed(int(seed))
            raw = dist.sample(generator=gen)
        else:
            raw = dist.mean
        frames3d = resize_frames(frames[None], frames_size(self.decoder, h, w))
        logger.info("stitched %s decoder on %d frames of %dx%d", self.decoder.kind, t, *frames3d.shape[-2:])
        gaussians, cameras, pointmap, depth = run_decoder(self.decoder, raw.float(), frames3d)
        info = {"num_frames": t, "height": h, "width": w, "seed": int(seed), "untrained": self.untrained}
        return SceneOutput(gaussians, cameras, pointmap, frames, depth, raw.float().cpu(), info)
