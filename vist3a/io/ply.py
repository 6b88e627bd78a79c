"""PLY files: 3D Gaussian Splatting scenes and coloured point clouds, with one shared, defensive header parser.

3DGS PLY (what INRIA 3DGS, gsplat, nerfstudio, SuperSplat and web viewers exchange)
-----------------------------------------------------------------------------------
One ``vertex`` element, one row per Gaussian. :func:`write_gaussians_ply` writes ``binary_little_endian 1.0`` with
float32 properties in exactly this order (see :func:`gaussian_ply_property_names`)::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3*(K-1)-1} opacity scale_0 scale_1 scale_2 rot_0 .. rot_3

* ``nx ny nz`` are zeros (3DGS writes them; nothing reads them).
* ``f_dc_c`` = ``sh[:, 0, c]``; ``f_rest`` is **channel-major**: ``f_rest_{c*(K-1) + (k-1)}`` = ``sh[:, k, c]`` for
  k >= 1 (INRIA 3DGS flattens sh of shape (N, 3, K-1)).
* ``opacity`` = logit(p), with p clamped to ``[OPACITY_EPS, 1 - OPACITY_EPS]`` so 0 and 1 stay finite.
* ``scale_i`` = log(scale_i) (natural log of the linear standard deviation).
* ``rot_0..3`` = the quaternion **wxyz** (scalar first), unit length.

log/logit are computed in float64 and rounded once to float32.

:func:`read_gaussians_ply` reads such files from any tool: ascii, binary little- or big-endian; any SH degree 0..4
(inferred from the number of ``f_rest_*`` properties); any PLY scalar type; properties in any order; unknown
properties and elements after ``vertex`` ignored. It converts back with sigmoid / exp and normalises the quaternions
(only those whose norm differs from 1 by more than ``1e-6``, so unit quaternions written here come back bit-identical).

Point-cloud PLY
---------------
:func:`write_point_cloud_ply` writes ``x y z`` float32, ``red green blue`` uchar (``floor(c*255 + 0.5)``) and, when
present, ``confidence`` float32. :func:`read_point_cloud_ply` reads xyz of any type, colours as uchar (/255), ushort
(/65535) or float (0..1, or 0..255 when any value exceeds 1), the DC colour of a 3DGS PLY when there are no colours,
and otherwise ``default_color`` (mid-grey 0.5, the colour of an all-zero SH).

Robustness
----------
Headers are read from at most :data:`MAX_HEADER_BYTES`; element sizes are checked against the file size before any
array is allocated, so a header announcing 10^12 vertices fails at once. Binary vertex data is streamed in 4 MiB chunks
straight into the output arrays (no copy of the whole file in memory). Ascii files are parsed one element per line (as
every writer does). Elements before ``vertex`` are skipped when they are fixed-size; list properties there are
rejected. Every problem raises ``ValueError`` naming the file, the problem and what to do.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from ..gaussians import Gaussians
from ..pointcloud import PointCloud
from ..sh import SH_C0, num_sh_bases, sh_degree_from_bases
from .atomic import atomic_write
from .paths import check_input_file

__all__ = [
    "MAX_HEADER_BYTES",
    "OPACITY_EPS",
    "PlyElement",
    "PlyHeader",
    "PlyProperty",
    "gaussian_ply_property_names",
    "read_gaussians_ply",
    "read_ply_header",
    "read_point_cloud_ply",
    "write_gaussians_ply",
    "write_point_cloud_ply",
]

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
"""A PLY header must end (``end_header``) within this many bytes."""

OPACITY_EPS = 1e-10
"""Opacities are clamped to [eps, 1 - eps] before the logit, so 0 and 1 are stored as about -/+23.03. (Read back as
float32, 1 - eps rounds to exactly 1.0 and eps stays 1e-10.)"""

_QUAT_RENORM_TOL = 1e-6  # float32 unit quaternions have |norm - 1| < 3e-7; only larger deviations are renormalised
_WRITE_CHUNK_ROWS = 1 << 15  # rows converted per block when writing (cache-sized; bounds the temporary memory)

# PLY scalar type names (and the numpy-style aliases many tools write) -> numpy type code without byte order.
_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_END_HEADER = re.compile(rb"(?:^|\n)end_header[ \t]*\r?\n")
_COUNT = re.compile(r"^[0-9]+$")

_GAUSSIAN_BASE = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_COMPRESSED_MARKERS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")


# ---------------------------------------------------------------------------------------------------- header
@dataclass(frozen=True)
class PlyProperty:
    """One property: ``dtype`` is a numpy code without byte order (``"f4"``, ``"u1"``, ...); list properties have
    ``list_types`` = (count type, item type) and ``dtype`` None."""

    name: str
    dtype: str | None
    list_types: tuple[str, str] | None = None


@dataclass(frozen=True)
class PlyElement:
    name: str
    count: int
    properties: tuple[PlyProperty, ...]

    @property
    def has_lists(self) -> bool:
        return any(p.list_types is not None for p in self.properties)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties)

    def record_dtype(self, byte_order: str) -> np.dtype:
        """Packed structured dtype of one record (fixed-size elements only)."""
        return np.dtype([(p.name, byte_order + p.dtype) for p in self.properties])


@dataclass(frozen=True)
class PlyHeader:
    """Parsed PLY header. ``header_size`` is the byte offset where the data starts."""

    format: str  # "ascii", "binary_little_endian" or "binary_big_endian"
    elements: tuple[PlyElement, ...]
    comments: tuple[str, ...]
    header_size: int

    @property
    def byte_order(self) -> str | None:
        """``"<"`` or ``">"`` for binary files, None for ascii."""
        return _FORMATS[self.format]

    def element(self, name: str) -> PlyElement | None:
        return next((e for e in self.elements if e.name == name), None)


def _parse_header(fh: BinaryIO, path: str) -> PlyHeader:
    head = fh.read(MAX_HEADER_BYTES)
    if not head.startswith((b"ply\n", b"ply\r\n")):
        hint = " (it looks like an antimatter15 .splat file: use read_splat)" if path.lower().endswith(".splat") else ""
        raise ValueError(
            f"{path}: not a PLY file: it does not start with the 'ply' magic line (first bytes {head[:12]!r}){hint}"
        )
    match = _END_HEADER.search(head)
    if match is not None:
        header_size = match.end()
    elif len(head) < MAX_HEADER_BYTES and head.rstrip(b" \t\r\n").endswith(b"\nend_header"):
        header_size = len(head)  # 'end_header' is the very end of the file (no data)
    elif len(head) < MAX_HEADER_BYTES:
        raise ValueError(f"{path}: PLY header has no 'end_header' line; the file is truncated or not a valid PLY")
    else:
        raise ValueError(
            f"{path}: PLY header has no 'end_header' line within the first {MAX_HEADER_BYTES // 1024} KiB; "
            "the header is malformed (or absurdly large) and the file cannot be read"
        )
    lines = head[:header_size].decode("utf-8", errors="replace").splitlines()[1:]
    fmt: str | None = None
    elements: list[tuple[str, int, list[PlyProperty]]] = []
    comments: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        words = line.split()
        key = words[0]
        if key in ("comment", "obj_info"):
            comments.append(line[len(key):].strip())
        elif key == "end_header":
            break
        elif key == "format":
            if fmt is not None or len(words) != 3 or words[1] not in _FORMATS or words[2] not in ("1.0", "1"):
                raise ValueError(
                    f"{path}: unsupported PLY format line {line!r}; expected 'format ascii 1.0', "
                    "'format binary_little_endian 1.0' or 'format binary_big_endian 1.0'"
                )
            fmt = words[1]
        elif key == "element":
            if fmt is None:
                raise ValueError(f"{path}: PLY header has an element before its 'format' line")
            if len(words) != 3 or not _COUNT.match(words[2]):
                raise ValueError(f"{path}: malformed PLY element line {line!r}; expected 'element <name> <count>'")
            if any(e[0] == words[1] for e in elements):
                raise ValueError(f"{path}: PLY header declares element {words[1]!r} twice")
            elements.append((words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise ValueError(f"{path}: PLY header has a property before any element: {line!r}")
            props = elements[-1][2]
            if len(words) == 5 and words[1] == "list":
                if words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unsupported PLY list property types in {line!r}")
                prop = PlyProperty(words[4], None, (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            elif len(words) == 3:
                if words[1] not in _PLY_TYPES:
                    raise ValueError(
                        f"{path}: unsupported PLY property type {words[1]!r} in {line!r}; supported: "
                        + ", ".join(sorted(_PLY_TYPES))
                    )
                prop = PlyProperty(words[2], _PLY_TYPES[words[1]])
            else:
                raise ValueError(f"{path}: malformed PLY property line {line!r}")
            if any(p.name == prop.name for p in props):
                raise ValueError(f"{path}: PLY element {elements[-1][0]!r} declares property {prop.name!r} twice")
            props.append(prop)
        else:
            raise ValueError(f"{path}: unexpected line in PLY header: {line!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return PlyHeader(
        format=fmt,
        elements=tuple(PlyElement(n, c, tuple(p)) for n, c, p in elements),
        comments=tuple(comments),
        header_size=header_size,
    )


def read_ply_header(path: str | os.PathLike) -> PlyHeader:
    """Parse the header of the PLY file at ``path`` (reads at most :data:`MAX_HEADER_BYTES`)."""
    path = check_input_file(path, "PLY file")
    with open(path, "rb") as fh:
        return _parse_header(fh, path)


# ---------------------------------------------------------------------------------------------------- vertex data
_READ_CHUNK_BYTES = 1 << 22  # binary vertex data is streamed through a buffer of this size


def _vertex_columns(
    path: str, header: PlyHeader, fh: BinaryIO, groups: list[tuple[list[str], type]]
) -> list[np.ndarray]:
    """Read the requested vertex columns: for each ``(names, dtype)`` group an (N, len(names)) array of ``dtype``.

    All sizes are checked against the file size first. Binary data is streamed in ~4 MiB chunks straight into the
    output arrays (peak memory: the outputs plus one chunk); when all vertex properties share one type (the usual
    all-float32 file) a chunk is an (rows, P) matrix and each group is one ``np.take`` of its columns.
    """
    vertex = header.element("vertex")
    assert vertex is not None
    if vertex.has_lists:
        bad = next(p.name for p in vertex.properties if p.list_types is not None)
        raise ValueError(
            f"{path}: the vertex element has a list property {bad!r}; only scalar properties are supported"
        )
    before = header.elements[: header.elements.index(vertex)]
    for elem in before:
        if elem.has_lists and elem.count:
            raise ValueError(
                f"{path}: element {elem.name!r} with list properties comes before 'vertex'; such PLY files are not "
                "supported (re-export with the vertex element first)"
            )
    file_size = os.fstat(fh.fileno()).st_size
    n = vertex.count
    index = {p.name: i for i, p in enumerate(vertex.properties)}
    if header.byte_order is None:
        return _vertex_columns_ascii(path, header, fh, vertex, before, file_size - header.header_size, groups)

    order = header.byte_order
    offset = header.header_size + sum(e.count * e.record_dtype(order).itemsize for e in before if e.count)
    rec_dtype = vertex.record_dtype(order)
    if offset + n * rec_dtype.itemsize > file_size:
        raise ValueError(
            f"{path}: truncated PLY: the header announces {n} vertices ({n * rec_dtype.itemsize} bytes of vertex data"
            f" at byte {offset}) but the file has only {file_size} bytes; the file is incomplete or corrupt"
        )
    outs = [np.empty((n, len(names)), dtype=dt) for names, dt in groups]
    if n == 0 or not groups:
        return outs
    types = {p.dtype for p in vertex.properties}
    base = np.dtype(order + types.pop()) if len(types) == 1 else None
    width = len(vertex.properties)
    rows = max(1, _READ_CHUNK_BYTES // rec_dtype.itemsize)
    buf = np.empty(min(rows, n) * rec_dtype.itemsize, dtype=np.uint8)
    fh.seek(offset)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        raw = buf[: (stop - start) * rec_dtype.itemsize]
        got = fh.readinto(memoryview(raw))
        if got != raw.size:
            raise ValueError(f"{path}: truncated PLY: the vertex data ends early (file changed while reading?)")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf/overflow is reported by the callers' checks
            if base is not None:
                matrix = raw.view(base).reshape(stop - start, width)
                for (names, _), out in zip(groups, outs):
                    # np.take is ~7x faster than matrix[:, cols] for this gather
                    out[start:stop] = np.take(matrix, [index[name] for name in names], axis=1)
            else:
                records = raw.view(rec_dtype)
                for (names, _), out in zip(groups, outs):
                    for j, name in enumerate(names):
                        out[start:stop, j] = records[name]
    return outs


def _vertex_columns_ascii(path, header, fh, vertex, before, available, groups) -> list[np.ndarray]:
    skip = sum(e.count * len(e.properties) for e in before)
    need = vertex.count * len(vertex.properties)
    # Every value takes at least one character plus a separator: refuse impossible counts before reading anything.
    if 2 * (skip + need) - 1 > available:
        raise ValueError(
            f"{path}: truncated PLY: the header announces {vertex.count} vertices ({need} ascii values) but only "
            f"{available} bytes follow the header; the file is incomplete or corrupt"
        )
    width = len(vertex.properties)
    if vertex.count == 0:
        values = np.empty((0, width))
    else:
        # One element per line (as every ascii PLY writer does): numpy's C parser, 8 bytes per value of memory.
        fh.seek(header.header_size)
        text = io.TextIOWrapper(fh, encoding="latin-1", newline=None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy's note about blank lines not counting towards max_rows
                values = np.loadtxt(text, dtype=np.float64, comments=None, skiprows=sum(e.count for e in before),
                                    max_rows=vertex.count, ndmin=2)
        except ValueError as err:
            raise ValueError(
                f"{path}: malformed ascii PLY vertex data (a value that is not a number, or a line without exactly "
                f"{width} values): {err}"
            ) from None
        finally:
            text.detach()
        if values.shape[1] != width:
            raise ValueError(
                f"{path}: malformed ascii PLY vertex data: lines hold {values.shape[1]} values, the header declares "
                f"{width} vertex properties"
            )
        if values.shape[0] != vertex.count:
            raise ValueError(
                f"{path}: truncated ascii PLY: the header announces {vertex.count} vertices, the file holds "
                f"{values.shape[0]}; the file is incomplete"
            )
    index = {p.name: i for i, p in enumerate(vertex.properties)}
    types = {p.name: p.dtype for p in vertex.properties}
    outs = []
    for names, dt in groups:
        out = np.empty((vertex.count, len(names)), dtype=dt)
        for j, name in enumerate(names):  # round to the declared type first, as a binary file would hold it
            with np.errstate(invalid="ignore", over="ignore"):
                out[:, j] = values[:, index[name]].astype(types[name])
        outs.append(out)
    return outs


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value of a float array is finite, without a full-size boolean temporary in the common case:
    a sum is finite only if every term is, so a finite sum settles it; an infinite one (NaN/inf, or overflow of huge
    but finite values) falls back to the exact elementwise test."""
    with np.errstate(over="ignore", invalid="ignore"):
        if array.size == 0 or np.isfinite(np.sum(array)):
            return True
    return bool(np.isfinite(array).all())


def _check_finite(path: str, array: np.ndarray, names: list[str] | tuple[str, ...]) -> None:
    """ValueError naming the first property and vertex holding NaN or inf; ``array`` is (N, len(names))."""
    if _all_finite(array):
        return
    finite = np.isfinite(array)
    rows, cols = np.nonzero(~finite)
    raise ValueError(
        f"{path}: property {names[cols[0]]!r} holds a NaN or infinite value (vertex {rows[0]}); the file is corrupt"
    )


def _renormalize_quats(q: np.ndarray, path: str) -> np.ndarray:
    """Unit quaternions from float64 quaternions (N, 4): rows whose norm is 1 within 1e-6 are returned unchanged
    (so float32 unit quaternions survive a round trip bit-identically), others divided by their norm; all-zero rows
    become the identity (how 3DGS renders them), with a warning."""
    norm = np.sqrt(np.einsum("ij,ij->i", q, q))
    off = np.abs(norm - 1.0) > _QUAT_RENORM_TOL
    if not off.any():
        return q
    q = q.copy()
    zero = norm == 0
    if zero.any():
        logger.warning("%s: %d zero-length quaternions replaced by the identity rotation", path, int(zero.sum()))
        q[zero] = (1.0, 0.0, 0.0, 0.0)
        norm = np.where(zero, 1.0, norm)
    q[off] /= norm[off, None]
    return q


def _compressed_error(path: str) -> ValueError:
    return ValueError(
        f"{path}: this is a compressed splat PLY (SuperSplat / PlayCanvas 'chunk' format with packed_* properties), "
        "which is not supported; export it from SuperSplat as an uncompressed 3DGS .ply (or convert it with "
        "PlayCanvas splat-transform) and load that"
    )


def _vertex_element(path: str, header: PlyHeader) -> PlyElement:
    vertex = header.element("vertex")
    if header.element("chunk") is not None or (
        vertex is not None and any(n in vertex.names for n in _COMPRESSED_MARKERS)
    ):
        raise _compressed_error(path)
    if vertex is None:
        names = ", ".join(e.name for e in header.elements) or "none"
        raise ValueError(f"{path}: PLY has no 'vertex' element (elements: {names}); it holds no points or Gaussians")
    return vertex


# ---------------------------------------------------------------------------------------------------- 3DGS
def gaussian_ply_property_names(sh_degree: int) -> list[str]:
    """The property names, in file order, of the 3DGS PLY this module writes for ``sh_degree`` (0..4)."""
    k = num_sh_bases(sh_degree)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _ply_header_bytes(count: int, properties: list[tuple[str, str]]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    lines += [f"property {ptype} {name}" for name, ptype in properties]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def _numpy(t: torch.Tensor) -> np.ndarray:
    """CPU numpy view/copy of a tensor, float32 or float64."""
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), OPACITY_EPS, 1.0 - OPACITY_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def write_gaussians_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write ``gaussians`` as a standard binary little-endian 3DGS PLY (layout in the module docstring).

    The write is atomic (:func:`vist3a.io.atomic.atomic_write`): on any error the file at ``path`` is unchanged.
    Raises ``ValueError`` when a value cannot be stored (NaN/inf, scale <= 0), which only Gaussians built with
    ``validate=False`` can hold.
    """
    path = os.fspath(path)
    g = gaussians
    n, k = len(g), g.sh.shape[1]
    names = gaussian_ply_property_names(sh_degree_from_bases(k))
    header = _ply_header_bytes(n, [(name, "float") for name in names])
    means, scales, rots, opac, sh = (_numpy(t) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh))
    r0 = 9 + 3 * (k - 1)  # column of 'opacity'
    with atomic_write(path) as fh:
        fh.write(header)
        buffer = np.empty((min(n, _WRITE_CHUNK_ROWS), len(names)), dtype="<f4")  # reused: no page faults per block
        for start in range(0, n, _WRITE_CHUNK_ROWS):
            sl = slice(start, min(start + _WRITE_CHUNK_ROWS, n))
            m = sl.stop - sl.start
            block = buffer[:m]
            if not ((opac[sl] >= 0) & (opac[sl] <= 1)).all():  # also catches NaN
                raise ValueError(
                    f"{path}: cannot write property 'opacity': opacities must be probabilities in [0, 1] (NaN or "
                    "values outside, e.g. logits, found); nothing was written"
                )
            # (float64 values beyond float32 range become inf, NaN stays NaN: both are caught by the check below)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                block[:, 0:3] = means[sl]
                block[:, 3:6] = 0.0
                block[:, 6:9] = sh[sl, 0, :]
                if k > 1:  # channel-major: f_rest_{c*(K-1) + k-1} = sh[:, k, c], written through an (m, 3, K-1) view
                    rest = np.lib.stride_tricks.as_strided(
                        block[:, 9:r0], shape=(m, 3, k - 1), strides=(block.strides[0], (k - 1) * 4, 4)
                    )
                    rest[...] = sh[sl, 1:, :].transpose(0, 2, 1)
                block[:, r0] = _logit(opac[sl])
                block[:, r0 + 1 : r0 + 4] = np.log(scales[sl].astype(np.float64))
                block[:, r0 + 4 : r0 + 8] = _renormalize_quats(rots[sl].astype(np.float64), path)
            if not _all_finite(block):
                _, col = np.nonzero(~np.isfinite(block))
                raise ValueError(
                    f"{path}: cannot write property {names[col[0]]!r}: NaN, infinite or non-positive scale values "
                    "(build Gaussians with validation on to find them); nothing was written"
                )
            fh.write(block.reshape(-1).view(np.uint8))
    logger.debug("wrote %d Gaussians (SH degree %d) to %s", n, sh_degree_from_bases(k), path)


def _torch(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def read_gaussians_ply(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Gaussians:
    """Read a 3DGS PLY (from this package or any other tool) into :class:`Gaussians` on the CPU.

    Returns means (N, 3), scales (N, 3) = exp(scale_*), rotations (N, 4) wxyz unit, opacities (N,) = sigmoid(opacity),
    sh (N, K, 3) with K = 1 + (#f_rest)/3, all of floating ``dtype``. Means and SH are the stored values (rounded to
    ``dtype``); with ``dtype=torch.float64`` re-writing a file written here reproduces it byte for byte.

    Raises:
        ValueError: not a PLY; unsupported format; missing 3DGS properties (a point-cloud PLY is reported as such:
            use :func:`read_point_cloud_ply`); compressed SuperSplat PLY; f_rest count not 3*(K-1); truncated data;
            NaN/inf values; scales overflowing ``dtype``.
    """
    path = os.fspath(path)
    if not dtype.is_floating_point:
        raise ValueError(f"read_gaussians_ply: dtype must be floating point, got {dtype}")
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    check_input_file(path, "PLY file")
    with open(path, "rb") as fh:
        header = _parse_header(fh, path)
        vertex = _vertex_element(path, header)
        names = set(vertex.names)
        missing = [n for n in _GAUSSIAN_BASE if n not in names]
        if missing:
            gaussian_like = any(n.startswith(("f_dc_", "f_rest_", "scale_", "rot_")) or n == "opacity" for n in names)
            if {"x", "y", "z"} <= names and not gaussian_like:
                raise ValueError(
                    f"{path}: this is a point-cloud PLY (vertex properties: {', '.join(vertex.names)}), not a 3D "
                    "Gaussian Splatting PLY; read it with vist3a.io.read_point_cloud_ply"
                )
            raise ValueError(
                f"{path}: not a 3D Gaussian Splatting PLY: the vertex element lacks the properties "
                f"{', '.join(missing)} (a 3DGS PLY needs {', '.join(_GAUSSIAN_BASE)} and f_rest_*)"
            )
        rest_ids = sorted(int(n[7:]) for n in names if re.fullmatch(r"f_rest_[0-9]+", n))
        n_rest = len(rest_ids)
        k = 1 + n_rest // 3
        valid = n_rest % 3 == 0 and k in (1, 4, 9, 16, 25) and rest_ids == list(range(n_rest))
        if not valid:
            raise ValueError(
                f"{path}: the vertex element has {n_rest} f_rest_* properties (f_rest_0..f_rest_{n_rest - 1} "
                "expected without gaps); a 3DGS PLY has 3*(K-1) of them for K = 1, 4, 9, 16 or 25 SH coefficients "
                "(0, 9, 24, 45 or 72)"
            )
        sh_names = [f"f_dc_{c}" if j == 0 else f"f_rest_{c * (k - 1) + j - 1}" for j in range(k) for c in range(3)]
        groups = [
            (["x", "y", "z"], np_dtype),
            (sh_names, np_dtype),
            (["opacity"], np.float64),
            (["scale_0", "scale_1", "scale_2"], np.float64),
            (["rot_0", "rot_1", "rot_2", "rot_3"], np.float64),
        ]
        columns = _vertex_columns(path, header, fh, groups)
    for (group_names, _), values in zip(groups, columns):
        _check_finite(path, values, group_names)
    means, sh, logit, log_scales, quats = columns
    n = vertex.count

    with np.errstate(over="ignore"):
        scales = np.exp(log_scales).astype(np_dtype)
    if not np.isfinite(scales).all():
        raise ValueError(
            f"{path}: a scale_* value ({log_scales.max():g}) is far too large: exp() of it overflows {np.dtype(np_dtype).name}; "
            "the file is corrupt, declares the wrong byte order (binary_little_endian / binary_big_endian) or "
            "does not store log-scales"
        )
    np.maximum(scales, np.finfo(np_dtype).tiny, out=scales)  # exp of a hugely negative log-scale underflows to 0
    opacities = _sigmoid(logit[:, 0]).astype(np_dtype)
    rotations = _renormalize_quats(quats, path).astype(np_dtype)
    # Everything the constructor would check holds by construction (finite means and SH, finite positive scales,
    # sigmoid outputs in [0, 1], unit quaternions, shapes), so skip its validation pass (it would double read time).
    g = Gaussians(
        means=_torch(means, dtype),
        scales=_torch(scales, dtype),
        rotations=_torch(rotations, dtype),
        opacities=_torch(opacities, dtype),
        sh=_torch(sh.reshape(n, k, 3), dtype),
        validate=False,
    )
    logger.debug("read %d Gaussians (SH degree %d) from %s", n, g.sh_degree, path)
    return g


# ---------------------------------------------------------------------------------------------------- point clouds
def write_point_cloud_ply(path: str | os.PathLike, point_cloud: PointCloud) -> None:
    """Write ``point_cloud`` as a binary little-endian PLY: ``x y z`` float32, ``red green blue`` uchar
    (``floor(clip(c, 0, 1) * 255 + 0.5)``), and ``confidence`` float32 when the cloud has one. Atomic."""
    path = os.fspath(path)
    pc = point_cloud
    n = len(pc)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if pc.confidence is not None:
        fields.append(("confidence", "<f4"))
    rec = np.empty(n, dtype=np.dtype(fields))
    points = _numpy(pc.points)
    colors = np.floor(np.clip(_numpy(pc.colors).astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    for j, axis in enumerate("xyz"):
        rec[axis] = points[:, j]
    for j, channel in enumerate(("red", "green", "blue")):
        rec[channel] = colors[:, j]
    if pc.confidence is not None:
        rec["confidence"] = _numpy(pc.confidence)
    if n and not (np.isfinite(points).all() and (pc.confidence is None or np.isfinite(rec["confidence"]).all())):
        raise ValueError(f"{path}: cannot write a point cloud with NaN or infinite points/confidence")
    ptypes = {"<f4": "float", "u1": "uchar"}
    header = _ply_header_bytes(n, [(name, ptypes[t]) for name, t in fields])
    with atomic_write(path) as fh:
        fh.write(header)
        fh.write(rec.view(np.uint8))
    logger.debug("wrote %d points to %s", n, path)


def read_point_cloud_ply(
    path: str | os.PathLike, *, default_color: float = 0.5, dtype: torch.dtype = torch.float32
) -> PointCloud:
    """Read a point-cloud PLY into :class:`PointCloud`: points (N, 3), colors (N, 3) in [0, 1], confidence (N,) or
    None (from a ``confidence`` property).

    Colours come from ``red green blue``: uchar / 255, ushort / 65535, other integers / 255, floats as 0..1 (or
    0..255 when any value exceeds 1), clipped to [0, 1]. Without them a 3DGS PLY gives its DC colour (``f_dc_*``),
    anything else ``default_color`` for every point (mid-grey 0.5 by default).
    """
    path = os.fspath(path)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    check_input_file(path, "PLY file")
    with open(path, "rb") as fh:
        header = _parse_header(fh, path)
        vertex = _vertex_element(path, header)
        names = set(vertex.names)
        missing = [a for a in "xyz" if a not in names]
        if missing:
            raise ValueError(
                f"{path}: the vertex element lacks the coordinates {', '.join(missing)}; not a point cloud"
            )
        types = {p.name: np.dtype(p.dtype or "f4") for p in vertex.properties}
        rgb_names = ["red", "green", "blue"]
        dc_names = ["f_dc_0", "f_dc_1", "f_dc_2"]
        color_names = rgb_names if set(rgb_names) <= names else dc_names if set(dc_names) <= names else []
        groups = [(["x", "y", "z"], np_dtype)]
        if color_names:
            groups.append((color_names, np.float64))
        if "confidence" in names:
            groups.append((["confidence"], np_dtype))
        columns = _vertex_columns(path, header, fh, groups)
    for (group_names, _), values in zip(groups, columns):
        _check_finite(path, values, group_names)
    points = columns[0]
    n = vertex.count
    if color_names == rgb_names:
        raw = columns[1]
        kinds = {types[c].kind for c in rgb_names}
        itemsizes = {types[c].itemsize for c in rgb_names}
        if kinds == {"u"} and itemsizes == {2}:
            colors = raw / 65535.0
        elif "f" in kinds and raw.size and raw.max() <= 1.0:
            colors = raw
        else:
            colors = raw / 255.0
        colors = np.clip(colors, 0.0, 1.0)
    elif color_names:
        logger.info("%s: no red/green/blue properties; using the 3DGS DC colour (f_dc_*)", path)
        colors = np.clip(columns[1] * SH_C0 + 0.5, 0.0, 1.0)
    else:
        if not 0.0 <= default_color <= 1.0:
            raise ValueError(f"read_point_cloud_ply: default_color must be in [0, 1], got {default_color}")
        logger.info("%s: no colours in the file; using %g for every point", path, default_color)
        colors = np.full((n, 3), default_color)
    confidence = _torch(columns[-1][:, 0], dtype) if "confidence" in names else None
    try:
        return PointCloud(_torch(points, dtype), _torch(colors.astype(np_dtype), dtype), confidence)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
