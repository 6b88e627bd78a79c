"""A minimal video-VAE interface for the stitching-layer search, with adapters for diffusers' Wan, CogVideoX,
HunyuanVideo and Stable Video Diffusion (SVD) VAEs.

Protocol (:class:`VideoVAE`)::

    latent = vae.encode(clip)        # clip (B, T, 3, H, W) float in [0, 1]  ->  raw latent (B, C, T_lat, h, w)
    vae.latent_channels              # C (16 for Wan 2.1, CogVideoX and HunyuanVideo; 4 for SVD)
    vae.temporal_compression         # 4: T_lat = (T - 1) // 4 + 1, T must be 4k + 1 (SVD: 1, one latent per frame)
    vae.spatial_compression          # 8: h = H / 8, w = W / 8

Real factors of the released VAEs: Wan 2.1 16 ch, 4 x 8 x 8; CogVideoX 16 ch, 4 x 8 x 8; HunyuanVideo
(``AutoencoderKLHunyuanVideo``) 16 ch, 4 x 8 x 8, model space ``z * 0.476986``; SVD (``AutoencoderKLTemporalDecoder``,
a per-frame 2D encoder with a temporal decoder) 4 ch, 1 x 8 x 8, model space ``z * 0.18215``.

Conventions (stated once):

* **Input range [0, 1]** with frames along dim 1, like the 3D models' images (B, S, 3, H, W). The adapters map it to
  the [-1, 1], (B, 3, T, H, W) layout diffusers' VAEs expect (``2 * clip - 1``).
* **Raw latents**: what the VAE's encoder distribution gives, before any normalisation a diffusion transformer
  applies. For Wan that is *not* ``(z - latents_mean) / latents_std`` (the transformer-space latent); for CogVideoX it
  is *not* ``z * scaling_factor``. VIST3A's stitching layer eats raw (un-normalised) Wan latents: the official
  pipeline runs ``latents * std + mean`` on the generator output before the stitched decoder. The adapters expose
  :meth:`DiffusersVideoVAE.to_model_space` / :meth:`~DiffusersVideoVAE.from_model_space` for that conversion.
* ``sample=True`` (default, like the official layer search) draws ``latent_dist.sample(generator)``;
  ``sample=False`` returns the distribution mean (deterministic).

The adapters never change the wrapped module (no ``.to``, no ``eval()``): callers place it on a device and dtype.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "SVDVAE",
    "CogVideoXVAE",
    "DiffusersVideoVAE",
    "HunyuanVideoVAE",
    "VideoVAE",
    "WanVAE",
    "latent_frames",
    "load_diffusers_vae",
    "load_video_vae",
    "tiny_video_vae",
    "wrap_video_vae",
]


@runtime_checkable
class VideoVAE(Protocol):
    """What the layer search needs from a video VAE (see the module docstring for the conventions)."""

    latent_channels: int
    temporal_compression: int
    spatial_compression: int

    def encode(self, clip: Tensor) -> Tensor:
        """(B, T, 3, H, W) in [0, 1] -> raw latent (B, C, T_lat, H / s, W / s)."""
        ...


def latent_frames(num_frames: int, temporal_compression: int = 4) -> int:
    """Latent frame count of a causal video VAE: (T - 1) // t + 1 for T = t*k + 1 frames."""
    return (int(num_frames) - 1) // int(temporal_compression) + 1


class DiffusersVideoVAE:
    """Common adapter for diffusers' video VAEs whose ``encode(x)`` takes (B, 3, T, H, W) in [-1, 1] and returns an
    output with a ``latent_dist`` (a diagonal Gaussian). Subclasses set the compression factors from the config.

    Args:
        vae: the diffusers module.
        sample: draw from the encoder distribution (official layer search) instead of taking its mean.
        generator: optional ``torch.Generator`` for the sample (on the VAE's device).
    """

    name = "diffusers"

    def __init__(self, vae: nn.Module, *, sample: bool = True, generator: torch.Generator | None = None) -> None:
        self.vae = vae
        self.sample = bool(sample)
        self.generator = generator
        self.latent_channels = 0
        self.temporal_compression = 1
        self.spatial_compression = 1

    # ----------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T_lat, h, w) the adapter returns for a clip of ``num_frames`` x ``height`` x ``width``."""
        s = self.spatial_compression
        return (self.latent_channels, latent_frames(num_frames, self.temporal_compression), height // s, width // s)

    # ----------------------------------------------------------------------------------------- encode
    def check_clip(self, clip: Tensor) -> None:
        if not isinstance(clip, Tensor) or clip.dim() != 5 or clip.shape[2] != 3:
            shape = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
            raise ValueError(f"{type(self).__name__}.encode: clip must be (B, T, 3, H, W) in [0, 1], got {shape}")
        t, h, w = clip.shape[1], clip.shape[3], clip.shape[4]
        tc, sc = self.temporal_compression, self.spatial_compression
        if (t - 1) % tc:
            raise ValueError(f"{type(self).__name__}.encode: {t} frames; this VAE needs {tc}k + 1 frames "
                             f"(e.g. {tc * max((t - 1) // tc, 0) + 1} or {tc * ((t - 1) // tc + 1) + 1})")
        if h % sc or w % sc:
            raise ValueError(f"{type(self).__name__}.encode: frame size {h}x{w} must be a multiple of {sc}")

    @torch.no_grad()
    def encode(self, clip: Tensor) -> Tensor:
        """(B, T, 3, H, W) in [0, 1] -> raw latent (B, C, T_lat, h, w) on the VAE's device and dtype."""
        self.check_clip(clip)
        x = clip.to(device=self.device, dtype=self.dtype).permute(0, 2, 1, 3, 4) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator=self.generator) if self.sample else dist.mean
        expected = (clip.shape[0], *self.latent_shape(clip.shape[1], clip.shape[3], clip.shape[4]))
        if tuple(z.shape) != expected:
            raise RuntimeError(f"{type(self).__name__}.encode: latent shape {tuple(z.shape)} differs from the "
                               f"expected {expected}; the VAE config's compression factors are not what this adapter "
                               f"assumed")
        return z

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Raw latent (B, C, T_lat, h, w) -> frames (B, T, 3, H, W) float32 in [0, 1] (``vae.decode``, [-1, 1] mapped
        back)."""
        video = self.vae.decode(z.to(device=self.device, dtype=self.dtype), return_dict=False)[0]
        return ((video.float() + 1) / 2).clamp_(0, 1).permute(0, 2, 1, 3, 4).contiguous()

    # ----------------------------------------------------------------------------------------- normalisation
    def to_model_space(self, z: Tensor) -> Tensor:
        """Raw latent -> the latent space of this VAE's diffusion transformer (identity here)."""
        return z

    def from_model_space(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`to_model_space`."""
        return z


class WanVAE(DiffusersVideoVAE):
    """diffusers ``AutoencoderKLWan`` (Wan 2.1). Raw latents: no ``(z - latents_mean) / latents_std``.

    Factors from the config: temporal ``2 ** sum(temperal_downsample)``, spatial ``2 ** (len(dim_mult) - 1)``
    (times ``patch_size`` where set, the Wan 2.2 variant); 4 and 8 for the released VAE.
    """

    name = "wan"

    def __init__(self, vae: nn.Module, *, sample: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__(vae, sample=sample, generator=generator)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_compression = 2 ** int(sum(bool(v) for v in cfg.temperal_downsample))
        self.spatial_compression = 2 ** (len(cfg.dim_mult) - 1) * int(getattr(cfg, "patch_size", None) or 1)

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(shape)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(shape)
        if mean.numel() != z.shape[1]:
            raise ValueError(f"WanVAE: config has {mean.numel()} latents_mean values for {z.shape[1]} channels")
        return mean, std

    def to_model_space(self, z: Tensor) -> Tensor:
        """(z - latents_mean) / latents_std: the Wan transformer's latent space."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def from_model_space(self, z: Tensor) -> Tensor:
        """z * latents_std + latents_mean: what the stitched decoder eats."""
        mean, std = self._stats(z)
        return z * std + mean


class CogVideoXVAE(DiffusersVideoVAE):
    """diffusers ``AutoencoderKLCogVideoX``. Raw latents: not multiplied by ``scaling_factor`` (CogVideoX pipelines
    feed ``z * scaling_factor`` to the transformer and divide before decoding; there is no shift).

    Factors from the config: temporal ``temporal_compression_ratio`` (4), spatial ``2 ** (len(block_out_channels)
    - 1)`` (8). The diffusers encoder processes frames in chunks of 8 (+1); 4k + 1 frames work.
    """

    name = "cogvideox"

    def __init__(self, vae: nn.Module, *, sample: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__(vae, sample=sample, generator=generator)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.temporal_compression = int(cfg.temporal_compression_ratio)
        self.spatial_compression = 2 ** (len(cfg.block_out_channels) - 1)

    def to_model_space(self, z: Tensor) -> Tensor:
        return z * float(self.vae.config.scaling_factor)

    def from_model_space(self, z: Tensor) -> Tensor:
        return z / float(self.vae.config.scaling_factor)


class HunyuanVideoVAE(DiffusersVideoVAE):
    """diffusers ``AutoencoderKLHunyuanVideo`` (HunyuanVideo's causal 3D VAE). Raw latents: not multiplied by
    ``scaling_factor`` (0.476986; the HunyuanVideo pipeline feeds ``z * scaling_factor`` to the transformer, no
    shift).

    Factors from the config: ``latent_channels`` (16), ``temporal_compression_ratio`` (4: T = 4k + 1 frames,
    T_lat = k + 1), ``spatial_compression_ratio`` (8).
    """

    name = "hunyuan"

    def __init__(self, vae: nn.Module, *, sample: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__(vae, sample=sample, generator=generator)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.temporal_compression = int(cfg.temporal_compression_ratio)
        self.spatial_compression = int(cfg.spatial_compression_ratio)

    def to_model_space(self, z: Tensor) -> Tensor:
        return z * float(self.vae.config.scaling_factor)

    def from_model_space(self, z: Tensor) -> Tensor:
        return z / float(self.vae.config.scaling_factor)


class SVDVAE(DiffusersVideoVAE):
    """diffusers ``AutoencoderKLTemporalDecoder`` (Stable Video Diffusion): a 2D image encoder applied to every frame
    (no temporal compression) and a temporal decoder. Raw latents: not multiplied by ``scaling_factor`` (0.18215).

    Layout: the frames are folded into the batch for the encoder, ``(B*T, 3, H, W) -> (B*T, 4, H/8, W/8)``, and
    unfolded to the common ``(B, 4, T, h, w)``. Factors: ``latent_channels`` (4), temporal 1 (any frame count; the
    stitching layer keeps T frames), spatial ``2 ** (len(block_out_channels) - 1)`` (8).
    """

    name = "svd"

    def __init__(self, vae: nn.Module, *, sample: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__(vae, sample=sample, generator=generator)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.temporal_compression = 1
        self.spatial_compression = 2 ** (len(cfg.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, clip: Tensor) -> Tensor:
        """(B, T, 3, H, W) in [0, 1] -> raw latent (B, 4, T, h, w): every frame encoded on its own."""
        self.check_clip(clip)
        b, t = clip.shape[:2]
        x = clip.to(device=self.device, dtype=self.dtype).reshape(b * t, *clip.shape[2:]) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator=self.generator) if self.sample else dist.mean
        z = z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        expected = (b, *self.latent_shape(t, clip.shape[3], clip.shape[4]))
        if tuple(z.shape) != expected:
            raise RuntimeError(f"SVDVAE.encode: latent shape {tuple(z.shape)} differs from the expected {expected}")
        return z

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Raw latent (B, 4, T, h, w) -> frames (B, T, 3, H, W) in [0, 1]: the temporal decoder over the T frames."""
        b, c, t, h, w = z.shape
        flat = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).to(device=self.device, dtype=self.dtype)
        frames = self.vae.decode(flat, num_frames=t, return_dict=False)[0]
        frames = ((frames.float() + 1) / 2).clamp_(0, 1)
        return frames.reshape(b, t, *frames.shape[1:])

    def to_model_space(self, z: Tensor) -> Tensor:
        return z * float(self.vae.config.scaling_factor)

    def from_model_space(self, z: Tensor) -> Tensor:
        return z / float(self.vae.config.scaling_factor)


_ADAPTERS = {"wan": WanVAE, "cogvideox": CogVideoXVAE, "hunyuan": HunyuanVideoVAE, "svd": SVDVAE}
_CLASSES = {"wan": "AutoencoderKLWan", "cogvideox": "AutoencoderKLCogVideoX", "hunyuan": "AutoencoderKLHunyuanVideo",
            "svd": "AutoencoderKLTemporalDecoder"}
#: ``--vae`` names of the scripts
VAE_KINDS = tuple(_ADAPTERS)


def wrap_video_vae(vae: nn.Module, **kwargs) -> DiffusersVideoVAE:
    """Pick the adapter for a diffusers VAE instance by class name."""
    name = type(vae).__name__
    for kind, cls_name in _CLASSES.items():
        if name == cls_name:
            return _ADAPTERS[kind](vae, **kwargs)
    raise ValueError(f"wrap_video_vae: no adapter for {name}; supported: {', '.join(_CLASSES.values())}")


def _diffusers_class(kind: str):
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown VAE kind {kind!r}; choose one of {sorted(_ADAPTERS)}")
    import diffusers

    return getattr(diffusers, _CLASSES[kind])


def tiny_video_vae(kind: str = "wan", seed: int = 0, **kwargs) -> DiffusersVideoVAE:
    """A tiny randomly initialised VAE of the real class (CPU tests / smoke runs) with the real factors: 16 latent
    channels, compression 4 x 8 x 8 (SVD: 4 channels, 1 x 8 x 8).

    Wan: ``AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1,1,1,1], num_res_blocks=1,
    temperal_downsample=[False,True,True])``; CogVideoX: ``block_out_channels=(8,)*4, layers_per_block=1,
    norm_num_groups=4``; HunyuanVideo: ``block_out_channels=(8,)*4, layers_per_block=1, norm_num_groups=4,
    mid_block_add_attention=False``; SVD: ``down_block_types=("DownEncoderBlock2D",)*4, block_out_channels=(32,)*4``
    (its encoder's GroupNorm has 32 groups).
    """
    cls = _diffusers_class(kind)
    torch.manual_seed(seed)
    if kind == "wan":
        vae = cls(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True])
    elif kind == "hunyuan":
        vae = cls(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                  mid_block_add_attention=False)
    elif kind == "svd":
        vae = cls(down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                  layers_per_block=1, latent_channels=4)
    else:
        vae = cls(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=16)
    return _ADAPTERS[kind](vae.eval(), **kwargs)


def load_diffusers_vae(kind: str, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The raw diffusers VAE (``AutoencoderKLWan`` / ``AutoencoderKLCogVideoX`` / ``AutoencoderKLHunyuanVideo`` /
    ``AutoencoderKLTemporalDecoder``) in eval mode from a VAE folder, a
    pipeline folder (its ``vae/`` subfolder) or a hub id (a pipeline repository's ``vae/``).

    Raises ``OSError`` / ``ValueError`` from diffusers when the files cannot be found or read.
    """
    cls = _diffusers_class(kind)
    local = os.path.expanduser(os.fspath(path))
    if os.path.isdir(local):
        sub = "vae" if os.path.isdir(os.path.join(local, "vae")) else None
        return cls.from_pretrained(local, subfolder=sub, torch_dtype=dtype).eval()
    return cls.from_pretrained(os.fspath(path), subfolder="vae", torch_dtype=dtype).eval()


def load_video_vae(kind: str, path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   **kwargs) -> DiffusersVideoVAE:
    """Load a diffusers VAE with :func:`load_diffusers_vae` and wrap it. ``kind``: ``"wan"``, ``"cogvideox"``,
    ``"hunyuan"`` or ``"svd"``."""
    try:
        vae = load_diffusers_vae(kind, path, dtype)
    except (OSError, ValueError) as exc:
        raise ValueError(f"load_video_vae: cannot load a {kind} VAE from {path!r}: {exc}") from exc
    return _ADAPTERS[kind](vae.to(device), **kwargs)
