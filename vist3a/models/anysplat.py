"""AnySplat (InternRobotics/AnySplat, checkpoint ``lhjiang/anysplat``): images -> cameras, depth, 3D Gaussians.

``AnySplat()(images)`` takes (B, V, 3, H, W) in [0, 1] with H, W multiples of 14 (the official demo centre-crops to
448x448) and returns a dict of tensors (names as in our golden files):

* ``pose_enc`` (B, V, 9), ``pose_enc_list`` (iterations, B, V, 9);
* ``extrinsic`` (B, V, 3, 4) world-to-camera and ``intrinsic`` (B, V, 3, 3) in pixels (focal with the +1e-3);
* ``c2w`` (B, V, 4, 4) and ``intrinsic_normalized`` (B, V, 3, 3) (AnySplat's ``pred_context_pose``);
* ``depth`` (B, V, H, W, 1), ``depth_conf`` (B, V, H, W), ``world_points`` (B, V, H, W, 3) (unprojected depth);
* ``anchor_feats`` (B, V, 1 + 7 + 3K, H, W) raw Gaussian-head channels, ``gs_conf`` (B, V, H, W);
* ``gaussians``: a list (one per batch item) of :class:`~vist3a.models.heads.GaussianAdapterOutput` in AnySplat's
  layout (rotations xyzw, harmonics (N, 3, K)); one Gaussian per pixel, flat index v*H*W + y*W + x, unless
  ``config.voxelize`` fuses them per voxel;
* ``scene_scale`` () mean distance of the world points from the origin.

:meth:`AnySplat.predict` wraps this into our containers (:class:`~vist3a.Gaussians` wxyz / (N, K, 3),
:class:`~vist3a.Cameras`). The state dict matches the published checkpoint key for key (``encoder.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import Cameras, invert_rigid, vggt_pose_encoding_to_extrinsics
from ..gaussians import Gaussians
from .aggregator import Aggregator
from .config import AnySplatConfig
from .cutpoints import CutPointMixin
from .geometry import unproject_depth
from .heads.camera import CameraHead
from .heads.dpt import DPTHead
from .heads.gaussian import (
    GaussianAdapterOutput,
    GaussianHead,
    gaussian_adapter,
    opacity_from_density,
)

__all__ = ["AnySplat", "AnySplatEncoder", "AnySplatPrediction", "voxel_fuse"]

ANYSPLAT_FOCAL_EPS = 1e-3  # AnySplat adds this to tan(fov/2) when it decodes the pose encoding (VGGT adds nothing)


def voxel_fuse(points: Tensor, feats: Tensor, conf: Tensor, voxel_size: float) -> tuple[Tensor, Tensor]:
    """Confidence-softmax fusion of points (M, 3) and features (M, F) per voxel of ``voxel_size``, as AnySplat's
    ``voxelizaton_with_fusion`` (plain torch scatter ops instead of torch_scatter).

    Voxel of a point: ``round(p / voxel_size)`` (round half to even) cast to int32; voxels are returned in the order
    of ``torch.unique(dim=0)`` (lexicographic in the integer coordinates). Per voxel, the weights are
    ``exp(c - max c) / (sum exp(c - max c) + 1e-6)`` over its points' confidences ``conf`` (M,) (the raw Gaussian-head
    channel), and the fused point / features are the weighted sums (so they are shrunk by the 1e-6 like the
    official code). Returns (V, 3), (V, F)."""
    idx = torch.round(points / voxel_size).int()
    _, inverse = torch.unique(idx, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.numel() else 0
    conf = conf.reshape(-1)
    cmax = torch.full((n,), float("-inf"), dtype=conf.dtype, device=conf.device)
    cmax = cmax.scatter_reduce(0, inverse, conf, reduce="amax", include_self=True)
    e = torch.exp(conf - cmax[inverse])
    total = torch.zeros(n, dtype=e.dtype, device=e.device).index_add_(0, inverse, e)
    wgt = (e / (total[inverse] + 1e-6))[:, None]
    vp = torch.zeros(n, 3, dtype=points.dtype, device=points.device).index_add_(0, inverse, points * wgt)
    vf = torch.zeros(n, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, inverse, feats * wgt)
    return vp, vf


class AnySplatEncoder(nn.Module):
    """The parameterised part of AnySplat (``encoder.*`` keys)."""

    def __init__(self, cfg: AnySplatConfig) -> None:
        super().__init__()
        a = cfg.aggregator
        dim = 2 * a.embed_dim
        self.aggregator = Aggregator(a.img_size, a.patch_size, a.embed_dim, a.depth, a.num_heads, a.mlp_ratio,
                                     a.num_register_tokens, a.rope_freq, a.init_values, a.dino_depth,
                                     a.dino_num_heads, a.frame_tokens)
        self.camera_head = CameraHead(dim, cfg.camera_trunk_depth, cfg.camera_num_heads,
                                      num_iterations=cfg.camera_iterations)
        self.depth_head = DPTHead(dim, a.patch_size, output_dim=2, activation="exp", conf_activation="expp1",
                                  features=cfg.dpt_features, out_channels=cfg.dpt_out_channels,
                                  head_hidden=cfg.dpt_hidden)
        self.gaussian_param_head = GaussianHead(dim, a.patch_size, output_dim=cfg.raw_gs_dim + 1,
                                                features=cfg.dpt_features, out_channels=cfg.dpt_out_channels,
                                                hidden=cfg.gs_hidden)


@dataclass
class AnySplatPrediction:
    """Per batch item: ``gaussians[b]`` (:class:`Gaussians`), ``cameras[b]`` (:class:`Cameras`, V views);
    ``depth`` (B, V, H, W), ``depth_conf`` (B, V, H, W); ``raw`` is the forward dict."""

    gaussians: list[Gaussians]
    cameras: list[Cameras]
    depth: Tensor
    depth_conf: Tensor
    raw: dict[str, Any]


class AnySplat(CutPointMixin, nn.Module):
    def __init__(self, config: AnySplatConfig | None = None) -> None:
        super().__init__()
        self.config = config or AnySplatConfig()
        self.encoder = AnySplatEncoder(self.config)

    @property
    def aggregator(self) -> Aggregator:
        return self.encoder.aggregator

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.aggregator.camera_token.dtype

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, global_step: int = 0) -> dict[str, Any]:
        """images (B, V, 3, H, W) in [0, 1] -> raw output dict (see the module docstring)."""
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"AnySplat: images must be (B, V, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        p = self.aggregator.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise ValueError(f"AnySplat: image height and width must be multiples of {p}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        layers, _ = self.aggregator(images.to(self.dtype), layers=self._head_layers())
        return self._heads(layers, images, global_step=global_step)

    def _heads(self, layers: dict[int, Tensor], images: Tensor, global_step: int = 0) -> dict[str, Any]:
        cfg, enc = self.config, self.encoder
        b, v, _, h, w = images.shape
        psi = self.aggregator.patch_start_idx
        selected = [layers[i] for i in cfg.intermediate_layer_idx]
        head_dtype = enc.camera_head.token_norm.weight.dtype
        pose_list = enc.camera_head(layers[self.aggregator.depth - 1])
        pose_enc = pose_list[-1]
        extrinsic, intrinsic = vggt_pose_encoding_to_extrinsics(pose_enc.float(), h, w, eps=ANYSPLAT_FOCAL_EPS)
        depth, depth_conf = enc.depth_head(selected, (h, w), psi)
        world = unproject_depth(depth, extrinsic, intrinsic)
        gs = enc.gaussian_param_head(selected, images.to(head_dtype), psi)  # (B, V, C, H, W)
        anchor, gs_conf = gs[:, :, :cfg.raw_gs_dim], gs[:, :, cfg.raw_gs_dim]

        gaussians: list[GaussianAdapterOutput] = []
        for i in range(b):
            feats = anchor[i].permute(0, 2, 3, 1).reshape(-1, cfg.raw_gs_dim)
            pts = world[i].reshape(-1, 3)
            if cfg.voxelize:
                pts, feats = voxel_fuse(pts, feats.float(), gs_conf[i].float(), cfg.voxel_size)
            density = feats[:, 0].sigmoid()
            opacity = opacity_from_density(density, global_step, *cfg.opacity_mapping)
            g = gaussian_adapter(pts[None], opacity[None], feats[None, :, 1:], cfg.sh_degree)
            gaussians.append(GaussianAdapterOutput(*(t[0] for t in (g.means, g.scales, g.rotations, g.harmonics,
                                                                     g.opacities, g.covariances))))

        k_norm = intrinsic.clone()
        k_norm[..., 0, :] = k_norm[..., 0, :] / w
        k_norm[..., 1, :] = k_norm[..., 1, :] / h
        w2c_4x4 = torch.cat([extrinsic, extrinsic.new_tensor([0, 0, 0, 1]).expand(b, v, 1, 4)], dim=2)
        return {
            "pose_enc": pose_enc,
            "pose_enc_list": torch.stack(pose_list),
            "extrinsic": extrinsic,
            "intrinsic": intrinsic,
            "c2w": torch.linalg.inv(w2c_4x4),
            "intrinsic_normalized": k_norm,
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": world,
            "anchor_feats": anchor,
            "gs_conf": gs_conf,
            "gaussians": gaussians,
            "scene_scale": world.reshape(-1, 3).norm(dim=-1).mean().clip(min=1e-8),
        }

    # ------------------------------------------------------------------ containers
    @torch.no_grad()
    def predict(self, images: Tensor, global_step: int = 0) -> AnySplatPrediction:
        """Forward (no grad) and convert to :class:`Gaussians` (rotations wxyz, sh (N, K, 3)) and :class:`Cameras`."""
        return self.wrap_prediction(self.forward(images, global_step=global_step), images)

    def wrap_prediction(self, raw: dict[str, Any], images: Tensor) -> AnySplatPrediction:
        """Raw forward dict (from :meth:`forward` or :meth:`forward_from`) -> :class:`AnySplatPrediction`."""
        h, w = images.shape[-2:]
        gaussians = [to_gaussians(g) for g in raw["gaussians"]]
        cameras = [Cameras(invert_rigid(raw["extrinsic"][i]), raw["intrinsic"][i], w, h)
                   for i in range(images.shape[0])]
        return AnySplatPrediction(gaussians, cameras, raw["depth"][..., 0], raw["depth_conf"], raw)


def to_gaussians(g: GaussianAdapterOutput) -> Gaussians:
    """AnySplat layout (xyzw, (N, 3, K)) -> :class:`Gaussians` (wxyz, (N, K, 3))."""
    return Gaussians(
        means=g.means,
        scales=g.scales,
        rotations=g.rotations[:, [3, 0, 1, 2]].contiguous(),
        opacities=g.opacities,
        sh=g.harmonics.transpose(1, 2).contiguous(),
        validate=False,
    )
