"""Our PyTorch implementations of VGGT and AnySplat, checkpoint-compatible with the published weights.

* :class:`AnySplat` (``lhjiang/anysplat``), :class:`VGGT` (``facebook/VGGT-1B``) and :class:`MVDUSt3R`
  (``Zhenggang/MV-DUSt3R``: MV-DUSt3R and MV-DUSt3R+), configs in :mod:`.config`;
* :func:`from_pretrained` loads a hub id, a folder (config.json + weights) or a weights file, strictly;
* cut points for stitching: ``model.cut_points()``, ``model.capture(images, names)``,
  ``model.forward_from(name, activation, images)`` (see :mod:`.cutpoints`).

Nothing here needs compiled extensions (no xformers, no torch_scatter).
"""

from .anysplat import AnySplat, AnySplatPrediction, to_gaussians, voxel_fuse
from .config import (
    AggregatorConfig,
    AnySplatConfig,
    MVDUSt3RConfig,
    VGGTConfig,
    anysplat_config_from_hub,
)
from .loading import (
    CheckpointMismatchError,
    from_pretrained,
    load_checkpoint_into,
    save_pretrained,
    tiny_model,
)
from .mvdust3r import MVDUSt3R, MVDUSt3RPrediction, mvdust3r_gaussians
from .vggt import VGGT, VGGTPrediction

__all__ = [
    "VGGT",
    "AggregatorConfig",
    "AnySplat",
    "AnySplatConfig",
    "AnySplatPrediction",
    "CheckpointMismatchError",
    "MVDUSt3R",
    "MVDUSt3RConfig",
    "MVDUSt3RPrediction",
    "VGGTConfig",
    "VGGTPrediction",
    "anysplat_config_from_hub",
    "from_pretrained",
    "load_checkpoint_into",
    "mvdust3r_gaussians",
    "save_pretrained",
    "tiny_model",
    "to_gaussians",
    "voxel_fuse",
]
