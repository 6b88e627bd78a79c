"""VIST3A: text-to-3D by stitching a feed-forward 3D model into a video generator's latent space.

The data containers live at the top level; file formats in :mod:`vist3a.io`, rendering in :mod:`vist3a.render`.
This package never imports ComfyUI.
"""

from .cameras import Cameras
from .gaussians import Gaussians
from .pointcloud import PointCloud
from .pointmap import Pointmap

__all__ = ["Cameras", "Gaussians", "PointCloud", "Pointmap", "__version__"]
__version__ = "0.1.0"
