"""Stitched decoders: a 3D model (AnySplat / VGGT / MVDUSt3R) fed from a video VAE's latent space through one conv.

* :mod:`.config` -- the stitching-layer grammar (``conv3d_k5x3x3_o1024_s1x2x2_p2x1x1``) -> :class:`StitchingConfig`;
* :mod:`.layer` -- :class:`StitchingLayer` (trilinear resize + replicate-padded conv, and its im2col for the search);
* :mod:`.decoder` -- :class:`StitchedDecoder` (latent + decoded frames -> Gaussians / point maps + cameras);
* :mod:`.lora` -- loralib merge (published checkpoints) and peft LoRA for finetuning;
* :mod:`.checkpoint` -- :func:`load_published_stitched` (``HJGO/VIST3A`` .pth), :func:`save_decoder` /
  :func:`load_decoder` (our folder format);
* :mod:`.search` -- :class:`LayerSearch`: closed-form (ridge) stitching-layer fits for every candidate layer from
  streamed float64 normal equations, ranked by MSE (and CKA), summed across ranks with :func:`reduce_`;
* :mod:`.vae` -- the small video-VAE interface the search encodes clips with (:func:`wrap_video_vae`: Wan, CogVideoX,
  HunyuanVideo, SVD).

Latents are always un-normalised Wan latents (``z * std + mean``), layout (B, 16, T_lat, H/8, W/8).
"""

from .checkpoint import load_decoder, load_published_stitched, save_decoder
from .config import RELEASED_CONFIG, StitchingConfig, parse_config
from .decoder import StitchedDecoder
from .layer import StitchingLayer, num_video_frames, resize_latent, to_rows
from .lora import add_lora, load_lora_adapter, merge_lora, save_lora_adapter
from .search import LayerSearch, SearchResult, reduce_
from .vae import VideoVAE, wrap_video_vae

__all__ = [
    "LayerSearch",
    "RELEASED_CONFIG",
    "SearchResult",
    "VideoVAE",
    "StitchedDecoder",
    "StitchingConfig",
    "StitchingLayer",
    "add_lora",
    "load_decoder",
    "load_lora_adapter",
    "load_published_stitched",
    "merge_lora",
    "num_video_frames",
    "parse_config",
    "reduce_",
    "resize_latent",
    "save_decoder",
    "save_lora_adapter",
    "to_rows",
    "wrap_video_vae",
]
