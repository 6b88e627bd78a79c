"""File formats: 3DGS PLY, point-cloud PLY, antimatter15 ``.splat`` and Niantic ``.spz``; every writer is atomic.

* :func:`save_gaussians` / :func:`load_gaussians` pick the format from the extension (``.ply``, ``.splat`` or
  ``.spz``).
* :mod:`vist3a.io.ply`: :func:`write_gaussians_ply`, :func:`read_gaussians_ply`, :func:`write_point_cloud_ply`,
  :func:`read_point_cloud_ply`, :func:`read_ply_header`.
* :mod:`vist3a.io.splat`: :func:`write_splat`, :func:`read_splat`.
* :mod:`vist3a.io.spz`: :func:`write_spz`, :func:`read_spz`, :func:`read_spz_header` (versions 1-4 read, 2-3 written).
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
from .spz import SpzHeader, read_spz, read_spz_header, write_spz

__all__ = [
    "OPACITY_EPS",
    "GAUSSIAN_EXTENSIONS",
    "PlyHeader",
    "SpzHeader",
    "atomic_path",
    "atomic_write",
    "gaussian_ply_property_names",
    "load_gaussians",
    "read_gaussians_ply",
    "read_ply_header",
    "read_point_cloud_ply",
    "read_splat",
    "read_spz",
    "read_spz_header",
    "save_gaussians",
    "write_gaussians_ply",
    "write_point_cloud_ply",
    "write_splat",
    "write_spz",
]

GAUSSIAN_EXTENSIONS = (".ply", ".splat", ".spz")
_GAUSSIAN_FORMATS = (".ply (standard 3DGS PLY, all SH bands), .splat (antimatter15, DC colour only) or .spz (Niantic, "
                     "compressed, SH up to degree 3)")


def _extension(path: str | os.PathLike, what: str) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in GAUSSIAN_EXTENSIONS:
        raise ValueError(
            f"{what}: unsupported file extension {ext or '(none)'!r} of {os.fspath(path)}; use {_GAUSSIAN_FORMATS}"
        )
    return ext


def save_gaussians(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write ``gaussians`` to ``path`` as a 3DGS ``.ply``, a ``.splat`` or an ``.spz``, chosen by the extension
    (atomic)."""
    ext = _extension(path, "save_gaussians")
    if ext == ".ply":
        write_gaussians_ply(path, gaussians)
    elif ext == ".spz":
        write_spz(path, gaussians)
    else:
        write_splat(path, gaussians)


def load_gaussians(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read Gaussians from a 3DGS ``.ply``, a ``.splat`` or an ``.spz`` file, chosen by the extension."""
    ext = _extension(path, "load_gaussians")
    if ext == ".ply":
        return read_gaussians_ply(path, dtype=dtype)
    if ext == ".spz":
        return read_spz(path, dtype=dtype)
    return read_splat(path, dtype=dtype)
