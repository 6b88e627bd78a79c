"""File formats: 3DGS PLY, point-cloud PLY and antimatter15 ``.splat``; every writer is atomic.

* :func:`save_gaussians` / :func:`load_gaussians` pick the format from the extension (``.ply`` or ``.splat``).
* :mod:`vist3a.io.ply`: :func:`write_gaussians_ply`, :func:`read_gaussians_ply`, :func:`write_point_cloud_ply`,
  :func:`read_point_cloud_ply`, :func:`read_ply_header`.
* :mod:`vist3a.io.splat`: :func:`write_splat`, :func:`read_splat`.
* :mod:`vist3a.io.atomic`: :func:`atomic_write` (file object), :func:`atomic_path` (temporary file name).
"""

from __future__ import annotations

import os

import torch

from ..gaussians import Gaussians
from .atomic import atomic_path, atomic_write
from .ply import (
    OPACITY_EPS,
    PlyHeader,
    gaussian_ply_property_names,
    read_gaussians_ply,
    read_ply_header,
    read_point_cloud_ply,
    write_gaussians_ply,
    write_point_cloud_ply,
)
from .splat import read_splat, write_splat

__all__ = [
    "OPACITY_EPS",
    "PlyHeader",
    "atomic_path",
    "atomic_write",
    "gaussian_ply_property_names",
    "load_gaussians",
    "read_gaussians_ply",
    "read_ply_header",
    "read_point_cloud_ply",
    "read_splat",
    "save_gaussians",
    "write_gaussians_ply",
    "write_point_cloud_ply",
    "write_splat",
]

_GAUSSIAN_FORMATS = ".ply (standard 3DGS PLY, all SH bands) or .splat (antimatter15, DC colour only)"


def _extension(path: str | os.PathLike, what: str) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in (".ply", ".splat"):
        raise ValueError(
            f"{what}: unsupported file extension {ext or '(none)'!r} of {os.fspath(path)}; use {_GAUSSIAN_FORMATS}"
        )
    return ext


def save_gaussians(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write ``gaussians`` to ``path`` as a 3DGS ``.ply`` or a ``.splat``, chosen by the extension (atomic)."""
    if _extension(path, "save_gaussians") == ".ply":
        write_gaussians_ply(path, gaussians)
    else:
        write_splat(path, gaussians)


def load_gaussians(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read Gaussians from a 3DGS ``.ply`` or a ``.splat`` file, chosen by the extension."""
    if _extension(path, "load_gaussians") == ".ply":
        return read_gaussians_ply(path, dtype=dtype)
    return read_splat(path, dtype=dtype)
