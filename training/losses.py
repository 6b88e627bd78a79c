"""Self-supervised stitched-decoder loss: weighted L1 between the stitched decoder's outputs (on Wan latents) and the
frozen original 3D model's outputs (on the real frames), the VIST3A finetuning objective.

Every term is a mean absolute error over all elements (``mean |pred - target|``), computed in float32; the total is
``sum_k weight_k * term_k``. Only outputs that BOTH dicts hold are compared (a term whose source is missing from
either side is skipped, never zero-filled).

Output names -> terms (the paper's names on the left; our forward-dict names, see ``vist3a.models.anysplat`` /
``vist3a.models.vggt``):

AnySplat (:class:`AnySplatLossWeights`):

==================  =============================================  ======
term                source                                         weight
==================  =============================================  ======
depth               ``depth`` (B, V, H, W, 1)                      1
depth_grad          ``depth``: finite differences over 4 scales     0.005
means               ``gaussians[b].means`` (N, 3)                  1
covariances         ``gaussians[b].covariances`` (N, 3, 3)         1
harmonics           ``gaussians[b].harmonics`` (N, 3, K)           1
opacities           ``gaussians[b].opacities`` (N,)                1
rotations           ``gaussians[b].rotations`` (N, 4) xyzw          1
scales              ``gaussians[b].scales`` (N, 3)                 10
conf                ``gs_conf`` (B, V, H, W) Gaussian-head conf.   0.01
depth_conf          ``depth_conf`` (B, V, H, W)                    0.01
anchor_feats        ``anchor_feats`` (B, V, 1+7+3K, H, W)          0.1
extrinsics          ``extrinsic`` (B, V, 3, 4) world-to-camera     1
intrinsics          ``intrinsic_normalized`` (B, V, 3, 3)          1
pose_enc            ``pose_enc_list`` (iters, B, V, 9)             1
==================  =============================================  ======

Mapping choices: "conf" is the Gaussian head's confidence channel (``gs_conf``; the depth head's is ``depth_conf``);
"intrinsics" are AnySplat's normalised intrinsics (its ``pred_context_pose`` intrinsics, focal / image size) rather
than the pixel ones, so the term does not scale with the resolution; "pose encodings" covers every camera-head
refinement iteration (``pose_enc_list``, whose last entry is ``pose_enc``). Not compared (redundant): ``c2w`` (the
inverse of ``extrinsic``), ``world_points`` (the Gaussian means), ``intrinsic`` (pixels), ``scene_scale``.
Gaussians are compared per pixel, which needs ``config.voxelize = False`` (the training setting): with voxel fusion
the two models give different Gaussian counts and :func:`stitched_loss` raises.

Recipes (``--recipe`` of train_stitched_decoder; :func:`loss_weights`): ``paper`` is the table above; ``official``
(:class:`OfficialAnySplatLossWeights`, the released ``TaskLossAnySplat``) has the same weights but

* depth_grad = :func:`official_gradient_l1`: the released ``gradient_loss_multi_scale`` applied to the (B, V, H, W,
  1) depth maps as they are, i.e. finite differences along H and ACROSS VIEWS (dims 2 and 1), clamped at 100, summed
  and divided by B * V * H; multiscale by striding V and H by 2**s (not pooling), averaged over 4 scales;
* extrinsics = L1 of the camera-to-world 4x4 matrices (``c2w``, AnySplat's ``pred_context_pose``) instead of the
  world-to-camera 3x4.

VGGT (:class:`VGGTLossWeights`): pose 5 (``pose_enc_list``), depth 1, world_points 1, confidences 5e-3
(``depth_conf``, ``world_points_conf``), gradient terms 5e-3 (``depth_grad``, ``world_points_grad``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GAUSSIAN_FIELDS",
    "RECIPES",
    "AnySplatLossWeights",
    "OfficialAnySplatLossWeights",
    "VGGTLossWeights",
    "gaussian_l1",
    "gradient_l1",
    "l1",
    "loss_weights",
    "official_gradient_l1",
    "stitched_loss",
]

#: GaussianAdapterOutput fields compared by the AnySplat loss.
GAUSSIAN_FIELDS = ("means", "covariances", "harmonics", "opacities", "rotations", "scales")


@dataclass(frozen=True)
class AnySplatLossWeights:
    """Paper weights for stitched AnySplat (see the module docstring for each term's source)."""

    depth: float = 1.0
    depth_grad: float = 0.005
    means: float = 1.0
    covariances: float = 1.0
    harmonics: float = 1.0
    opacities: float = 1.0
    rotations: float = 1.0
    scales: float = 10.0
    conf: float = 0.01
    depth_conf: float = 0.01
    anchor_feats: float = 0.1
    extrinsics: float = 1.0
    intrinsics: float = 1.0
    pose_enc: float = 1.0

    #: term -> (output name, how): "l1" plain, "grad" multi-scale gradient L1, "gaussian" a Gaussian field
    SOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        "depth": ("depth", "l1"), "depth_grad": ("depth", "grad"),
        **{f: ("gaussians", "gaussian") for f in GAUSSIAN_FIELDS},
        "conf": ("gs_conf", "l1"), "depth_conf": ("depth_conf", "l1"), "anchor_feats": ("anchor_feats", "l1"),
        "extrinsics": ("extrinsic", "l1"), "intrinsics": ("intrinsic_normalized", "l1"),
        "pose_enc": ("pose_enc_list", "l1"),
    }

    def items(self) -> list[tuple[str, float]]:
        """(term, weight) in a fixed order (the field order)."""
        return list(asdict(self).items())


@dataclass(frozen=True)
class OfficialAnySplatLossWeights(AnySplatLossWeights):
    """The released ``TaskLossAnySplat``: the paper weights, with its depth-gradient term
    (:func:`official_gradient_l1`) and its extrinsics term (camera-to-world 4x4)."""

    SOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        **AnySplatLossWeights.SOURCES, "depth_grad": ("depth", "grad_official"), "extrinsics": ("c2w", "l1"),
    }


@dataclass(frozen=True)
class VGGTLossWeights:
    """Paper weights for stitched VGGT: pose 5, depth / points 1, confidences 5e-3, gradient terms 5e-3."""

    pose_enc: float = 5.0
    depth: float = 1.0
    world_points: float = 1.0
    depth_conf: float = 5e-3
    world_points_conf: float = 5e-3
    depth_grad: float = 5e-3
    world_points_grad: float = 5e-3

    SOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        "pose_enc": ("pose_enc_list", "l1"), "depth": ("depth", "l1"), "world_points": ("world_points", "l1"),
        "depth_conf": ("depth_conf", "l1"), "world_points_conf": ("world_points_conf", "l1"),
        "depth_grad": ("depth", "grad"), "world_points_grad": ("world_points", "grad"),
    }

    def items(self) -> list[tuple[str, float]]:
        return list(asdict(self).items())


@dataclass(frozen=True)
class MVDUSt3RLossWeights:
    """Stitched MVDUSt3R (ours: the paper states no MVDUSt3R weights and its code is not public): pointmaps 1 (+ their
    multi-scale gradients 5e-3), confidences 5e-3 (as VGGT), the per-pixel Gaussian fields 1 with the scales 10 (as
    AnySplat). Sources are the forward dict's (B, R, V, H, W[, C]) maps, every reference path."""

    pts3d: float = 1.0
    pts3d_grad: float = 5e-3
    conf: float = 5e-3
    opacity: float = 1.0
    scale: float = 10.0
    rotation: float = 1.0
    rgb: float = 1.0

    SOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        "pts3d": ("pts3d", "l1"), "pts3d_grad": ("pts3d", "grad"), "conf": ("conf", "l1"),
        "opacity": ("opacity", "l1"), "scale": ("scale", "l1"), "rotation": ("rotation", "l1"), "rgb": ("rgb", "l1"),
    }

    def items(self) -> list[tuple[str, float]]:
        return list(asdict(self).items())


RECIPES = ("official", "paper")


def loss_weights(kind: str, recipe: str = "paper") -> AnySplatLossWeights | VGGTLossWeights:
    """Weights for ``"anysplat"`` or ``"vggt"``: ``recipe="paper"`` (module docstring) or ``"official"`` (the
    released AnySplat loss; VGGT stitching was never released, so VGGT always gets the paper weights)."""
    if recipe not in RECIPES:
        raise ValueError(f"loss_weights: unknown recipe {recipe!r}; use one of {RECIPES}")
    if kind == "anysplat":
        return OfficialAnySplatLossWeights() if recipe == "official" else AnySplatLossWeights()
    if kind == "vggt":
        return VGGTLossWeights()
    if kind == "mvdust3r":
        return MVDUSt3RLossWeights()
    raise ValueError(f"loss_weights: unknown model kind {kind!r}; use 'anysplat', 'vggt' or 'mvdust3r'")


# ============================================================================================ terms
def _check_shapes(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"stitched loss: {name} has shape {tuple(pred.shape)} in the stitched decoder but "
                         f"{tuple(target.shape)} in the original model; both must see the same views and the same "
                         "3D-model resolution")


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all elements (float32 scalar). Shapes must match."""
    _check_shapes("l1", pred, target)
    return (pred.float() - target.float()).abs().mean()


def _as_images(x: Tensor) -> Tensor:
    """(B, V, H, W) or (B, V, H, W, C) -> (B*V, C, H, W) (MVDUSt3R's (B, R, V, H, W, C): paths fold into B)."""
    if x.dim() == 6:
        x = x.reshape(-1, *x.shape[2:])
    if x.dim() == 4:
        return x.reshape(-1, 1, *x.shape[-2:])
    if x.dim() == 5:
        return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    raise ValueError(f"gradient_l1: expected (B, V, H, W) or (B, V, H, W, C) maps, got {tuple(x.shape)}")


def gradient_l1(pred: Tensor, target: Tensor, scales: int = 4) -> Tensor:
    """Multi-scale gradient-matching L1 for per-pixel maps (B, V, H, W[, C]).

    At scale s (0..scales-1) both maps are average-pooled by 2**s; the horizontal and vertical finite differences
    (x[..., 1:] - x[..., :-1]) of prediction and target are compared with a mean absolute error. The result is the
    mean over the scales used of (L1 of d/dx + L1 of d/dy); scales whose map would be smaller than 2 px are skipped.
    Invariant to a constant offset of either map.
    """
    _check_shapes("gradient_l1", pred, target)
    p, t = _as_images(pred.float()), _as_images(target.float())
    total, used = p.new_zeros(()), 0
    for s in range(scales):
        if s:
            k = 2 ** s
            if min(p.shape[-2:]) // k < 2:
                break
            ps, ts = F.avg_pool2d(p, k), F.avg_pool2d(t, k)
        else:
            ps, ts = p, t
        dx = (ps[..., :, 1:] - ps[..., :, :-1]) - (ts[..., :, 1:] - ts[..., :, :-1])
        dy = (ps[..., 1:, :] - ps[..., :-1, :]) - (ts[..., 1:, :] - ts[..., :-1, :])
        total = total + dx.abs().mean() + dy.abs().mean()
        used += 1
    return total / max(used, 1)


def official_gradient_l1(pred: Tensor, target: Tensor, scales: int = 4) -> Tensor:
    """The released depth-gradient loss on maps (B, V, H, W, C) taken as they are (``gradient_loss_multi_scale``).

    With ``d = pred - target`` and ``d_s = d[:, ::2**s, ::2**s]`` (strides over V and H), per scale
    ``(sum |d_s[:, :, 1:] - d_s[:, :, :-1]|.clamp(max=100) + sum |d_s[:, 1:] - d_s[:, :-1]|.clamp(max=100)) /
    (B * V_s * H_s)`` -- differences along H (dim 2) and ACROSS VIEWS (dim 1), a sum over W and C divided by
    B * V_s * H_s only -- and the mean over the ``scales`` scales (computed in float32)."""
    _check_shapes("official_gradient_l1", pred, target)
    if pred.dim() < 3:
        raise ValueError(f"official_gradient_l1: expected (B, V, H, ...) maps, got {tuple(pred.shape)}")
    diff = pred.float() - target.float()
    total = diff.new_zeros(())
    for s in range(scales):
        d = diff[:, ::2 ** s, ::2 ** s]
        gx = (d[:, :, 1:] - d[:, :, :-1]).abs().clamp(max=100)
        gy = (d[:, 1:] - d[:, :-1]).abs().clamp(max=100)
        total = total + (gx.sum() + gy.sum()) / (d.shape[0] * d.shape[1] * d.shape[2])
    return total / scales


def gaussian_l1(pred: list, target: list, field: str) -> Tensor:
    """L1 of one :class:`~vist3a.models.heads.GaussianAdapterOutput` field over the batch: ``pred`` / ``target``
    are lists (one per batch item) of Gaussians with per-pixel correspondence (same count N)."""
    if len(pred) != len(target):
        raise ValueError(f"stitched loss: {len(pred)} vs {len(target)} Gaussian sets (batch sizes differ)")
    a = [getattr(g, field) for g in pred]
    b = [getattr(g, field) for g in target]
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise ValueError(f"stitched loss: Gaussian {field} {tuple(x.shape)} vs {tuple(y.shape)}; per-pixel "
                             "comparison needs the same views and resolution and config.voxelize = False")
    return l1(torch.cat([x.reshape(-1) for x in a]), torch.cat([y.reshape(-1) for y in b]))


def stitched_loss(pred: dict[str, Any], target: dict[str, Any], weights: AnySplatLossWeights | VGGTLossWeights
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted L1 between the stitched decoder's forward dict ``pred`` and the original model's ``target``.

    Returns ``(total, terms)``: ``total`` a float32 scalar with grad (through ``pred``), ``terms`` the UNWEIGHTED
    term values by name (module docstring), in the weights' order, for the terms both dicts could provide; terms
    with weight 0 are computed for logging but add nothing.

    Raises:
        ValueError: no term could be computed, or shapes disagree.
    """
    terms: dict[str, Tensor] = {}
    total = None
    for name, w in weights.items():
        source, how = weights.SOURCES[name]
        if source not in pred or source not in target:
            continue
        if how == "l1":
            value = l1(pred[source], target[source])
        elif how == "grad":
            value = gradient_l1(pred[source], target[source])
        elif how == "grad_official":
            value = official_gradient_l1(pred[source], target[source])
        else:
            value = gaussian_l1(pred[source], target[source], name)
        terms[name] = value
        total = value * w if total is None else total + value * w
    if total is None:
        raise ValueError(f"stitched loss: no common outputs (stitched decoder gave {sorted(pred)}, original model "
                         f"{sorted(target)})")
    return total, terms
