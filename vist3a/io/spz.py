"""Niantic ``.spz`` files: compressed Gaussian splats (about 10x smaller than a 3DGS ``.ply``), written and read per
the published format description (nianticlabs/spz README and its version-4 container); no third-party code.

Layout
------
Versions 1-3 gzip the whole payload; version 4 keeps a plain 32-byte header and zstd-compresses each array on its own.
All integers are little-endian.

Header (versions 1-3: 16 bytes inside the gzip stream; version 4: 32 plain bytes)::

    magic u32 = 0x5053474E ("NGSP")   version u32   count u32
    sh_degree u8 (0..4)   fractional_bits u8   flags u8 (0x1 antialiased, 0x2 extension records present)
    v1-3: reserved u8 | v4: stream_count u8, toc_offset u32, 12 reserved bytes

Arrays, in this order, one after the other (version 4: one zstd stream each, empty arrays omitted; the table at
``toc_offset`` lists (compressed size u64, uncompressed size u64) per stream; extension records sit between the header
and the table)::

    positions  count x 3 x 24-bit signed fixed point, value = integer / 2**fractional_bits (version 1: float16)
    alphas     count u8      round(opacity * 255)
    colours    count x 3 u8  round(f_dc * 0.15 * 255 + 127.5)       (the DC SH coefficient, not RGB)
    scales     count x 3 u8  round((log(scale) + 10) * 16)
    rotations  v1, v2: count x 3 u8, round(q * 127.5 + 127.5) of x, y, z of the unit quaternion with w >= 0;
               v3, v4: count x u32 "smallest three": bits 30-31 the index (x, y, z, w = 0..3) of the largest |q_i|
               (made positive), then the other three components in x, y, z, w order, highest bits first, as
               1 sign bit + 9-bit magnitude round(511 * |q_i| / sqrt(1/2))
    sh         count x (K - 1) x 3 u8, coefficient-major with the colour innermost, round(c * 128) + 128 for the
               SH bands 1..degree (K = (degree + 1)**2); writers round band 1 to 5 significant bits and higher bands
               to 4 (buckets of 8 and 16 codes), which gzip compresses well

Versions 2 and 3 may carry extension records (``u32 type, u32 length, payload``); the current format puts them after
the arrays, an earlier release right after the header. Both are recognised and skipped (their data is not used).

Coordinate frame
----------------
Niantic's library can convert to an internal right-up-back frame when told the source frame; ComfyUI core
(SplatToFile3D / File3DToSplat), Spark and World Labs' exports store the splats as they are. This module does the
latter by default (``frame="as-is"``: the pack's 3DGS / OpenCV frame, the same as its ``.ply`` files);
``frame="rub"`` writes / reads Niantic's right-up-back frame (y and z negated: a 180 degree turn about x, applied to
positions, rotations and SH).

What is kept
------------
Quantisation: positions to 2**-fractional_bits (12 bits by default: 0.24 mm per unit; fewer for scenes larger than
+-2048 units), log-scales to 1/16 (scales between 4.5e-5 and 379, clamped), opacity to 1/255, DC colour to 1/38
(f_dc within +-3.33, clamped), SH bands 1..3 within +-1 (clamped) to 1/16 and 1/8. Version 3 rotations are within
about 0.2 degrees; version 2 (w recomputed from 8-bit x, y, z) loses up to several degrees where w is near 0.
SH degree 4 is written only when asked for (Spark and ComfyUI core read up to degree 3).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..gaussians import Gaussians
from .atomic import atomic_write

__all__ = ["SPZ_MAGIC", "SpzHeader", "read_spz", "read_spz_header", "write_spz"]

logger = logging.getLogger(__name__)

SPZ_MAGIC = 0x5053474E
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
WRITE_VERSIONS = (2, 3)
READ_VERSIONS = (1, 2, 3, 4)
MAX_FRACTIONAL_BITS = 23
MAX_COMPRESSION_RATIO = 1024  # bounds the count a header may claim for the file's size (decompression bombs)
_SQRT_HALF = math.sqrt(0.5)
_FIX_MAX = (1 << 23) - 1
_GZIP = b"\x1f\x8b"

Frame = Literal["as-is", "rub"]


@dataclass(frozen=True)
class SpzHeader:
    """What an ``.spz`` header says."""

    version: int
    count: int
    sh_degree: int
    fractional_bits: int
    flags: int

    @property
    def antialiased(self) -> bool:
        return bool(self.flags & FLAG_ANTIALIASED)

    def array_sizes(self) -> list[int]:
        """Bytes of positions, alphas, colours, scales, rotations, sh."""
        n = self.count
        rest = (self.sh_degree + 1) ** 2 - 1
        return [n * (6 if self.version == 1 else 9), n, 3 * n, 3 * n, n * (4 if self.version >= 3 else 3), 3 * rest * n]


# ------------------------------------------------------------------------------------------------ rounding helpers
def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (the format's reference rounding), float64 in, float64 out."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(_round_half_away(x), 0, 255).astype(np.uint8)


def _count_clamped(what: str, values: np.ndarray, lo: float, hi: float, path: str) -> None:
    n = int(np.count_nonzero((values < lo) | (values > hi)))
    if n:
        logger.info("%s: %d %s outside the .spz range [%.4g, %.4g] were clamped", path, n, what, lo, hi)


def _flip_frame(g: Gaussians) -> Gaussians:
    """Negate y and z (a 180 degree turn about x): the 3DGS / OpenCV frame <-> Niantic's right-up-back frame."""
    return g.transform(rotation=torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)).to(g.means))


# ------------------------------------------------------------------------------------------------ packing
def _pack_positions(means: np.ndarray, fractional_bits: int) -> np.ndarray:
    fixed = _round_half_away(means * float(1 << fractional_bits)).astype(np.int64).reshape(-1)
    u = (fixed & 0xFFFFFF).astype(np.uint32)
    return np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8).reshape(-1)


def _pack_rotations(wxyz: np.ndarray, version: int) -> np.ndarray:
    q = wxyz[:, [1, 2, 3, 0]].astype(np.float64)  # xyzw, as the format orders the components
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([0.0, 0.0, 0.0, 1.0]))
    if version < 3:
        q = np.where(q[:, 3:4] < 0, -q, q)
        return _u8(q[:, :3] * 127.5 + 127.5).reshape(-1)
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    negate = q[rows, largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        other = largest != i
        sign = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / _SQRT_HALF + 0.5), 511).astype(np.uint32)
        comp = np.where(other, (comp << np.uint32(10)) | (sign << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8)


def _quantize_sh(rest: np.ndarray, sh1_bits: int, rest_bits: int) -> np.ndarray:
    """(N, K-1, 3) SH bands 1.. -> u8 codes, band 1 to ``sh1_bits`` significant bits, higher bands to ``rest_bits``."""
    x = rest.astype(np.float32) * np.float32(128.0)  # float32: exact for codes, fast for millions of values
    q = np.abs(x)
    q += np.float32(0.5)
    np.floor(q, out=q)
    np.copysign(q, x, out=q)  # round half away from zero
    bucket = np.full(rest.shape[1], 1 << (8 - rest_bits), dtype=np.float32)
    bucket[:3] = 1 << (8 - sh1_bits)
    bucket = bucket[None, :, None]
    q += np.float32(128.0) + bucket // 2
    q /= bucket
    np.floor(q, out=q)
    q *= bucket
    np.clip(q, 0, 255, out=q)
    return q.astype(np.uint8).reshape(-1)


def pack_arrays(gaussians: Gaussians, *, version: int = 3, sh_degree: int | None = None,
                fractional_bits: int | None = None, sh_bits: tuple[int, int] = (5, 4), path: str = "spz"
                ) -> tuple[SpzHeader, list[bytes]]:
    """The header and the six arrays of a scene (see the module docstring), without any compression."""
    g = gaussians.detach().to("cpu", torch.float64)
    n = len(g)
    degree = _sh_degree_to_write(g.sh_degree, sh_degree, version, path)
    if not all(1 <= b <= 8 for b in sh_bits):
        raise ValueError(f"{path}: sh_bits must be two bit counts in 1..8, got {sh_bits}")
    means = g.means.numpy()
    scales = g.scales.numpy()
    opac = g.opacities.numpy()
    sh = g.sh.numpy()
    quats = g.rotations.numpy()
    if n and not all(np.isfinite(a).all() for a in (means, scales, opac, sh, quats)):
        raise ValueError(f"{path}: cannot write Gaussians with NaN or infinite values as .spz; nothing was written")
    extent = float(np.abs(means).max()) if n else 0.0
    fits = [b for b in range(MAX_FRACTIONAL_BITS + 1) if extent * (1 << b) <= _FIX_MAX]
    if not fits:
        raise ValueError(f"{path}: positions reach {extent:.4g}, beyond the +-{_FIX_MAX} that .spz's 24-bit fixed "
                         "point can hold; scale the scene down (or save it as .ply); nothing was written")
    if fractional_bits is None:
        fractional_bits = min(12, max(fits))
        if fractional_bits < 12:
            logger.info("%s: positions reach %.4g; stored with %d fractional bits (resolution %.3g)", path, extent,
                        fractional_bits, 2.0 ** -fractional_bits)
    elif fractional_bits not in fits:
        raise ValueError(f"{path}: fractional_bits={fractional_bits} cannot hold positions reaching {extent:.4g} "
                         f"(at most {max(fits)} can); pass fractional_bits=None; nothing was written")
    log_scales = np.log(np.maximum(scales, 1e-30))
    _count_clamped("log-scales", log_scales, -10.0, 255 / 16 - 10.0, path)
    _count_clamped("DC colour coefficients", sh[:, 0], -0.5 / COLOR_SCALE, 0.5 / COLOR_SCALE, path)
    rest = sh[:, 1:(degree + 1) ** 2]
    _count_clamped("SH coefficients", rest, -1.0, 127 / 128, path)
    arrays = [
        _pack_positions(means, fractional_bits).tobytes(),
        _u8(opac * 255.0).tobytes(),
        _u8(sh[:, 0] * (COLOR_SCALE * 255.0) + 127.5).reshape(-1).tobytes(),
        _u8((log_scales + 10.0) * 16.0).reshape(-1).tobytes(),
        _pack_rotations(quats, version).tobytes(),
        _quantize_sh(rest, *sh_bits).tobytes() if degree else b"",
    ]
    return SpzHeader(version, n, degree, fractional_bits, 0), arrays


def _sh_degree_to_write(have: int, want: int | None, version: int, path: str) -> int:
    top = 3 if version < 3 else 4
    if want is None:
        if have > 3:
            logger.info("%s: .spz keeps SH degree 3 (pass sh_degree=4 to keep band 4); band 4 dropped", path)
        return min(have, 3)
    if not 0 <= want <= top:
        raise ValueError(f"{path}: sh_degree must be 0..{top} for .spz version {version}, got {want}")
    if want > have:
        raise ValueError(f"{path}: cannot write SH degree {want} from a scene of SH degree {have}; pass "
                         f"sh_degree={have} or less")
    return want


def write_spz(
    path: str | os.PathLike,
    gaussians: Gaussians,
    *,
    version: int = 3,
    sh_degree: int | None = None,
    fractional_bits: int | None = None,
    frame: Frame = "as-is",
    sh_bits: tuple[int, int] = (5, 4),
) -> None:
    """Write ``gaussians`` as an ``.spz`` file (gzip container, atomic write).

    Args:
        version: 3 (default; smallest-three rotations, read by ComfyUI core, Spark and Niantic's library) or 2
            (older readers).
        sh_degree: SH bands to keep; default the scene's, at most 3.
        fractional_bits: fixed-point bits of the positions; default 12, or fewer when the scene is larger than
            +-2048 units.
        frame: ``"as-is"`` (the pack's 3DGS / OpenCV frame, as ComfyUI core and Spark expect) or ``"rub"``
            (Niantic's right-up-back frame).
        sh_bits: significant bits kept of SH band 1 and of the higher bands (format default (5, 4); 8 keeps all).

    Raises:
        ValueError: unsupported version or frame, NaN / infinite values, positions beyond the 24-bit range, an SH
            degree the scene does not have. Nothing is written then.
    """
    path = os.fspath(path)
    if version not in WRITE_VERSIONS:
        raise ValueError(f"{path}: .spz version {version} cannot be written; use version 3 (or 2 for old readers)")
    if frame not in ("as-is", "rub"):
        raise ValueError(f"{path}: frame must be 'as-is' or 'rub', got {frame!r}")
    g = _flip_frame(gaussians.detach().to("cpu", torch.float64)) if frame == "rub" else gaussians
    header, arrays = pack_arrays(g, version=version, sh_degree=sh_degree, fractional_bits=fractional_bits,
                                 sh_bits=sh_bits, path=path)
    head = struct.pack("<IIIBBBB", SPZ_MAGIC, header.version, header.count, header.sh_degree, header.fractional_bits,
                       header.flags, 0)
    data = gzip.compress(head + b"".join(arrays), compresslevel=6, mtime=0)
    with atomic_write(path) as fh:
        fh.write(data)
    logger.debug("wrote %d Gaussians (SH degree %d) to %s as .spz v%d", header.count, header.sh_degree, path,
                 header.version)


# ------------------------------------------------------------------------------------------------ reading
def _parse_header(raw: bytes, path: str) -> SpzHeader:
    magic, version, count, degree, bits, flags = struct.unpack_from("<IIIBBB", raw, 0)
    if magic != SPZ_MAGIC:
        raise ValueError(f"{path}: not an .spz file (magic 0x{magic:08x}, expected 0x{SPZ_MAGIC:08x} 'NGSP')")
    if version not in READ_VERSIONS:
        raise ValueError(f"{path}: .spz version {version} is not supported (this reader handles versions 1-4); "
                         "convert it with a newer tool to version 3")
    if degree > 4:
        raise ValueError(f"{path}: .spz header says SH degree {degree}; the format allows 0..4 (corrupt file)")
    if bits > MAX_FRACTIONAL_BITS:
        raise ValueError(f"{path}: .spz header says {bits} fractional bits; at most {MAX_FRACTIONAL_BITS} fit the "
                         "24-bit positions (corrupt file)")
    return SpzHeader(version, count, degree, bits, flags)


def _check_count(header: SpzHeader, compressed_size: int, path: str) -> None:
    if header.count * 9 > compressed_size * MAX_COMPRESSION_RATIO:
        raise ValueError(f"{path}: .spz header claims {header.count} Gaussians, more than a {compressed_size}-byte "
                         "file can hold (corrupt or hostile file); nothing was allocated")


def _gunzip_bounded(data: bytes, path: str) -> tuple[SpzHeader, bytes]:
    """Decompress the gzip container, never past the size the header announces (plus 1 MiB of extension records)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data, 16)
        while len(head) < 16 and not inflater.eof and inflater.unconsumed_tail:
            head += inflater.decompress(inflater.unconsumed_tail, 16 - len(head))
    except zlib.error as err:
        raise ValueError(f"{path}: corrupt .spz (its gzip stream does not decompress: {err})") from None
    if len(head) < 16:
        raise ValueError(f"{path}: truncated .spz: the gzip stream ends inside the 16-byte header")
    header = _parse_header(head, path)
    if header.version == 4:
        raise ValueError(f"{path}: a gzip stream holding an .spz version 4 header; version 4 files are not gzipped "
                         "(corrupt file)")
    _check_count(header, len(data), path)
    limit = sum(header.array_sizes()) + (1 << 20)
    parts, total = [head], len(head)
    try:
        tail = inflater.unconsumed_tail
        while not inflater.eof and total < 16 + limit:
            chunk = inflater.decompress(tail, min(1 << 24, 16 + limit - total))
            tail = inflater.unconsumed_tail
            if not chunk and not tail:
                break
            parts.append(chunk)
            total += len(chunk)
    except zlib.error as err:
        raise ValueError(f"{path}: corrupt .spz (its gzip stream does not decompress: {err})") from None
    if not inflater.eof and total < 16 + limit:
        raise ValueError(f"{path}: truncated .spz: the gzip stream ends before its end marker and checksum (an "
                         "interrupted download or copy?); get the file again")
    return header, b"".join(parts)


def _extension_chain(raw: bytes, start: int, end: int) -> list[tuple[int, int]] | None:
    """(type, length) of the extension records exactly filling raw[start:end], or None when they do not."""
    records, at = [], start
    while at < end:
        if at + 8 > end:
            return None
        kind, length = struct.unpack_from("<II", raw, at)
        at += 8 + length
        records.append((kind, length))
    return records if at == end and records else None


def _zstd_decompress(data: bytes, size: int, path: str) -> bytes:
    try:
        from compression import zstd  # Python 3.14+

        return zstd.decompress(data)
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        raise ValueError(f"{path}: .spz version 4 compresses with zstd, which this Python lacks; install the "
                         "'zstandard' package (pip install zstandard) or convert the file to version 3") from None
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


def _read_v4(data: bytes, path: str) -> tuple[SpzHeader, list[bytes]]:
    if len(data) < 32:
        raise ValueError(f"{path}: truncated .spz version 4 file ({len(data)} bytes, the header alone takes 32)")
    header = _parse_header(data[:16], path)
    if header.version != 4:
        raise ValueError(f"{path}: an uncompressed .spz header of version {header.version}; versions 1-3 are "
                         "gzip-compressed (corrupt file)")
    _check_count(header, len(data), path)
    streams, toc = struct.unpack_from("<BI", data, 15)
    toc_end = toc + 16 * streams
    if toc < 32 or toc_end > len(data):
        raise ValueError(f"{path}: corrupt .spz version 4 file (its table of contents at byte {toc} lies outside "
                         "the file)")
    if header.flags & FLAG_EXTENSIONS and toc > 32:
        logger.info("%s: ignoring .spz extension records: %s", path, _describe(_extension_chain(data, 32, toc)))
    sizes = header.array_sizes()
    wanted = [i for i, s in enumerate(sizes) if s]
    if streams != len(wanted):
        raise ValueError(f"{path}: .spz version 4 file has {streams} streams, expected {len(wanted)} for SH degree "
                         f"{header.sh_degree} (corrupt file)")
    arrays = [b""] * 6
    at = toc_end
    for k, index in enumerate(wanted):
        packed, unpacked = struct.unpack_from("<QQ", data, toc + 16 * k)
        if unpacked != sizes[index] or at + packed > len(data):
            raise ValueError(f"{path}: corrupt .spz version 4 file (stream {k}: {unpacked} bytes announced, "
                             f"{sizes[index]} expected, or it runs past the end of the file)")
        arrays[index] = _zstd_decompress(data[at:at + packed], unpacked, path)
        if len(arrays[index]) != sizes[index]:
            raise ValueError(f"{path}: corrupt .spz version 4 file (stream {k} decompressed to "
                             f"{len(arrays[index])} bytes, expected {sizes[index]})")
        at += packed
    return header, arrays


def _describe(records) -> str:
    if not records:
        return "unreadable block"
    return ", ".join(f"0x{kind:08X} ({length} bytes)" for kind, length in records)


def _split_legacy(header: SpzHeader, raw: bytes, path: str) -> list[bytes]:
    sizes = header.array_sizes()
    need = 16 + sum(sizes)
    if len(raw) < need:
        raise ValueError(f"{path}: truncated .spz: the header announces {header.count} Gaussians ({need} bytes "
                         f"unpacked) but the file holds {len(raw)}")
    start = 16
    if len(raw) > need:
        leading = _extension_chain(raw, 16, 16 + len(raw) - need) if header.flags & FLAG_EXTENSIONS else None
        if leading is not None:  # an earlier release wrote the records before the arrays
            start = 16 + len(raw) - need
            logger.info("%s: ignoring .spz extension records: %s", path, _describe(leading))
        elif header.flags & FLAG_EXTENSIONS:
            logger.info("%s: ignoring .spz extension records: %s", path,
                        _describe(_extension_chain(raw, need, len(raw))))
        else:
            logger.debug("%s: %d bytes after the .spz arrays ignored", path, len(raw) - need)
    arrays, at = [], start
    for size in sizes:
        arrays.append(raw[at:at + size])
        at += size
    return arrays


def _unpack_rotations(codes: np.ndarray, n: int, version: int) -> np.ndarray:
    """(N, 4) unit quaternions wxyz in float64 from the rotation bytes of ``n`` Gaussians."""
    q = np.zeros((n, 4), dtype=np.float64)  # xyzw
    if version < 3:
        q[:, :3] = codes.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        q[:, 3] = np.sqrt(np.maximum(0.0, 1.0 - (q[:, :3] ** 2).sum(1)))
    else:
        comp = codes.reshape(n, 4).copy().view("<u4")[:, 0].astype(np.uint32)
        largest = (comp >> np.uint32(30)).astype(np.int64)
        for i in (3, 2, 1, 0):
            other = largest != i
            mag = (comp & np.uint32(511)).astype(np.float64)
            sign = np.where((comp >> np.uint32(9)) & np.uint32(1), -1.0, 1.0)
            comp = np.where(other, comp >> np.uint32(10), comp)
            q[:, i] = np.where(other, sign * _SQRT_HALF * mag / 511.0, 0.0)
        q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q ** 2).sum(1)))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q[:, [3, 0, 1, 2]]


def _read_container(path: str) -> tuple[SpzHeader, list[bytes]]:
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        return _read_v4(data, path)
    if data[:2] != _GZIP:
        if data[:3] == b"ply":
            raise ValueError(f"{path}: this is a PLY file, not an .spz; read it as .ply (rename it)")
        raise ValueError(f"{path}: not an .spz file: versions 1-3 are gzip streams and version 4 starts with "
                         "'NGSP'; this file is neither")
    header, raw = _gunzip_bounded(data, path)
    return header, _split_legacy(header, raw, path)


def read_spz_header(path: str | os.PathLike) -> SpzHeader:
    """The header of an ``.spz`` file (decompresses only its first bytes)."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read(64)
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        return _parse_header(data, path)
    if data[:2] != _GZIP:
        raise ValueError(f"{path}: not an .spz file (neither a gzip stream nor an 'NGSP' version 4 header)")
    with open(path, "rb") as fh:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        head = b""
        while len(head) < 16:
            block = fh.read(1 << 16)
            if not block:
                break
            try:
                head += inflater.decompress(block, 16 - len(head))
            except zlib.error as err:
                raise ValueError(f"{path}: corrupt .spz (gzip: {err})") from None
    if len(head) < 16:
        raise ValueError(f"{path}: truncated .spz: the gzip stream ends inside the 16-byte header")
    return _parse_header(head, path)


def read_spz(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, frame: Frame = "as-is") -> Gaussians:
    """Read an ``.spz`` file (versions 1-4; version 4 needs zstd) into :class:`Gaussians` on the CPU.

    Values decode as the format defines them: opacity = code / 255, f_dc = (code / 255 - 0.5) / 0.15,
    scale = exp(code / 16 - 10), SH = (code - 128) / 128. ``frame="rub"`` reads a file stored in Niantic's
    right-up-back frame into the pack's 3DGS / OpenCV frame (see the module docstring).

    Raises:
        ValueError: not an .spz (a PLY, another format), corrupt or truncated data, an unsupported version, version 4
            without a zstd module.
    """
    path = os.fspath(path)
    if frame not in ("as-is", "rub"):
        raise ValueError(f"{path}: frame must be 'as-is' or 'rub', got {frame!r}")
    header, (pos, alpha, color, scale, rot, sh) = _read_container(path)
    n = header.count
    if header.antialiased:
        logger.info("%s: the splats were trained with anti-aliasing (mip-splatting); opacities are used as stored",
                    path)
    if header.version == 1:
        means = np.frombuffer(pos, dtype="<f2").astype(np.float64).reshape(n, 3)
    else:
        b = np.frombuffer(pos, dtype=np.uint8).reshape(n * 3, 3).astype(np.int64)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = (fixed.astype(np.float64) / float(1 << header.fractional_bits)).reshape(n, 3)
    opacities = np.frombuffer(alpha, dtype=np.uint8).astype(np.float64) / 255.0
    dc = (np.frombuffer(color, dtype=np.uint8).astype(np.float64).reshape(n, 1, 3) / 255.0 - 0.5) / COLOR_SCALE
    scales = np.exp(np.frombuffer(scale, dtype=np.uint8).astype(np.float64).reshape(n, 3) / 16.0 - 10.0)
    rotations = _unpack_rotations(np.frombuffer(rot, dtype=np.uint8), n, header.version)
    rest = (header.sh_degree + 1) ** 2 - 1
    bands = (np.frombuffer(sh, dtype=np.uint8).astype(np.float64).reshape(n, rest, 3) - 128.0) / 128.0
    if not np.isfinite(means).all():
        raise ValueError(f"{path}: .spz positions hold NaN or infinite values (corrupt file)")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    g = Gaussians(t(means), t(scales), t(rotations), t(opacities), t(np.concatenate([dc, bands], axis=1)))
    if frame == "rub":
        g = _flip_frame(g.to(dtype=torch.float64)).to(dtype=dtype)
    logger.debug("read %d Gaussians (SH degree %d) from %s (.spz v%d)", n, header.sh_degree, path, header.version)
    return g
