"""Niantic .spz read/write (vist3a.io.spz): round trips within the format's quantisation, the exact bytes the
published format prescribes, hand-made files of every version (1-4, extension records), frames and clear errors."""

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from vist3a.gaussians import Gaussians
from vist3a.io import load_gaussians, read_spz, read_spz_header, save_gaussians, write_spz
from vist3a.io.spz import SPZ_MAGIC, pack_arrays
from vist3a.rotations import quat_to_matrix


def _scene(n=500, degree=3, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        torch.randn(n, 3, generator=g) * spread,
        torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3),
        torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        torch.rand(n, generator=g),
        torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.3,
    )


def _one(means=(1.0, -1 / 4096, 0.0), scale=1.0, quat=(1.0, 0.0, 0.0, 0.0), opacity=0.5, sh=None):
    sh = torch.zeros(1, 1, 3) if sh is None else torch.tensor(sh, dtype=torch.float32)[None]
    return Gaussians(torch.tensor([means]), torch.full((1, 3), scale), torch.tensor([quat]),
                     torch.tensor([opacity]), sh)


def _payload(path):
    return gzip.decompress(path.read_bytes())


# ---------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_within_quantisation(tmp_path, version, degree):
    scene = _scene(degree=degree)
    path = tmp_path / "s.spz"
    write_spz(path, scene, version=version)
    back = read_spz(path)
    h = read_spz_header(path)
    assert (h.version, h.count, h.sh_degree, h.fractional_bits, h.flags) == (version, len(scene), degree, 12, 0)
    assert back.sh.shape == scene.sh.shape
    assert (back.means - scene.means).abs().max() <= 2**-13 + 1e-6  # half a step of 12 fractional bits
    assert (back.scales.log() - scene.scales.log()).abs().max() <= 1 / 32 + 1e-5
    assert (back.opacities - scene.opacities).abs().max() <= 1 / 510 + 1e-6
    assert (back.sh[:, 0] - scene.sh[:, 0]).abs().max() <= 1 / (2 * 255 * 0.15) + 1e-5
    if degree:
        err = (back.sh[:, 1:] - scene.sh[:, 1:].clamp(-1, 127 / 128)).abs()
        assert err[:, :3].max() <= 4 / 128 + 1 / 256 + 1e-6  # band 1: buckets of 8 codes
        if degree > 1:
            assert err[:, 3:].max() <= 8 / 128 + 1 / 256 + 1e-6  # bands 2, 3: buckets of 16 codes
    rot_err = (quat_to_matrix(back.rotations) - quat_to_matrix(scene.rotations)).abs().max()
    assert rot_err < (0.006 if version == 3 else 0.3), rot_err
    # decoded values sit on their codes: writing them again changes nothing but near-tied rotation components
    write_spz(tmp_path / "again.spz", back, version=version)
    twice = read_spz(tmp_path / "again.spz")
    for field in ("means", "scales", "opacities", "sh"):
        assert torch.allclose(getattr(twice, field), getattr(back, field), rtol=0, atol=1e-6), field
    assert (quat_to_matrix(twice.rotations) - quat_to_matrix(back.rotations)).abs().max() < 0.004


def test_version3_rotations_are_precise_everywhere(tmp_path):
    """Smallest-three keeps every rotation within 0.25 degrees (version 2 cannot near w = 0)."""
    scene = _scene(n=4000, degree=0, seed=3)
    write_spz(tmp_path / "s.spz", scene)
    back = read_spz(tmp_path / "s.spz")
    cos = (back.rotations * scene.rotations).sum(-1).abs().clamp(max=1)
    assert math.degrees(2 * torch.acos(cos).max()) < 0.25


def test_save_and_load_dispatch_on_the_extension(tmp_path):
    scene = _scene(n=50, degree=1)
    save_gaussians(tmp_path / "a.spz", scene)
    assert gzip.decompress((tmp_path / "a.spz").read_bytes())[:4] == struct.pack("<I", SPZ_MAGIC)
    assert load_gaussians(tmp_path / "a.spz").sh_degree == 1
    with pytest.raises(ValueError, match=r"\.spz \(Niantic"):
        save_gaussians(tmp_path / "a.xyz", scene)


# ---------------------------------------------------------------------------------------------------- exact bytes
def test_bytes_follow_the_published_format(tmp_path):
    # x = 1 -> 4096 = 00 10 00; y = -1/4096 -> -1 = ff ff ff; opacity 0.5 -> 128; f_dc 0 -> 128, 1 -> 166;
    # scale 1 -> (0 + 10) * 16 = 160; identity -> smallest three: index 3 (w) in the top bits; SH 0.5 -> 192, -0.3 ->
    # round(-38.4) + 128 = 90 -> band 1 bucket of 8 -> 88
    sh = [[0.0, 1.0, 0.0], [0.5, -0.3, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    write_spz(tmp_path / "v3.spz", _one(sh=sh), version=3)
    raw = _payload(tmp_path / "v3.spz")
    assert raw[:16] == struct.pack("<IIIBBBB", SPZ_MAGIC, 3, 1, 1, 12, 0, 0)
    body = raw[16:]
    assert body[:9] == bytes([0x00, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0, 0, 0])
    assert body[9] == 128 and body[10:13] == bytes([128, 166, 128]) and body[13:16] == bytes([160] * 3)
    assert body[16:20] == bytes([0, 0, 0, 0xC0])
    assert body[20:] == bytes([192, 88, 128, 128, 128, 128, 128, 128, 128])
    write_spz(tmp_path / "v2.spz", _one(), version=2)
    assert _payload(tmp_path / "v2.spz")[16 + 16:16 + 19] == bytes([128, 128, 128])


def test_smallest_three_bits(tmp_path):
    # 90 degrees about z: xyzw = (0, 0, s, s): largest |q| is z (index 2, first of the tie), w = s -> 511
    s = math.sqrt(0.5)
    write_spz(tmp_path / "r.spz", _one(quat=(s, 0.0, 0.0, s)))
    comp = struct.unpack("<I", _payload(tmp_path / "r.spz")[16 + 16:16 + 20])[0]
    assert comp >> 30 == 2 and comp & 0x3FFFFFFF == 511
    # a negative largest component is made positive by negating the quaternion: same rotation
    write_spz(tmp_path / "n.spz", _one(quat=(0.0, 0.6, -0.8, 0.0)))
    back = read_spz(tmp_path / "n.spz")
    assert torch.allclose(quat_to_matrix(back.rotations), quat_to_matrix(torch.tensor([[0.0, 0.6, -0.8, 0.0]])),
                          atol=3e-3)


# ---------------------------------------------------------------------------------------------------- hand-made files
def _legacy_file(version, count, degree, arrays, flags=0, fractional_bits=12, before=b"", after=b""):
    head = struct.pack("<IIIBBBB", SPZ_MAGIC, version, count, degree, fractional_bits, flags, 0)
    return gzip.compress(head + before + b"".join(arrays) + after)


def _arrays_for_one(version):
    """One Gaussian at (0.5, -2, 3), opacity 1, f_dc 0, scale e^-2, rotation 90 degrees about x, from the spec."""
    if version == 1:
        pos = np.array([0.5, -2.0, 3.0], dtype="<f2").tobytes()
    else:
        pos = b"".join((int(v * 4096) & 0xFFFFFF).to_bytes(3, "little") for v in (0.5, -2.0, 3.0))
    s = math.sqrt(0.5)
    if version >= 3:  # xyzw = (s, 0, 0, s): largest x (index 0); y, z = 0; w = s -> 511
        rot = struct.pack("<I", (0 << 30) | (0 << 20) | (0 << 10) | 511)
    else:  # x = s -> round(127.5 s + 127.5) = 218
        rot = bytes([round(127.5 * s + 127.5), 128, 128])
    return [pos, bytes([255]), bytes([128] * 3), bytes([128] * 3), rot, b""]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_hand_made_files(tmp_path, version):
    path = tmp_path / "h.spz"
    path.write_bytes(_legacy_file(version, 1, 0, _arrays_for_one(version)))
    g = read_spz(path)
    assert torch.allclose(g.means, torch.tensor([[0.5, -2.0, 3.0]]))
    assert g.opacities.item() == 1.0 and torch.allclose(g.scales, torch.full((1, 3), math.exp(-2.0)))
    assert torch.allclose(g.sh, torch.full((1, 1, 3), (128 / 255 - 0.5) / 0.15))
    want = quat_to_matrix(torch.tensor([[math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0]]))
    assert torch.allclose(quat_to_matrix(g.rotations), want, atol=0.02 if version < 3 else 2e-3)


def test_extension_records_are_skipped_before_or_after_the_arrays(tmp_path):
    records = struct.pack("<II", 0xADBE0002, 12) + bytes(12) + struct.pack("<II", 0x12340001, 3) + b"abc"
    for where in ("before", "after"):
        path = tmp_path / f"{where}.spz"
        path.write_bytes(_legacy_file(3, 1, 0, _arrays_for_one(3), flags=0x2 | 0x1, **{where: records}))
        g = read_spz(path)
        assert torch.allclose(g.means, torch.tensor([[0.5, -2.0, 3.0]])), where


def test_reads_version_4(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    scene = _scene(n=64, degree=2)
    header, arrays = pack_arrays(scene, version=3)
    streams = [zstandard.ZstdCompressor().compress(a) for a in arrays if a]
    ext = struct.pack("<II", 0x4E410001, 4) + b"xxxx"
    toc = 32 + len(ext)
    head = struct.pack("<IIIBBBBI", SPZ_MAGIC, 4, header.count, header.sh_degree, header.fractional_bits, 0x2,
                       len(streams), toc) + bytes(12)
    table = b"".join(struct.pack("<QQ", len(c), len(a)) for c, a in zip(streams, [a for a in arrays if a]))
    (tmp_path / "v4.spz").write_bytes(head + ext + table + b"".join(streams))
    write_spz(tmp_path / "v3.spz", scene)
    v4, v3 = read_spz(tmp_path / "v4.spz"), read_spz(tmp_path / "v3.spz")
    for field in ("means", "scales", "rotations", "opacities", "sh"):
        assert torch.equal(getattr(v4, field), getattr(v3, field)), field


# ---------------------------------------------------------------------------------------------------- options
def test_frames(tmp_path):
    """'rub' stores Niantic's right-up-back frame: y and z negated, rotations and SH turned with the scene."""
    scene = _scene(n=80, degree=3)
    write_spz(tmp_path / "rub.spz", scene, frame="rub", sh_bits=(8, 8))
    stored = read_spz(tmp_path / "rub.spz")
    flipped = scene.transform(rotation=torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    assert (stored.means - flipped.means).abs().max() < 2e-4
    assert (stored.sh[:, :4] - flipped.sh[:, :4].clamp(-1, 127 / 128)).abs().max() < 0.02
    back = read_spz(tmp_path / "rub.spz", frame="rub")
    assert (back.means - scene.means).abs().max() < 2e-4
    assert (back.sh[:, :4] - scene.sh[:, :4].clamp(-1, 127 / 128)).abs().max() < 0.02


def test_fractional_bits_and_sh_degree(tmp_path):
    big = _scene(n=20, degree=0, spread=1.0)
    big = Gaussians(big.means * 10000, big.scales, big.rotations, big.opacities, big.sh)
    write_spz(tmp_path / "big.spz", big)
    header = read_spz_header(tmp_path / "big.spz")
    assert header.fractional_bits < 12 and big.means.abs().max() * 2**header.fractional_bits < 2**23
    assert (read_spz(tmp_path / "big.spz").means - big.means).abs().max() <= 2 ** -(header.fractional_bits + 1)
    four = _scene(n=10, degree=4)
    write_spz(tmp_path / "d3.spz", four)
    assert read_spz_header(tmp_path / "d3.spz").sh_degree == 3
    write_spz(tmp_path / "d4.spz", four, sh_degree=4)
    assert read_spz(tmp_path / "d4.spz").sh_degree == 4
    write_spz(tmp_path / "d0.spz", four, sh_degree=0)
    assert read_spz(tmp_path / "d0.spz").sh_degree == 0


# ---------------------------------------------------------------------------------------------------- errors
def test_write_errors(tmp_path):
    scene = _scene(n=5, degree=1)
    target = tmp_path / "x.spz"
    target.write_bytes(b"old")
    cases = [
        (dict(version=4), "version 4 cannot be written"),
        (dict(version=2, sh_degree=4), "sh_degree must be 0..3"),
        (dict(sh_degree=2), "cannot write SH degree 2 from a scene of SH degree 1"),
        (dict(frame="up"), "frame must be"),
        (dict(fractional_bits=23), "cannot hold positions"),
        (dict(sh_bits=(0, 4)), "sh_bits"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            write_spz(target, scene, **kwargs)
    huge = Gaussians(scene.means * 1e7, scene.scales, scene.rotations, scene.opacities, scene.sh)
    with pytest.raises(ValueError, match="beyond the"):
        write_spz(target, huge)
    assert target.read_bytes() == b"old"  # nothing was written


def test_read_errors(tmp_path):
    good = tmp_path / "good.spz"
    write_spz(good, _scene(n=30, degree=1))
    data = good.read_bytes()
    raw = gzip.decompress(data)

    def case(name, content, message):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_spz(p)

    case("ply.spz", b"ply\nformat binary_little_endian 1.0\n", "this is a PLY file")
    case("junk.spz", b"hello world", "not an .spz file")
    case("cut.spz", data[: len(data) // 2], "truncated|corrupt")
    case("short.spz", gzip.compress(raw[:-10]), "truncated .spz: the header announces 30 Gaussians")
    case("magic.spz", gzip.compress(b"XXXX" + raw[4:]), "magic")
    case("v9.spz", gzip.compress(raw[:4] + struct.pack("<I", 9) + raw[8:]), "version 9 is not supported")
    case("sh5.spz", gzip.compress(raw[:12] + bytes([5]) + raw[13:]), "SH degree 5")
    case("bomb.spz", gzip.compress(raw[:8] + struct.pack("<I", 2**31) + raw[12:]), "more than a")
    v4 = struct.pack("<IIIBBBBI", SPZ_MAGIC, 4, 1, 0, 12, 0, 5, 32) + bytes(12)
    case("v4.spz", v4, "streams, expected|table of contents|zstd")
