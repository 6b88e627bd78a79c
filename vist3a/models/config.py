"""Model configurations: the published defaults (full size) and tiny variants for tests.

All models are built from these dataclasses; ``to_dict`` / ``from_dict`` give the ``config.json`` form written
next to our own checkpoints. :func:`anysplat_config_from_hub` reads the ``config.json`` of the official
``lhjiang/anysplat`` PyTorchModelHubMixin repository (``{"encoder_cfg": {...}, "decoder_cfg": {...}}``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AggregatorConfig", "AnySplatConfig", "MVDUSt3RConfig", "VGGTConfig", "anysplat_config_from_hub"]


@dataclass
class AggregatorConfig:
    """DINOv2 patch embedding + alternating-attention aggregator (defaults: VGGT-1B / AnySplat)."""

    img_size: int = 518          # size the stored position embedding was trained for (37 x 37 patches)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24              # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    init_values: float = 0.01
    dino_depth: int = 24
    dino_num_heads: int = 16
    frame_tokens: int = 2        # camera / register token entries: 2 = VGGT / AnySplat (reference frame, others)

    @classmethod
    def tiny(cls) -> AggregatorConfig:
        return cls(img_size=56, embed_dim=64, depth=4, num_heads=4, dino_depth=3, dino_num_heads=4)


def _common_dict(cfg) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    for k, v in list(out.items()):
        if isinstance(v, tuple):
            out[k] = list(v)
    return out


def _from_dict(cls, data: dict[str, Any]):
    data = dict(data)
    data.pop("model_type", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    if isinstance(data.get("aggregator"), dict):
        data["aggregator"] = AggregatorConfig(**data["aggregator"])
    for f in dataclasses.fields(cls):
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)


@dataclass
class _BackboneConfig:
    """What VGGT and AnySplat share: the aggregator, the intermediate layers the DPT heads read, the camera head and
    the DPT sizes. ``to_dict`` / ``from_dict`` give the ``config.json`` form (with ``model_type``)."""

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    dpt_hidden: int = 32

    model_type = ""

    _TINY_SHARED = dict(intermediate_layer_idx=(0, 1, 2, 3), camera_trunk_depth=1, camera_num_heads=4,
                        dpt_features=32, dpt_out_channels=(16, 32, 64, 64), dpt_hidden=8)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **_common_dict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data)


@dataclass
class VGGTConfig(_BackboneConfig):
    """VGGT (facebook/VGGT-1B): aggregator + camera, depth, point and track heads."""

    track_head: bool = True
    track_features: int = 128
    track_hidden: int = 384
    track_depth: int = 6
    track_num_heads: int = 8
    track_num_virtual: int = 64
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    track_iters: int = 4

    model_type = "vggt"

    @classmethod
    def tiny(cls) -> VGGTConfig:
        return cls(aggregator=AggregatorConfig.tiny(), **cls._TINY_SHARED, track_features=16, track_hidden=32,
                   track_depth=2, track_num_heads=2, track_num_virtual=4, track_corr_levels=2, track_corr_radius=1)


@dataclass
class AnySplatConfig(_BackboneConfig):
    """AnySplat (lhjiang/anysplat) encoder: aggregator + camera head + depth head + Gaussian head.

    ``voxelize`` (confidence-weighted voxel fusion of the per-pixel Gaussians, AnySplat's ``voxelizaton_with_fusion``)
    is off in a freshly built config (one Gaussian per pixel, as in VIST3A training); a hub ``config.json`` sets it
    (:func:`anysplat_config_from_hub`), as the official loader does.
    ``opacity_mapping`` = (initial, final, warm_up) of AnySplat's ``map_pdf_to_opacity``.
    """

    gs_hidden: int = 128
    sh_degree: int = 4
    opacity_mapping: tuple[float, float, int] = (0.0, 0.0, 1)
    voxelize: bool = False
    voxel_size: float = 0.002

    model_type = "anysplat"

    @property
    def raw_gs_dim(self) -> int:
        """Density + scales (3) + rotation (4) + SH (3K)."""
        return 1 + 7 + 3 * (self.sh_degree + 1) ** 2

    @classmethod
    def tiny(cls) -> AnySplatConfig:
        return cls(aggregator=AggregatorConfig.tiny(), **cls._TINY_SHARED, gs_hidden=16, sh_degree=1)


@dataclass
class MVDUSt3RConfig:
    """MVDUSt3R (facebookresearch/mvdust3r, ``Zhenggang/MV-DUSt3R``): CroCo ViT encoder, multi-view decoder, pointmap
    and Gaussian heads. Defaults: the released ``MVD.pth`` (MV-DUSt3R, ``n_ref=1``); :meth:`plus` gives MV-DUSt3R+
    (``MVDp_s1.pth`` / ``MVDp_s2.pth``: ``n_ref=4`` reference paths with the same-view blocks).

    ``pts_skip``: the point head's convolutional image skip branch (``pts_head_config={'skip': True}``).
    ``sh_degree``: colour degree of the Gaussian head (0 in every release).
    ``gs_scale_clip``: (min, max) of the Gaussian scales in units of the points' mean distance from the origin (the
    official render-time clip, sized for 224-px inputs; the micro model's 64-px inputs need a larger maximum).
    ``view_embeddings``: n > 0 adds a learnt vector per view position (views 0 .. n-1 of an ordered clip) to the
    decoder tokens, key ``view_embed``; 0 in every release (MVDUSt3R's views are unordered). The micro model uses 9
    (see training/micro/mvdust3r.py: without them its non-reference views collapsed to one mean pointmap).
    """

    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    n_ref: int = 1
    pts_skip: bool = True
    skip_channels: int = 256
    sh_degree: int = 0
    gs_scale_clip: tuple[float, float] = (1e-4, 4e-3)
    view_embeddings: int = 0

    model_type = "mvdust3r"

    @property
    def multi_ref(self) -> bool:
        """MV-DUSt3R+ (several reference paths and ``dec_same_view_blocks``)."""
        return self.n_ref > 1

    @classmethod
    def plus(cls, **kwargs) -> MVDUSt3RConfig:
        """MV-DUSt3R+ (``MVDp_s1.pth`` / ``MVDp_s2.pth``): 4 reference paths."""
        return cls(n_ref=4, **kwargs)

    @classmethod
    def tiny(cls, n_ref: int = 1) -> MVDUSt3RConfig:
        """Test size: 64-wide encoder (2 blocks), 48-wide decoder (2 blocks), 16-channel skip branch."""
        return cls(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=2, dec_num_heads=4,
                   n_ref=n_ref, skip_channels=16)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **_common_dict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MVDUSt3RConfig:
        return _from_dict(cls, data)


def anysplat_config_from_hub(data: dict[str, Any]) -> AnySplatConfig:
    """Our config from the official PyTorchModelHubMixin ``config.json`` (``encoder_cfg`` / ``decoder_cfg``).

    Only the fields that change the inference network are read; the rest (training switches, decoder) is ignored.
    The aggregator and heads always have the VGGT-1B sizes in the official code. ``voxelize`` / ``voxel_size`` are
    followed like the official loader (``AnySplat.from_pretrained`` keeps them; only VIST3A's training switches
    voxelisation off); ``distill`` only adds training-time copies of the aggregator and heads (``encoder.distill_*``
    keys, dropped on load) and changes nothing at inference.
    """
    enc = data.get("encoder_cfg", data)
    cfg = AnySplatConfig()
    kwargs: dict[str, Any] = {}
    ga = enc.get("gaussian_adapter") or {}
    if "sh_degree" in ga:
        kwargs["sh_degree"] = int(ga["sh_degree"])
    om = enc.get("opacity_mapping")
    if isinstance(om, dict):
        kwargs["opacity_mapping"] = (float(om.get("initial", 0.0)), float(om.get("final", 0.0)),
                                     int(om.get("warm_up", 1)))
    if enc.get("intermediate_layer_idx"):
        kwargs["intermediate_layer_idx"] = tuple(int(i) for i in enc["intermediate_layer_idx"])
    if "voxel_size" in enc:
        kwargs["voxel_size"] = float(enc["voxel_size"])
    if "voxelize" in enc:
        kwargs["voxelize"] = bool(enc["voxelize"])
    if enc.get("pred_head_type", "depth") != "depth":
        raise ValueError(f"AnySplat: pred_head_type={enc.get('pred_head_type')!r} is not supported (only 'depth')")
    return dataclasses.replace(cfg, **kwargs)
