"""Gaussian-splat rendering: :func:`render` (gsplat on CUDA, a pure-PyTorch tiled rasteriser anywhere) and
:func:`render_point_cloud`. Conventions are stated once in :mod:`vist3a.render.api`."""

from .api import RenderOutput, render, render_point_cloud
from .threads import render_threads

__all__ = ["RenderOutput", "render", "render_point_cloud", "render_threads"]
