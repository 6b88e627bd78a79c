"""Camera sidecar files: the cameras a scene was decoded with, next to its splat file (``scene.ply`` ->
``scene.cameras.json``), the way 3DGS training outputs keep a ``cameras.json`` beside ``point_cloud.ply``.

Format (JSON, written atomically)::

    {"format": "vist3a.cameras", "version": 1,
     "convention": "OpenCV camera-to-world (x right, y down, z forward); pixel intrinsics",
     "width": W, "height": H,
     "frames": [{"c2w": [[4 x 4]], "K": [[3 x 3]]}, ...]}

:func:`read_cameras_json` validates everything (shapes, finite numbers, positive focal lengths and sizes) and raises
``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..cameras import Cameras
from .atomic import atomic_write

__all__ = ["CAMERAS_SUFFIX", "cameras_sidecar", "read_cameras_json", "write_cameras_json"]

FORMAT = "vist3a.cameras"
CAMERAS_SUFFIX = ".cameras.json"
_MAX_BYTES = 64 * 2**20


def cameras_sidecar(scene_path: str | os.PathLike) -> Path:
    """``scene.ply`` -> ``scene.cameras.json`` (same folder, same stem)."""
    p = Path(scene_path)
    return p.with_name(p.stem + CAMERAS_SUFFIX)


def write_cameras_json(path: str | os.PathLike, cameras: Cameras) -> Path:
    """Write ``cameras`` (V views) to ``path`` atomically; returns the path."""
    c2w, k = cameras.c2w.detach().double().cpu(), cameras.K.detach().double().cpu()
    doc = {"format": FORMAT, "version": 1,
           "convention": "OpenCV camera-to-world (x right, y down, z forward); pixel intrinsics",
           "width": int(cameras.width), "height": int(cameras.height),
           "frames": [{"c2w": c2w[i].tolist(), "K": k[i].tolist()} for i in range(len(cameras))]}
    with atomic_write(path, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    return Path(path)


def read_cameras_json(path: str | os.PathLike) -> Cameras:
    """Read a camera sidecar (float32 :class:`Cameras`); ``ValueError`` naming the file for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such camera file")
    if p.stat().st_size > _MAX_BYTES:
        raise ValueError(f"{p}: {p.stat().st_size} bytes is too large for a camera file")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p}: not a JSON camera file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{p}: not a vist3a camera file (expected \"format\": \"{FORMAT}\")")
    try:
        width, height = int(doc["width"]), int(doc["height"])
        frames = doc["frames"]
        c2w = torch.tensor([f["c2w"] for f in frames], dtype=torch.float64)
        k = torch.tensor([f["K"] for f in frames], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p}: malformed camera file ({type(exc).__name__}: {exc}); expected width, height and "
                         "frames [{c2w: 4x4, K: 3x3}]") from None
    if width < 1 or height < 1:
        raise ValueError(f"{p}: image size must be positive, got {width}x{height}")
    if c2w.ndim != 3 or c2w.shape[0] < 1 or c2w.shape[1:] != (4, 4) or k.shape != (c2w.shape[0], 3, 3):
        raise ValueError(f"{p}: every frame needs a 4x4 c2w and a 3x3 K")
    if not (torch.isfinite(c2w).all() and torch.isfinite(k).all()):
        raise ValueError(f"{p}: camera values must be finite numbers")
    if (k[:, 0, 0] <= 0).any() or (k[:, 1, 1] <= 0).any():
        raise ValueError(f"{p}: focal lengths must be positive")
    rot = c2w[:, :3, :3]
    if (rot @ rot.transpose(1, 2) - torch.eye(3, dtype=rot.dtype)).abs().max() > 1e-3 or \
            not math.isclose(float(torch.linalg.det(rot).min()), 1.0, abs_tol=1e-3):
        raise ValueError(f"{p}: c2w rotations must be orthonormal with determinant 1")
    return Cameras(c2w.float(), k.float(), width, height)
