"""antimatter15 ``.splat`` files: the compact format web splat viewers load.

32 bytes per Gaussian, no header, little-endian::

    position  float32 x 3   (world space)
    scale     float32 x 3   (LINEAR standard deviations, not log)
    rgba      uint8   x 4   rgb = floor(clip((0.5 + SH_C0 * f_dc) * 255, 0, 255)),
                            a   = floor(clip(opacity * 255, 0, 255))
    rotation  uint8   x 4   floor(clip(q * 128 + 128, 0, 255)) of the normalised quaternion, wxyz order

Quantisation (truncation after clipping, computed in float64) is exactly that of gsplat's ``export_splats`` and
antimatter15's ``convert.py``. Only the DC colour is stored (SH degree 0). Record order, see :func:`write_splat`:

* ``"importance"`` (default): largest ``scale_0 * scale_1 * scale_2 * opacity`` (= exp(sum of log-scales) x opacity,
  volume x opacity) first, the order antimatter15's converter and viewer use, so a progressively streamed file shows
  the big, solid splats first. It is computed from the stored float32 scales and 8-bit alpha (ties keep the scene's
  order), so reading a file and writing it again reproduces it byte for byte;
* ``"morton"``: gsplat's ``export_splats`` order (3D Morton code of the positions on a 1024^3 grid);
* ``"none"``: the scene's order.

Viewers depth-sort every frame, so the order never changes the rendered image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from ..gaussians import Gaussians
from ..sh import SH_C0
from .atomic import atomic_write
from .paths import check_input_file

__all__ = ["SPLAT_DTYPE", "read_splat", "write_splat"]

logger = logging.getLogger(__name__)

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
"""One 32-byte ``.splat`` record."""
assert SPLAT_DTYPE.itemsize == 32


def _unorm8(x: np.ndarray) -> np.ndarray:
    """uint8 codes floor(clip(x, 0, 255)) (the truncating cast gsplat and convert.py use)."""
    return np.floor(np.clip(x, 0.0, 255.0)).astype(np.uint8)


def _encode_rgb(dc: np.ndarray) -> np.ndarray:
    return _unorm8((0.5 + SH_C0 * dc.astype(np.float64)) * 255.0)


def _encode_alpha(opacity: np.ndarray) -> np.ndarray:
    return _unorm8(opacity.astype(np.float64) * 255.0)


def _unit_quats(q: np.ndarray) -> np.ndarray:
    """q / |q| in float64 (every row, as gsplat does); zero rows become the identity."""
    q = q.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    zero = norm[:, 0] == 0
    if zero.any():
        q = q.copy()
        q[zero] = (1.0, 0.0, 0.0, 0.0)
        norm[zero] = 1.0
    return q / norm


def _part1by2(x: np.ndarray) -> np.ndarray:
    """Spread the low 10 bits of x so two zero bits separate each (Morton interleave)."""
    x = x.astype(np.int64) & 0x000003FF
    x = (x ^ (x << 16)) & 0xFF0000FF
    x = (x ^ (x << 8)) & 0x0300F00F
    x = (x ^ (x << 4)) & 0x030C30C3
    x = (x ^ (x << 2)) & 0x09249249
    return x


def _morton_order(positions: np.ndarray) -> np.ndarray:
    """Stable argsort of the 3D Morton codes of ``positions`` normalised to their bounding box on a 1024^3 grid
    (gsplat's convention, including its wrap of the maximum coordinate 1024 to 0 by the 10-bit mask)."""
    p = positions.astype(np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    length = hi - lo
    length[length == 0] = 1.0
    cells = np.floor((p - lo) / length * 1024.0).astype(np.int32)
    code = (_part1by2(cells[:, 2]) << 2) + (_part1by2(cells[:, 1]) << 1) + _part1by2(cells[:, 0])
    return np.argsort(code, kind="stable")


def write_splat(
    path: str | os.PathLike,
    gaussians: Gaussians,
    *,
    order: Literal["importance", "morton", "none"] = "importance",
) -> None:
    """Write ``gaussians`` as an antimatter15 ``.splat`` file (32 bytes per Gaussian, layout in the module docstring).

    Higher SH bands are dropped (the format stores the DC colour only). The write is atomic.
    """
    path = os.fspath(path)
    if order not in ("importance", "morton", "none"):
        raise ValueError(f"write_splat: order must be 'importance', 'morton' or 'none', got {order!r}")
    g = gaussians
    n = len(g)
    if g.sh.shape[1] > 1:
        logger.info("%s: .splat stores only the DC colour; SH degree %d bands dropped", path, g.sh_degree)
    means = g.means.detach().cpu().double().numpy()
    scales = g.scales.detach().cpu().double().numpy()
    opac = g.opacities.detach().cpu().double().numpy()
    dc = g.sh[:, 0, :].detach().cpu().double().numpy()
    quats = g.rotations.detach().cpu().double().numpy()
    finite = all(np.isfinite(a).all() for a in (means, scales, opac, dc, quats))
    if n and (not finite or not (scales > 0).all() or not ((opac >= 0) & (opac <= 1)).all()):
        raise ValueError(
            f"{path}: cannot write Gaussians with NaN/infinite values, scales <= 0 or opacities outside [0, 1] as "
            ".splat; nothing was written"
        )
    rec = np.empty(n, dtype=SPLAT_DTYPE)
    with np.errstate(over="ignore"):
        rec["position"] = means
        rec["scale"] = scales
    if not (np.isfinite(rec["position"]).all() and np.isfinite(rec["scale"]).all()):
        raise ValueError(f"{path}: positions or scales exceed the float32 range of .splat; nothing was written")
    rec["rgba"][:, :3] = _encode_rgb(dc)
    rec["rgba"][:, 3] = _encode_alpha(opac)
    rec["rot"] = _encode_quats(quats)
    if n and order == "importance":
        # The key is computed from the stored record (float32 scales, 8-bit alpha) so that re-writing a file read
        # back reproduces its order, and so its bytes.
        key = np.prod(rec["scale"].astype(np.float64), axis=1) * rec["rgba"][:, 3]
        rec = rec[np.argsort(-key, kind="stable")]
    elif n and order == "morton":
        rec = rec[_morton_order(rec["position"])]
    with atomic_write(path) as fh:
        fh.write(rec.view(np.uint8))
    logger.debug("wrote %d Gaussians to %s", n, path)


def _decode_exact(codes: np.ndarray, decode: Callable, encode: Callable, np_dtype) -> np.ndarray:
    """``decode(codes)`` rounded to ``np_dtype``, nudged by ulps where needed so that ``encode`` gives ``codes`` back
    (the decoded value sits on a quantisation boundary, where rounding could land one code lower)."""
    value = decode(codes.astype(np.float64)).astype(np_dtype)
    for _ in range(8):
        got = encode(value).astype(np.int16)
        bad = got != codes
        if not bad.any():
            break
        toward = np.where(got[bad] < codes[bad], np.inf, -np.inf).astype(np_dtype)
        value[bad] = np.nextafter(value[bad], toward)
    return value


def _encode_quats(q: np.ndarray) -> np.ndarray:
    return _unorm8(_unit_quats(q) * 128.0 + 128.0)


def _decode_quats(codes: np.ndarray) -> np.ndarray:
    """Unit quaternions (N, 4) float64 from uint8 codes, chosen inside their quantisation cells.

    Code u stands for a component in [(u-128)/128, (u-127)/128) (u = 255 up to 1). The box of the four cells is
    convex, so the segment from its point nearest the origin to its point farthest from it crosses the unit sphere
    whenever any unit quaternion encodes to ``codes``; that crossing (on the box diagonal, solved in closed form) is
    returned, so :func:`write_splat` re-encodes the same bytes. Codes no unit quaternion maps to (not written by a
    normalising exporter) fall back to the normalised cell centres.
    """
    c = codes.astype(np.float64)
    margin = 1e-6  # keep clear of the cell edges so float rounding cannot change the code
    lo = np.where(c == 0, -1.0, (c - 128.0) / 128.0 + margin)
    hi = np.where(c == 255, 1.0, (c - 127.0) / 128.0 - margin)
    near = np.clip(0.0, lo, hi)
    far = np.where(np.abs(lo) > np.abs(hi), lo, hi)
    d = far - near
    a2 = np.einsum("ij,ij->i", near, near)
    ad = np.einsum("ij,ij->i", near, d)
    d2 = np.einsum("ij,ij->i", d, d)
    f2 = np.einsum("ij,ij->i", far, far)
    feasible = (a2 <= 1.0) & (f2 >= 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-ad + np.sqrt(np.maximum(ad * ad - d2 * (a2 - 1.0), 0.0))) / d2
    t = np.where(d2 > 0, np.clip(np.nan_to_num(t), 0.0, 1.0), 0.0)
    q = _unit_quats(near + t[:, None] * d)
    fallback = _unit_quats((c - 127.5) / 128.0)
    return np.where((feasible & (_encode_quats(q) == codes).all(axis=1))[:, None], q, fallback)


def read_splat(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read an antimatter15 ``.splat`` file into :class:`Gaussians` (SH degree 0, K = 1) on the CPU.

    Colours and opacities decode to code/255 (what viewers show), nudged by at most a few ulps so that
    :func:`write_splat` re-encodes the same bytes; quaternions decode to unit quaternions inside their quantisation
    cells (see :func:`_decode_quats`), so each component is within 1/128 of the original. Flat splats (scale 0) get
    the smallest positive float scale. Reading a file written by :func:`write_splat` and writing it again reproduces
    it byte for byte.

    Raises:
        ValueError: the file is a PLY, its size is not a multiple of 32 bytes, or positions/scales are NaN,
            infinite or negative.
    """
    path = os.fspath(path)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    check_input_file(path, ".splat file")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(5)
        if head.startswith((b"ply\n", b"ply\r\n")):
            raise ValueError(
                f"{path}: this is a PLY file, not a .splat: read it with read_gaussians_ply (or name it .ply)"
            )
        if size % SPLAT_DTYPE.itemsize:
            raise ValueError(
                f"{path}: not a valid .splat file: its size {size} bytes is not a multiple of the 32-byte record; "
                "the file is truncated or another format"
            )
        n = size // SPLAT_DTYPE.itemsize
        fh.seek(0)
        rec = np.fromfile(fh, dtype=SPLAT_DTYPE, count=n)
    if rec.shape[0] != n:
        raise ValueError(f"{path}: truncated .splat: read {rec.shape[0]} of {n} records")
    means = rec["position"].astype(np_dtype)
    scales = rec["scale"].astype(np_dtype)
    if not (np.isfinite(means).all() and np.isfinite(scales).all()):
        raise ValueError(f"{path}: .splat positions or scales hold NaN/infinite values; the file is corrupt")
    if (scales < 0).any():
        raise ValueError(f"{path}: .splat has negative scales (they must be linear standard deviations); corrupt file")
    np.maximum(scales, np.finfo(np_dtype).tiny, out=scales)  # flat splats (scale 0) become the thinnest valid ones
    rgba = rec["rgba"]
    dc = _decode_exact(rgba[:, :3], lambda c: (c / 255.0 - 0.5) / SH_C0, _encode_rgb, np_dtype)
    opacities = _decode_exact(rgba[:, 3], lambda c: c / 255.0, _encode_alpha, np_dtype)
    rotations = _decode_quats(rec["rot"]).astype(np_dtype)
    try:
        g = Gaussians(
            means=torch.from_numpy(means).to(dtype),
            scales=torch.from_numpy(scales).to(dtype),
            rotations=torch.from_numpy(rotations).to(dtype),
            opacities=torch.from_numpy(np.ascontiguousarray(opacities)).to(dtype),
            sh=torch.from_numpy(np.ascontiguousarray(dc)).to(dtype).reshape(n, 1, 3),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    logger.debug("read %d Gaussians from %s", n, path)
    return g
