"""What the pipelines return, and the shared last stage: raw latent (+ frames) -> stitched decoder -> containers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..pointmap import Pointmap

__all__ = ["SceneOutput", "frames_size", "run_decoder"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class SceneOutput:
    """One generated / reconstructed scene (all tensors on the CPU, float32).

    * ``gaussians``: :class:`Gaussians` (AnySplat decoders; None for VGGT), one per pixel of every 3D-model frame;
    * ``cameras``: :class:`Cameras`, T views of the 3D-model frame size (camera-to-world, OpenCV axes);
    * ``pointmap``: :class:`Pointmap` (T, H3, W3): AnySplat = unprojected depth, VGGT = its point / depth output;
    * ``frames``: (T, 3, H, W) in [0, 1], the video frames (VAE-decoded or the user's), or None when not needed;
    * ``depth``: (T, H3, W3) depth per 3D-model frame;
    * ``latent``: (1, 16, T_lat, H/8, W/8) raw (un-normalised) Wan latent fed to the stitched decoder;
    * ``info``: settings used (prompt, seed, sizes, ...).
    """

    gaussians: Gaussians | None
    cameras: Cameras
    pointmap: Pointmap
    frames: Tensor | None
    depth: Tensor
    latent: Tensor
    info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def run_decoder(decoder, raw_latent: Tensor, frames3d: Tensor, device: torch.device | str | None = None,
                vggt_points: str = "head") -> tuple[Gaussians | None, Cameras, Pointmap, Tensor]:
    """Stitched decoder on a raw latent (1, 16, T_lat, h, w) and 3D-size frames (1, T, 3, H3, W3) in [0, 1].

    ``device``: where to run (default: the decoder's device); the decoder is moved there for the call and moved
    back afterwards (manual offload when the rest of the pipeline uses model CPU offload).
    Pointmaps: AnySplat = its unprojected depth (depth + predicted cameras); VGGT = its point head
    (``vggt_points="head"``, default) or its unprojected depth (``"depth"``); MVDUSt3R = its pointmap of reference
    path 0 (Gaussians too, cameras estimated from the pointmap).
    Returns (gaussians or None, cameras, pointmap, depth (T, H3, W3)) on the CPU in float32.
    """
    param = next(decoder.parameters())
    home = param.device
    run_on = torch.device(device) if device is not None else home
    if run_on != home:
        decoder.to(run_on)
    try:
        latent = raw_latent.to(device=run_on, dtype=param.dtype)
        images = frames3d.to(device=run_on, dtype=param.dtype)
        kwargs = {"points_from": vggt_points} if decoder.kind == "vggt" else {}
        pred = decoder.predict(latent, images, **kwargs)
    finally:
        if run_on != home:
            decoder.to(home)
    cameras = pred.cameras[0].to(device="cpu", dtype=torch.float32)
    depth = pred.depth[0].float().cpu()
    if decoder.kind == "anysplat":
        gaussians = pred.gaussians[0].to(device="cpu", dtype=torch.float32)
        colors = frames3d[0].permute(0, 2, 3, 1).float().cpu()
        pointmap = Pointmap(pred.raw["world_points"][0].float().cpu(), pred.depth_conf[0].float().cpu(), colors,
                            cameras)
        return gaussians, cameras, pointmap, depth
    pointmap = pred.pointmaps[0].to(device="cpu", dtype=torch.float32)
    if decoder.kind == "mvdust3r":  # both: per-pixel Gaussians and the pointmap (frame of the first frame's camera)
        return pred.gaussians[0].to(device="cpu", dtype=torch.float32), cameras, pointmap, depth
    return None, cameras, pointmap, depth


def frames_size(decoder, height: int, width: int) -> tuple[int, int]:
    """3D-model frame size for a video of height x width: the decoder's own rule (MVDUSt3R: the stitching conv's
    grid x 16, 384 -> 224), else video / 16 * 14 (512 -> 448)."""
    from .settings import model_size

    rule = getattr(decoder, "model_size_for", None)
    return tuple(rule((height, width))) if rule is not None else model_size(height, width)
