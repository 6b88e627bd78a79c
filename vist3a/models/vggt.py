"""VGGT (facebookresearch/vggt, checkpoint ``facebook/VGGT-1B``): images -> cameras, depth, point maps, tracks.

``VGGT()(images, query_points=None)`` takes (B, S, 3, H, W) (or (S, 3, H, W)) in [0, 1], H and W multiples of 14
(VGGT was trained at 518 px on the long side), and returns:

* ``pose_enc`` (B, S, 9) (last iteration) and ``pose_enc_list`` (iterations, B, S, 9);
* ``depth`` (B, S, H, W, 1) (exp), ``depth_conf`` (B, S, H, W) (1 + exp);
* ``world_points`` (B, S, H, W, 3) (``sign(x) * expm1(|x|)``), ``world_points_conf`` (B, S, H, W);
* with ``query_points`` (B, N, 2) pixels (x, y) in frame 0: ``track`` (B, S, N, 2), ``vis`` and ``conf``
  (B, S, N), and ``track_list`` (iterations, B, S, N, 2).

:meth:`VGGT.predict` wraps this into :class:`~vist3a.Pointmap` / :class:`~vist3a.Cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..cameras import Cameras, vggt_pose_encoding_to_extrinsics
from ..pointmap import Pointmap
from .aggregator import Aggregator
from .config import VGGTConfig
from .cutpoints import CutPointMixin
from .geometry import unproject_depth
from .heads.camera import CameraHead
from .heads.dpt import DPTHead
from .heads.track import TrackHead

__all__ = ["VGGT", "VGGTPrediction"]


@dataclass
class VGGTPrediction:
    """Per batch item ``pointmaps[b]`` and ``cameras[b]``; ``depth`` (B, S, H, W), ``depth_conf`` (B, S, H, W);
    ``raw`` is the forward dict."""

    pointmaps: list[Pointmap]
    cameras: list[Cameras]
    depth: Tensor
    depth_conf: Tensor
    raw: dict[str, Any]


class VGGT(CutPointMixin, nn.Module):
    def __init__(self, config: VGGTConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or VGGTConfig()
        a = cfg.aggregator
        dim = 2 * a.embed_dim
        self.aggregator = Aggregator(a.img_size, a.patch_size, a.embed_dim, a.depth, a.num_heads, a.mlp_ratio,
                                     a.num_register_tokens, a.rope_freq, a.init_values, a.dino_depth,
                                     a.dino_num_heads, a.frame_tokens)
        self.camera_head = CameraHead(dim, cfg.camera_trunk_depth, cfg.camera_num_heads,
                                      num_iterations=cfg.camera_iterations)
        dpt = {"features": cfg.dpt_features, "out_channels": cfg.dpt_out_channels, "head_hidden": cfg.dpt_hidden}
        self.point_head = DPTHead(dim, a.patch_size, output_dim=4, activation="inv_log", **dpt)
        self.depth_head = DPTHead(dim, a.patch_size, output_dim=2, activation="exp", **dpt)
        self.track_head = (
            TrackHead(dim, a.patch_size, features=cfg.track_features, iters=cfg.track_iters,
                      out_channels=cfg.dpt_out_channels, hidden=cfg.track_hidden, depth=cfg.track_depth,
                      corr_levels=cfg.track_corr_levels, corr_radius=cfg.track_corr_radius,
                      num_heads=cfg.track_num_heads, num_virtual=cfg.track_num_virtual)
            if cfg.track_head else None
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.aggregator.camera_token.dtype

    def forward(self, images: Tensor, query_points: Tensor | None = None) -> dict[str, Any]:
        if images.ndim == 4:
            images = images[None]
        if query_points is not None and query_points.ndim == 2:
            query_points = query_points[None]
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"VGGT: images must be (B, S, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        p = self.aggregator.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise ValueError(f"VGGT: image height and width must be multiples of {p}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        layers, _ = self.aggregator(images.to(self.dtype), layers=self._head_layers())
        return self._heads(layers, images, query_points=query_points)

    def _heads(self, layers: dict[int, Tensor], images: Tensor, query_points: Tensor | None = None
               ) -> dict[str, Any]:
        h, w = images.shape[-2:]
        psi = self.aggregator.patch_start_idx
        selected = [layers[i] for i in self.config.intermediate_layer_idx]
        pose_list = self.camera_head(layers[self.aggregator.depth - 1])
        depth, depth_conf = self.depth_head(selected, (h, w), psi)
        points, points_conf = self.point_head(selected, (h, w), psi)
        out: dict[str, Any] = {
            "pose_enc": pose_list[-1],
            "pose_enc_list": torch.stack(pose_list),
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": points,
            "world_points_conf": points_conf,
        }
        if query_points is not None:
            if self.track_head is None:
                raise ValueError("VGGT: this model was built without a track head (config.track_head=False)")
            tracks, vis, conf = self.track_head(selected, (h, w), psi, query_points)
            out.update(track=tracks[-1], vis=vis, conf=conf, track_list=torch.stack(tracks))
        return out

    @torch.no_grad()
    def predict(self, images: Tensor, points_from: Literal["depth", "head"] = "depth") -> VGGTPrediction:
        """Forward (no grad) and wrap into containers. ``points_from="depth"`` unprojects the depth map with the
        predicted cameras (VGGT's recommended branch, confidence = depth_conf); ``"head"`` uses the point head."""
        if images.ndim == 4:
            images = images[None]
        return self.wrap_prediction(self.forward(images), images, points_from)

    def wrap_prediction(self, raw: dict[str, Any], images: Tensor, points_from: Literal["depth", "head"] = "depth"
                        ) -> VGGTPrediction:
        """Raw forward dict (from :meth:`forward` or :meth:`forward_from`) -> :class:`VGGTPrediction`;
        ``images`` (B, S, 3, H, W) in [0, 1] give the size and the point colours."""
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        pose = raw["pose_enc"].float().clone()
        pose[..., 7:] = pose[..., 7:].clamp(min=1e-6)  # a zero field of view would give an infinite focal length
        cams = [Cameras.from_vggt_pose_encoding(pose[i], h, w) for i in range(b)]
        if points_from == "depth":
            extr, intr = vggt_pose_encoding_to_extrinsics(pose.float(), h, w)
            pts, conf = unproject_depth(raw["depth"], extr, intr), raw["depth_conf"]
        elif points_from == "head":
            pts, conf = raw["world_points"], raw["world_points_conf"]
        else:
            raise ValueError(f"VGGT.predict: points_from must be 'depth' or 'head', got {points_from!r}")
        colors = images.permute(0, 1, 3, 4, 2).float()
        maps = [Pointmap(pts[i].float(), conf[i].float(), colors[i], cams[i]) for i in range(b)]
        return VGGTPrediction(maps, cams, raw["depth"][..., 0], raw["depth_conf"], raw)
