"""What flows on a splat wire: ComfyUI core's ``SPLAT`` when the running ComfyUI has it, our ``VIST3A_SPLATS``
otherwise (ComfyUI v0.8.0 and older).

Core ComfyUI (2026, ``comfy_api.latest._util.geometry_types.SPLAT``, socket type ``"SPLAT"``) stores a batch of
render-ready Gaussians as zero-padded tensors -- positions (B, N, 3), scales (B, N, 3) linear, rotations (B, N, 4)
unit quaternions wxyz, opacities (B, N, 1) in [0, 1], sh (B, N, K, 3), counts (B,) real lengths or None -- in the
3DGS / OpenCV world frame (+Y down, +Z forward). That is exactly :func:`vist3a.gaussians.to_padded`, so the
conversion is lossless both ways. With the core type our decoders' output plugs straight into core's RenderSplat,
TransformSplat, MergeSplat, SplatToMesh and SplatToFile3D (-> PreviewGaussianSplat / SaveGaussianSplat), and our
savers accept splats made by core nodes (e.g. TripoSplat, File3DToSplat).

The socket types are fixed when the pack is imported (ComfyUI imports custom nodes after ``comfy_api``):

* outputs: ``"SPLAT"`` with the core type, ``"VIST3A_SPLATS"`` without;
* inputs: ``"SPLAT,VIST3A_SPLATS"`` with the core type (ComfyUI accepts a link when the types overlap, so workflows
  saved on an older ComfyUI keep working), ``"VIST3A_SPLATS"`` without.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("vist3a.nodes")

OWN_TYPE = "VIST3A_SPLATS"
CORE_TYPE = "SPLAT"
_FIELDS = ("positions", "scales", "rotations", "opacities", "sh")


def core_splat_class() -> type | None:
    """ComfyUI core's ``SPLAT`` class, or None when the running ComfyUI (or no ComfyUI, in CI) lacks it."""
    try:
        from comfy_api.latest import Types

        found = getattr(Types, "SPLAT", None)
    except Exception as err:  # noqa: BLE001 -- no ComfyUI (CI), or one whose comfy_api cannot be imported here
        logger.debug("VIST3A: comfy_api.latest not importable (%s)", err)
        found = None
    if found is None:
        try:
            from comfy_api.latest._util.geometry_types import SPLAT as found
        except Exception:  # noqa: BLE001 -- ComfyUI v0.8.0 and older, or no ComfyUI at all
            return None
    return found


def socket_types(core: type | None) -> tuple[str, str]:
    """(output type, input type) for splat sockets given :func:`core_splat_class`'s answer."""
    return (CORE_TYPE, f"{CORE_TYPE},{OWN_TYPE}") if core is not None else (OWN_TYPE, OWN_TYPE)


CORE_SPLAT = core_splat_class()
OUTPUT_TYPE, INPUT_TYPE = socket_types(CORE_SPLAT)
if CORE_SPLAT is not None:
    logger.info("VIST3A: ComfyUI has the core SPLAT type; splat outputs plug into core's splat nodes")


@dataclass(eq=False)
class SplatBatch:
    """``VIST3A_SPLATS`` (ComfyUI without a core splat type): one :class:`vist3a.Gaussians` per batch item (CPU,
    float32) and their cameras."""

    gaussians: list
    cameras: list = field(default_factory=list)
    untrained: bool = False


def make_splats(gaussians: list, cameras: list | None = None, untrained: bool = False, core: type | None = None):
    """Per-scene Gaussians -> the object for a splat output: a core ``SPLAT`` (padded batch, ``counts`` only when
    the scenes differ in size, as core does) when ``core`` is given, else a :class:`SplatBatch`. The cameras and
    the untrained flag ride along as ``vist3a_cameras`` / ``vist3a_untrained`` attributes on the core object."""
    cameras = list(cameras or [])
    if core is None:
        return SplatBatch(list(gaussians), cameras, untrained)
    from vist3a.gaussians import to_padded

    padded = to_padded([g.to("cpu", None) for g in gaussians])
    counts = padded["counts"]
    uniform = bool((counts == counts.max()).all())
    splat = core(padded["means"], padded["scales"], padded["rotations"], padded["opacities"], padded["sh"],
                 counts=None if uniform else counts)
    splat.vist3a_cameras = cameras
    splat.vist3a_untrained = untrained
    return splat


def to_gaussians(node: str, splats: Any) -> tuple[list, bool]:
    """A splat input (our :class:`SplatBatch` or any object with core ``SPLAT``'s fields) -> (list of
    :class:`vist3a.Gaussians` on the CPU in float32, untrained flag). Raises ``ValueError("<node>: ...")`` for
    anything else, or for tensors that break the Gaussian conventions (e.g. log-scales, logit opacities)."""
    if isinstance(splats, SplatBatch):
        return list(splats.gaussians), bool(splats.untrained)
    missing = [f for f in _FIELDS if not hasattr(splats, f)]
    if missing:
        raise ValueError(f"{node}: splats must come from a splat output (VIST3A Decode To Splats, VIST3A Images To "
                         f"3D or a core SPLAT node); got {type(splats).__name__} without {', '.join(missing)}")
    import torch

    from vist3a.gaussians import from_padded

    tensors = [getattr(splats, f).detach().to("cpu").float() for f in _FIELDS]
    tensors[2] = torch.nn.functional.normalize(tensors[2], dim=-1)  # same rotation; core nodes may drift from unit
    counts = getattr(splats, "counts", None)
    try:
        items = from_padded(*tensors, counts=None if counts is None else counts.to("cpu"))
    except (ValueError, IndexError, RuntimeError) as err:
        raise ValueError(f"{node}: the SPLAT input does not hold valid Gaussians ({err}); expected positions "
                         "(B,N,3), linear scales (B,N,3), unit wxyz rotations (B,N,4), opacities in [0,1] (B,N,1), "
                         "sh (B,N,K,3)") from None
    return items, bool(getattr(splats, "vist3a_untrained", False))
