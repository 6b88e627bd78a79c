"""Prediction heads: camera (pose encoding), DPT dense heads (depth / points / features), AnySplat Gaussian head,
VGGT track head."""

from .camera import CameraHead
from .dpt import DPTHead
from .gaussian import GaussianAdapterOutput, GaussianHead, gaussian_adapter
from .track import TrackHead

__all__ = ["CameraHead", "DPTHead", "GaussianAdapterOutput", "GaussianHead", "TrackHead", "gaussian_adapter"]
