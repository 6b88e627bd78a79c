"""Fuzz corpus, files: malformed 3DGS PLY, point-cloud PLY, .splat (and .spz where vist3a.io supports it) and
non-files, each read by the library and by `vist3a info` / `vist3a render` (with an earlier render output beside).

Every case is generated here from a valid file. Contract (tests/fuzz/_contract.py): one clear message naming the
file, exit code 2, no traceback, the earlier output untouched, nothing partial left; readers never block on a FIFO.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _contract import SENTINEL, assert_clear_cli, assert_unchanged, run_cli, snapshot

import vist3a.io as vio
from vist3a import Gaussians, PointCloud
from vist3a.io import (
    read_gaussians_ply,
    read_point_cloud_ply,
    read_splat,
    write_gaussians_ply,
    write_point_cloud_ply,
    write_splat,
)
from vist3a.rotations import normalize_quat

N = 20


def _gaussians() -> Gaussians:
    g = torch.Generator().manual_seed(0)
    return Gaussians(torch.randn(N, 3, generator=g), torch.rand(N, 3, generator=g) * 0.1 + 0.01,
                     normalize_quat(torch.randn(N, 4, generator=g)), torch.rand(N, generator=g),
                     torch.randn(N, 4, 3, generator=g) * 0.3)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The valid files every case starts from: 3DGS PLY (SH degree 1), point-cloud PLY, .splat."""
    folder = tmp_path_factory.mktemp("valid")
    write_gaussians_ply(folder / "scene.ply", _gaussians())
    g = torch.Generator().manual_seed(1)
    write_point_cloud_ply(folder / "points.ply", PointCloud(torch.randn(N, 3, generator=g),
                                                            torch.rand(N, 3, generator=g), torch.rand(N, generator=g)))
    write_splat(folder / "scene.splat", _gaussians())
    return {k: (folder / f).read_bytes() for k, f in (("ply", "scene.ply"), ("pc", "points.ply"),
                                                       ("splat", "scene.splat"))}


def _split(data: bytes) -> tuple[str, bytes]:
    i = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:i].decode("ascii"), data[i:]


def _body(data: bytes) -> np.ndarray:
    """The binary vertex data as (N, P) float32 (all-float files only)."""
    _, body = _split(data)
    return np.frombuffer(body, dtype="<f4").reshape(N, -1).copy()


def _with_value(data: bytes, column: int, value: float, row: int = 3) -> bytes:
    head, _ = _split(data)
    body = _body(data)
    body[row, column] = value
    return head.encode() + body.astype("<f4").tobytes()


def _header_edit(data: bytes, old: str, new: str) -> bytes:
    head, body = _split(data)
    assert old in head
    return head.replace(old, new, 1).encode() + body


def _ascii_ply(rows: list[str], count: int | None = None) -> bytes:
    props = "".join(f"property float {p}\n" for p in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                       "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2",
                                                       "rot_3"))
    n = len(rows) if count is None else count
    return (f"ply\nformat ascii 1.0\nelement vertex {n}\n{props}end_header\n" + "".join(r + "\n" for r in rows)
            ).encode()


_GOOD_ASCII_ROW = "0 0 0 0.1 0.2 0.3 0 -3 -3 -3 1 0 0 0"


def _pc_with_nan(data: bytes) -> bytes:
    head, body = _split(data)
    rec = np.frombuffer(body, dtype=np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"),
                                              ("b", "u1"), ("c", "<f4")])).copy()
    rec["y"][5] = np.nan
    return head.encode() + rec.tobytes()


def _splat_with(data: bytes, field: str, value: float) -> bytes:
    rec = np.frombuffer(data, dtype=np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4),
                                              ("rot", "u1", 4)])).copy()
    rec[field][2, 1] = value
    return rec.tobytes()


# (case id, file name, builder(valid files) -> bytes): every one must fail with a clear message naming the file.
BAD_FILES = [
    # --- 3DGS PLY: truncations
    ("ply-empty", "scene.ply", lambda v: b""),
    ("ply-magic-only", "scene.ply", lambda v: b"ply\n"),
    ("ply-cut-in-header", "scene.ply", lambda v: v["ply"][:40]),
    ("ply-header-only", "scene.ply", lambda v: _split(v["ply"])[0].encode()),
    ("ply-cut-half-body", "scene.ply", lambda v: v["ply"][: len(v["ply"]) - len(_split(v["ply"])[1]) // 2]),
    ("ply-one-byte-short", "scene.ply", lambda v: v["ply"][:-1]),
    # --- huge / impossible counts
    ("ply-count-1e12", "scene.ply", lambda v: _header_edit(v["ply"], f"vertex {N}", "vertex 1000000000000")),
    ("ply-count-2^64", "scene.ply", lambda v: _header_edit(v["ply"], f"vertex {N}", f"vertex {2**64}")),
    ("ply-count-negative", "scene.ply", lambda v: _header_edit(v["ply"], f"vertex {N}", "vertex -5")),
    ("ply-count-not-a-number", "scene.ply", lambda v: _header_edit(v["ply"], f"vertex {N}", "vertex abc")),
    # --- wrong types
    ("ply-char-coordinates", "scene.ply", lambda v: _header_edit(v["ply"], "property float x", "property char x")),
    ("ply-unknown-type", "scene.ply", lambda v: _header_edit(v["ply"], "property float y", "property float128 y")),
    ("ply-list-in-vertex", "scene.ply",
     lambda v: _header_edit(v["ply"], "property float nx", "property list uchar int nx")),
    ("ply-duplicate-property", "scene.ply", lambda v: _header_edit(v["ply"], "property float ny",
                                                                    "property float nx")),
    ("ply-f-rest-count-7", "scene.ply", lambda v: _header_edit(v["ply"], "property float f_rest_8\n", "")),
    ("ply-missing-opacity", "scene.ply", lambda v: _header_edit(v["ply"], "property float opacity",
                                                                 "property float extra")),
    ("ply-format-2.0", "scene.ply", lambda v: _header_edit(v["ply"], "binary_little_endian 1.0",
                                                           "binary_little_endian 2.0")),
    ("ply-format-unknown", "scene.ply", lambda v: _header_edit(v["ply"], "binary_little_endian", "binary_middle")),
    ("ply-no-vertex-element", "scene.ply", lambda v: _header_edit(v["ply"], "element vertex", "element face")),
    ("ply-no-end-header", "scene.ply", lambda v: b"ply\nformat binary_little_endian 1.0\n" + b"comment x\n" * 20000),
    # --- NaN / Inf
    ("ply-nan-x", "scene.ply", lambda v: _with_value(v["ply"], 0, np.nan)),
    ("ply-inf-z", "scene.ply", lambda v: _with_value(v["ply"], 2, np.inf)),
    ("ply-nan-colour", "scene.ply", lambda v: _with_value(v["ply"], 6, np.nan)),
    ("ply-nan-opacity", "scene.ply", lambda v: _with_value(v["ply"], 18, np.nan)),
    ("ply-inf-scale", "scene.ply", lambda v: _with_value(v["ply"], 19, np.inf)),
    ("ply-overflowing-scale", "scene.ply", lambda v: _with_value(v["ply"], 20, 1e30)),
    ("ply-nan-rotation", "scene.ply", lambda v: _with_value(v["ply"], 22, np.nan)),
    # --- wrong endianness (declared big, written little: the values become nonsense)
    ("ply-wrong-endianness", "scene.ply", lambda v: _header_edit(v["ply"], "binary_little_endian",
                                                                 "binary_big_endian")),
    # --- ascii
    ("ply-ascii-short-row", "scene.ply", lambda v: _ascii_ply([_GOOD_ASCII_ROW, "0 0 0 0.1"])),
    ("ply-ascii-not-a-number", "scene.ply", lambda v: _ascii_ply([_GOOD_ASCII_ROW.replace("0.2", "zz")])),
    ("ply-ascii-missing-rows", "scene.ply", lambda v: _ascii_ply([_GOOD_ASCII_ROW], count=5)),
    ("ply-ascii-nan", "scene.ply", lambda v: _ascii_ply([_GOOD_ASCII_ROW.replace("0.2", "nan")])),
    # --- other content under a .ply name
    ("ply-is-png", "scene.ply", lambda v: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    ("ply-random-bytes", "scene.ply", lambda v: bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))),
    ("ply-magic-then-garbage", "scene.ply", lambda v: b"ply\n" + bytes(range(256)) * 8),
    ("ply-compressed-splat", "scene.ply",
     lambda v: b"ply\nformat binary_little_endian 1.0\nelement chunk 1\nproperty float min_x\nelement vertex 1\n"
               b"property uint packed_position\nend_header\n" + b"\0" * 8),
    # --- point-cloud PLY
    ("pc-cut-half", "points.ply", lambda v: v["pc"][: len(v["pc"]) - len(_split(v["pc"])[1]) // 2]),
    ("pc-count-1e12", "points.ply", lambda v: _header_edit(v["pc"], f"vertex {N}", "vertex 1000000000000")),
    ("pc-missing-z", "points.ply", lambda v: _header_edit(v["pc"], "property float z", "property float w")),
    ("pc-nan-point", "points.ply", lambda v: _pc_with_nan(v["pc"])),
    ("pc-uchar-declared-double", "points.ply", lambda v: _header_edit(v["pc"], "property uchar red",
                                                                      "property double red")),
    # --- .splat
    ("splat-not-multiple-of-32", "scene.splat", lambda v: v["splat"][:-5]),
    ("splat-one-byte", "scene.splat", lambda v: b"\x01"),
    ("splat-nan-position", "scene.splat", lambda v: _splat_with(v["splat"], "pos", np.nan)),
    ("splat-inf-scale", "scene.splat", lambda v: _splat_with(v["splat"], "scale", np.inf)),
    ("splat-negative-scale", "scene.splat", lambda v: _splat_with(v["splat"], "scale", -1.0)),
    ("splat-is-a-ply", "scene.splat", lambda v: v["ply"]),
    # --- unsupported extension
    ("unknown-extension", "scene.txt", lambda v: v["ply"]),
]


def _read_with_library(path):
    if path.suffix == ".splat":
        return read_splat(path)
    if path.name.startswith("points"):
        return read_point_cloud_ply(path)
    if path.suffix == ".ply":
        return read_gaussians_ply(path)
    return vio.load_gaussians(path)


@pytest.mark.parametrize("case, name, build", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_gives_one_clear_error(case, name, build, valid, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(build(valid))
    (tmp_path / "orbit.png").write_bytes(SENTINEL)  # an earlier render that must survive
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        _read_with_library(path)
    assert str(path) in str(info.value) and "Traceback" not in str(info.value)
    assert_clear_cli(run_cli(["info", path], capsys), "info", path.name)
    assert_clear_cli(run_cli(["render", path, "-o", tmp_path / "orbit.png", "--views", "1", "--size", "8"], capsys),
                     "render", path.name)
    assert_unchanged(tmp_path, before)


def _fifo(path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)


NON_FILES = [
    ("folder", "scene.ply", lambda p: p.mkdir(), "is a folder"),
    ("missing", "scene.ply", lambda p: None, "does not exist"),
    ("broken-symlink", "scene.ply", lambda p: p.symlink_to(p.parent / "gone.ply"), "broken symbolic link"),
    ("fifo", "scene.ply", _fifo, "not a regular file"),  # opening it would block forever
    ("fifo-splat", "scene.splat", _fifo, "not a regular file"),
    ("path-through-a-file", "scene.ply", lambda p: None, "not a folder"),
]


@pytest.mark.parametrize("case, name, make, expected", NON_FILES, ids=[c[0] for c in NON_FILES])
def test_non_files_are_refused_without_blocking(case, name, make, expected, tmp_path, capsys):
    path = tmp_path / name
    if case == "path-through-a-file":
        (tmp_path / "afile").write_bytes(b"x")
        path = tmp_path / "afile" / name
    make(path)
    before = snapshot(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        _read_with_library(path)
    assert expected in str(info.value)
    message = assert_clear_cli(run_cli(["info", path], capsys), "info", name)
    assert expected in message
    assert_clear_cli(run_cli(["render", path, "-o", tmp_path / "o.png"], capsys), "render", name)
    assert_unchanged(tmp_path, before)


def test_device_file_is_refused(capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    message = assert_clear_cli(run_cli(["info", "/dev/zero"], capsys), "info", "/dev/zero")
    assert "not a regular file" in message


def test_zero_quaternion_is_repaired_with_a_warning(valid, tmp_path, caplog):
    """A zero-length rotation (some exporters write it for degenerate splats) loads as the identity, logged."""
    data = valid["ply"]
    for col in (22, 23, 24, 25):
        data = _with_value(data, col, 0.0)
    (tmp_path / "scene.ply").write_bytes(data)
    with caplog.at_level("WARNING"):
        g = read_gaussians_ply(tmp_path / "scene.ply")
    assert torch.equal(g.rotations[3], torch.tensor([1.0, 0, 0, 0])) and "zero-length quaternions" in caplog.text


def test_correct_big_endian_and_ascii_files_read_right(valid, tmp_path, capsys):
    """The positive side of the endianness cases: a correctly written big-endian file reads like the original."""
    head, _ = _split(valid["ply"])
    body = _body(valid["ply"])
    (tmp_path / "be.ply").write_bytes(head.replace("binary_little_endian", "binary_big_endian").encode()
                                      + body.astype(">f4").tobytes())
    (tmp_path / "le.ply").write_bytes(valid["ply"])
    little, big = read_gaussians_ply(tmp_path / "le.ply"), read_gaussians_ply(tmp_path / "be.ply")
    assert torch.equal(little.means, big.means) and torch.equal(little.sh, big.sh)
    (tmp_path / "a.ply").write_bytes(_ascii_ply([_GOOD_ASCII_ROW] * 3))
    assert len(read_gaussians_ply(tmp_path / "a.ply")) == 3
    assert run_cli(["info", tmp_path / "be.ply"], capsys).rc == 0


# ============================================================================================ .spz (issue 12)
_SPZ = getattr(vio, "write_spz", None), getattr(vio, "read_spz", None)
spz = pytest.mark.skipif(None in _SPZ, reason="vist3a.io has no .spz support yet (issue 12)")


@spz
@pytest.mark.parametrize("case", ["empty", "half", "one-byte-short", "bad-magic", "random"])
def test_bad_spz_gives_one_clear_error(case, tmp_path, capsys):
    write_spz, read_spz = _SPZ
    good = tmp_path / "good.spz"
    write_spz(good, _gaussians())
    data = good.read_bytes()
    bad = {"empty": b"", "half": data[: len(data) // 2], "one-byte-short": data[:-1],
           "bad-magic": b"NOTSPZ" + data[6:], "random": bytes(np.random.default_rng(1).integers(0, 256, 512,
                                                                                                np.uint8))}[case]
    path = tmp_path / "scene.spz"
    path.write_bytes(bad)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError):
        read_spz(path)
    assert_clear_cli(run_cli(["info", path], capsys), "info", path.name)
    assert_unchanged(tmp_path, before)


def test_the_corpus_is_what_it_claims():
    """The case lists cover every kind the issue names (so a shrinking corpus fails here)."""
    ids = {c[0] for c in BAD_FILES}
    for kind in ("empty", "cut", "count", "char", "nan", "inf", "endianness", "splat", "pc-"):
        assert any(kind in i for i in ids), kind
    assert len(BAD_FILES) + len(NON_FILES) >= 50
