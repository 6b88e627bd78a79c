"""3DGS and point-cloud PLY: round trips, byte-exact re-writes, interop with plyfile and gsplat, malformed files."""

from __future__ import annotations

import os
import time
import tracemalloc
import warnings

import numpy as np
import plyfile
import pytest
import torch

import vist3a.io.ply as ply_mod
from vist3a import Gaussians, PointCloud
from vist3a.io import (
    OPACITY_EPS,
    gaussian_ply_property_names,
    read_gaussians_ply,
    read_ply_header,
    read_point_cloud_ply,
    write_gaussians_ply,
    write_point_cloud_ply,
)
from vist3a.io.ply import MAX_HEADER_BYTES
from vist3a.rotations import normalize_quat
from vist3a.sh import SH_C0

# Tolerances of the float32 round trip (stored as logit / log in float32, converted in float64).
OPACITY_ATOL = 1e-7
SCALE_RTOL = 5e-7


def make_gaussians(n: int, degree: int, seed: int = 0, dtype=torch.float32) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=gen, dtype=dtype) * 3,
        scales=torch.exp(torch.randn(n, 3, generator=gen, dtype=dtype) * 2 - 4),
        rotations=normalize_quat(torch.randn(n, 4, generator=gen, dtype=dtype)),
        opacities=torch.rand(n, generator=gen, dtype=dtype),
        sh=torch.randn(n, k, 3, generator=gen, dtype=dtype) * 0.5,
    )


def expected_columns(g: Gaussians) -> dict[str, np.ndarray]:
    """What the 3DGS PLY must hold, computed independently (float64 maths, then float32)."""
    n, k = len(g), g.sh.shape[1]
    sh = g.sh.double().numpy()
    p = np.clip(g.opacities.double().numpy(), OPACITY_EPS, 1 - OPACITY_EPS)
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    cols = {key: v.double().numpy() for key, v in cols.items()}
    cols.update(nx=np.zeros(n), ny=np.zeros(n), nz=np.zeros(n))
    for c in range(3):
        cols[f"f_dc_{c}"] = sh[:, 0, c]
        for j in range(1, k):
            cols[f"f_rest_{c * (k - 1) + j - 1}"] = sh[:, j, c]  # channel-major, as INRIA's save_ply
    cols["opacity"] = np.log(p / (1 - p))
    for i in range(3):
        cols[f"scale_{i}"] = np.log(g.scales[:, i].double().numpy())
    for i in range(4):
        cols[f"rot_{i}"] = g.rotations[:, i].double().numpy()
    return {key: v.astype(np.float32) for key, v in cols.items()}


# ------------------------------------------------------------------------------------------------ round trips
@pytest.fixture(params=["one_chunk", "small_chunks"])
def read_chunks(request, monkeypatch):
    """Run a test with the default read buffer and with one of a few hundred bytes (many chunks, a partial last one)."""
    if request.param == "small_chunks":
        monkeypatch.setattr(ply_mod, "_READ_CHUNK_BYTES", 700)
    return request.param


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_round_trip_every_degree(tmp_path, degree, read_chunks):
    g = make_gaussians(300, degree, seed=degree)
    path = tmp_path / "scene.ply"
    write_gaussians_ply(path, g)
    h = read_gaussians_ply(path)
    assert h.sh_degree == degree and len(h) == 300 and h.dtype == torch.float32
    assert torch.equal(h.means, g.means)
    assert torch.equal(h.sh, g.sh)
    assert torch.equal(h.rotations, g.rotations)
    assert (h.opacities - g.opacities).abs().max() <= OPACITY_ATOL
    assert ((h.scales - g.scales) / g.scales).abs().max() <= SCALE_RTOL

    # read -> write reproduces the file byte for byte (float64 read: guaranteed; float32 read: holds too)
    original = path.read_bytes()
    write_gaussians_ply(tmp_path / "again64.ply", read_gaussians_ply(path, dtype=torch.float64))
    assert (tmp_path / "again64.ply").read_bytes() == original
    write_gaussians_ply(tmp_path / "again32.ply", h)
    assert (tmp_path / "again32.ply").read_bytes() == original


def test_round_trip_extreme_values(tmp_path):
    g = make_gaussians(1000, 1, seed=7)
    g.opacities[:6] = torch.tensor([0.0, 1.0, 1e-9, 1 - 1e-7, 0.5, 1e-30])
    g.scales[:3] = torch.tensor([[1e-30, 1e30, 1.0], [1e-8, 1e8, 3.0], [2.0, 2.0, 2.0]])
    path = tmp_path / "extreme.ply"
    write_gaussians_ply(path, g)
    h = read_gaussians_ply(path)
    assert torch.equal(h.means, g.means) and torch.equal(h.sh, g.sh) and torch.equal(h.rotations, g.rotations)
    assert (h.opacities - g.opacities).abs().max() <= OPACITY_ATOL
    assert h.opacities[1] == 1.0  # 1 - eps rounds back to exactly 1 in float32
    assert abs(h.opacities[0].item() - OPACITY_EPS) < 1e-15
    assert ((h.scales - g.scales) / g.scales).abs().max() <= SCALE_RTOL
    stored = plyfile.PlyData.read(str(path))["vertex"].data["opacity"]
    assert np.isfinite(stored).all() and abs(stored[0] + 23.03) < 0.01 and abs(stored[1] - 23.03) < 0.01
    write_gaussians_ply(tmp_path / "again.ply", h)
    assert (tmp_path / "again.ply").read_bytes() == path.read_bytes()


def test_float64_gaussians_and_non_unit_quaternions(tmp_path):
    g = make_gaussians(50, 2, dtype=torch.float64)
    write_gaussians_ply(tmp_path / "a.ply", g)
    h = read_gaussians_ply(tmp_path / "a.ply", dtype=torch.float64)
    assert h.dtype == torch.float64
    assert torch.equal(h.means, g.means.float().double())
    # quaternions off unit length by up to the container's 1e-3 tolerance are normalised when written
    q = g.rotations.float() * 1.0008
    g2 = Gaussians(g.means.float(), g.scales.float(), q, g.opacities.float(), g.sh.float())
    write_gaussians_ply(tmp_path / "b.ply", g2)
    stored = plyfile.PlyData.read(str(tmp_path / "b.ply"))["vertex"].data
    quats = np.stack([stored[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    assert np.abs(np.linalg.norm(quats, axis=1) - 1).max() < 1e-6


@pytest.mark.parametrize("field,index,value", [("means", (3, 1), 1e40), ("sh", (2, 3, 0), float("nan")),
                                               ("scales", (1, 2), 0.0), ("opacities", (4,), float("inf")),
                                               ("opacities", (5,), -0.5), ("rotations", (0, 0), float("nan"))])
def test_writer_rejects_unstorable_values(tmp_path, field, index, value):
    g = make_gaussians(8, 1, dtype=torch.float64)
    values = {name: getattr(g, name).clone() for name in ("means", "scales", "rotations", "opacities", "sh")}
    values[field][index] = value
    bad = Gaussians(**values, validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy warnings on the way
        with pytest.raises(ValueError, match="cannot write property .*nothing was written"):
            write_gaussians_ply(tmp_path / "bad.ply", bad)
    assert list(tmp_path.iterdir()) == []


def test_empty_scene(tmp_path):
    g = make_gaussians(0, 3)
    write_gaussians_ply(tmp_path / "empty.ply", g)
    h = read_gaussians_ply(tmp_path / "empty.ply")
    assert len(h) == 0 and h.sh.shape == (0, 16, 3)
    assert plyfile.PlyData.read(str(tmp_path / "empty.ply"))["vertex"].count == 0


def test_header_parser(tmp_path):
    write_gaussians_ply(tmp_path / "a.ply", make_gaussians(5, 1))
    header = read_ply_header(tmp_path / "a.ply")
    assert header.format == "binary_little_endian" and header.byte_order == "<"
    vertex = header.element("vertex")
    assert vertex.count == 5 and list(vertex.names) == gaussian_ply_property_names(1)
    assert all(p.dtype == "f4" for p in vertex.properties)
    assert header.header_size + 5 * 4 * len(vertex.names) == os.path.getsize(tmp_path / "a.ply")


# ------------------------------------------------------------------------------------------------ plyfile interop
@pytest.mark.parametrize("degree", [0, 3])
def test_plyfile_reads_our_file(tmp_path, degree):
    g = make_gaussians(200, degree, seed=3)
    write_gaussians_ply(tmp_path / "a.ply", g)
    ply = plyfile.PlyData.read(str(tmp_path / "a.ply"))
    assert not ply.text and ply.byte_order == "<" and [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    k = (degree + 1) ** 2
    assert names == (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    for name, want in expected_columns(g).items():
        np.testing.assert_array_equal(vertex.data[name], want, err_msg=name)


def _other_tool_ply(g: Gaussians, rng: np.random.Generator) -> np.ndarray:
    """A vertex array as another tool might write it: shuffled property order, mixed types, extra properties,
    non-unit quaternions (norm 0.5..2)."""
    cols = expected_columns(g)
    cols["x"] = g.means[:, 0].double().numpy()  # stored as double
    quat_scale = rng.uniform(0.5, 2.0, size=len(g)).astype(np.float32)
    for i in range(4):
        cols[f"rot_{i}"] = cols[f"rot_{i}"] * quat_scale
    cols["filter_3D"] = rng.random(len(g)).astype(np.float32)
    cols["custom_id"] = np.arange(len(g), dtype=np.int32)
    cols["flag"] = np.ones(len(g), dtype=np.uint8)
    names = list(cols)
    rng.shuffle(names)
    arr = np.empty(len(g), dtype=[(name, cols[name].dtype) for name in names])
    for name in names:
        arr[name] = cols[name]
    return arr


# plyfile's ascii writer (numpy.savetxt) sometimes emits a spurious numpy cast warning; the data it writes is right.
_PLYFILE_ASCII_WARNING = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")


@_PLYFILE_ASCII_WARNING
@pytest.mark.parametrize("text,byte_order", [(True, "="), (False, ">"), (False, "<")])
def test_we_read_plyfile_written_files(tmp_path, text, byte_order, read_chunks):
    rng = np.random.default_rng(5)
    g = make_gaussians(120, 2, seed=11)
    vertex = plyfile.PlyElement.describe(_other_tool_ply(g, rng), "vertex")
    faces = np.empty(3, dtype=[("vertex_indices", "O")])
    faces["vertex_indices"] = [np.array([0, 1, 2], "i4"), np.array([2, 3, 4, 5], "i4"), np.array([1, 1, 1], "i4")]
    face = plyfile.PlyElement.describe(faces, "face")
    cams = np.zeros(2, dtype=[("fx", "f4"), ("fy", "f8"), ("id", "u2")])
    cams["fx"], cams["fy"], cams["id"] = 500.0, 510.0, [7, 8]
    camera = plyfile.PlyElement.describe(cams, "camera")  # fixed-size element BEFORE the vertices: skipped
    path = tmp_path / "other.ply"
    plyfile.PlyData([camera, vertex, face], text=text, byte_order=byte_order,
                    comments=["written by another tool"]).write(str(path))
    h = read_gaussians_ply(path)
    assert torch.equal(h.means, g.means)
    assert torch.equal(h.sh, g.sh)
    assert (h.rotations - g.rotations).abs().max() < 1e-6  # normalised back to unit length
    assert (h.rotations.norm(dim=-1) - 1).abs().max() < 1e-6
    assert (h.opacities - g.opacities).abs().max() <= OPACITY_ATOL
    assert ((h.scales - g.scales) / g.scales).abs().max() <= SCALE_RTOL


@pytest.mark.parametrize("ply_type", ["char", "int8", "uchar", "uint8", "short", "int16", "ushort", "uint16",
                                      "int", "int32", "uint", "uint32", "float", "float32", "double", "float64"])
def test_property_type_names(tmp_path, ply_type):
    """Every PLY type name and alias is accepted (values 0..100 fit all of them)."""
    g = make_gaussians(4, 0)
    names = gaussian_ply_property_names(0)
    header = ["ply", "format ascii 1.0", "element vertex 4"]
    header += [f"property {ply_type if n == 'x' else 'float'} {n}" for n in names]
    cols = expected_columns(g)
    cols["x"] = np.array([0, 1, 50, 100], np.float32)
    rows = [" ".join(repr(float(cols[n][i])) for n in names) for i in range(4)]
    path = tmp_path / "types.ply"
    path.write_text("\n".join(header + ["end_header"] + rows) + "\n")
    h = read_gaussians_ply(path)
    assert h.means[:, 0].tolist() == [0, 1, 50, 100]
    assert torch.equal(h.sh, g.sh)


# ------------------------------------------------------------------------------------------------ gsplat interop
def _gsplat_args(g: Gaussians):
    """gsplat.export_splats wants log-scales and logit-opacities; sh0 (N, 1, 3) and shN (N, K-1, 3). Passing float64
    makes its float32 cast the same single rounding as ours."""
    p = np.clip(g.opacities.double().numpy(), OPACITY_EPS, 1 - OPACITY_EPS)
    return (g.means.double(), torch.log(g.scales.double()), g.rotations.double(),
            torch.from_numpy(np.log(p) - np.log1p(-p)), g.sh[:, :1].double(), g.sh[:, 1:].double())


@pytest.mark.parametrize("degree", [0, 3])
def test_gsplat_ply_matches_ours(tmp_path, degree):
    gsplat_exporter = pytest.importorskip("gsplat.exporter")
    g = make_gaussians(250, degree, seed=21)
    (tmp_path / "gsplat.ply").write_bytes(gsplat_exporter.export_splats(*_gsplat_args(g), format="ply"))
    write_gaussians_ply(tmp_path / "ours.ply", g)
    theirs = plyfile.PlyData.read(str(tmp_path / "gsplat.ply"))["vertex"].data
    ours = plyfile.PlyData.read(str(tmp_path / "ours.ply"))["vertex"].data
    assert set(theirs.dtype.names) == set(ours.dtype.names) - {"nx", "ny", "nz"}
    for name in theirs.dtype.names:  # identical float32 values, property by property
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    h = read_gaussians_ply(tmp_path / "gsplat.ply")  # and we read gsplat's file (no normals) back
    assert torch.equal(h.means, g.means) and torch.equal(h.sh, g.sh) and torch.equal(h.rotations, g.rotations)
    assert (h.opacities - g.opacities).abs().max() <= OPACITY_ATOL


# ------------------------------------------------------------------------------------------------ malformed files
def _valid_bytes(tmp_path, n=10, degree=1) -> bytes:
    write_gaussians_ply(tmp_path / "valid.ply", make_gaussians(n, degree))
    return (tmp_path / "valid.ply").read_bytes()


def _header_file(tmp_path, lines: list[str], body: bytes = b"", name="bad.ply"):
    path = tmp_path / name
    path.write_bytes(("\n".join(lines) + "\n").encode() + body)
    return path


GAUSSIAN_PROPS = [f"property float {n}" for n in gaussian_ply_property_names(0)]


def test_not_a_ply(tmp_path):
    path = tmp_path / "garbage.ply"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a PLY file"):
        read_gaussians_ply(path)
    (tmp_path / "empty.ply").write_bytes(b"")
    with pytest.raises(ValueError, match="not a PLY file"):
        read_gaussians_ply(tmp_path / "empty.ply")
    with pytest.raises(ValueError, match="not a PLY file"):
        read_point_cloud_ply(path)


@pytest.mark.parametrize("line", ["format binary_middle_endian 1.0", "format ascii 2.0", "format"])
def test_unsupported_format(tmp_path, line):
    path = _header_file(tmp_path, ["ply", line, "element vertex 0", *GAUSSIAN_PROPS, "end_header"])
    with pytest.raises(ValueError, match="unsupported PLY format line"):
        read_gaussians_ply(path)


def test_missing_properties_are_named(tmp_path):
    props = [p for p in GAUSSIAN_PROPS if not p.endswith((" opacity", " rot_3"))]
    path = _header_file(tmp_path, ["ply", "format binary_little_endian 1.0", "element vertex 0", *props, "end_header"])
    with pytest.raises(ValueError, match=r"lacks the properties opacity, rot_3"):
        read_gaussians_ply(path)


def test_bad_f_rest_count(tmp_path):
    props = GAUSSIAN_PROPS + [f"property float f_rest_{i}" for i in range(7)]
    path = _header_file(tmp_path, ["ply", "format binary_little_endian 1.0", "element vertex 0", *props, "end_header"])
    with pytest.raises(ValueError, match=r"has 7 f_rest_\* properties"):
        read_gaussians_ply(path)
    props = GAUSSIAN_PROPS + [f"property float f_rest_{i}" for i in range(1, 10)]  # 9 but not starting at 0
    path = _header_file(tmp_path, ["ply", "format binary_little_endian 1.0", "element vertex 0", *props, "end_header"])
    with pytest.raises(ValueError, match="without gaps"):
        read_gaussians_ply(path)


def test_compressed_supersplat_ply(tmp_path):
    gsplat_exporter = pytest.importorskip("gsplat.exporter")
    g = make_gaussians(300, 1, seed=2)
    g.opacities[:] = 0.9
    (tmp_path / "compressed.ply").write_bytes(gsplat_exporter.export_splats(*_gsplat_args(g), format="ply_compressed"))
    with pytest.raises(ValueError, match="compressed splat PLY"):
        read_gaussians_ply(tmp_path / "compressed.ply")
    with pytest.raises(ValueError, match="compressed splat PLY"):
        read_point_cloud_ply(tmp_path / "compressed.ply")


def test_point_cloud_given_to_gaussian_reader(tmp_path):
    pc = PointCloud(torch.randn(10, 3), torch.rand(10, 3))
    write_point_cloud_ply(tmp_path / "cloud.ply", pc)
    with pytest.raises(ValueError, match="point-cloud PLY.*read_point_cloud_ply"):
        read_gaussians_ply(tmp_path / "cloud.ply")


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_truncated_binary(tmp_path, cut):
    data = _valid_bytes(tmp_path)
    (tmp_path / "cut.ply").write_bytes(data[:-cut])
    with pytest.raises(ValueError, match="truncated PLY"):
        read_gaussians_ply(tmp_path / "cut.ply")


def test_truncated_ascii(tmp_path):
    names = gaussian_ply_property_names(0)
    row = " ".join(["0.5"] * len(names))
    lines = ["ply", "format ascii 1.0", "element vertex 3", *GAUSSIAN_PROPS, "end_header", row, row]
    with pytest.raises(ValueError, match="truncated"):
        read_gaussians_ply(_header_file(tmp_path, lines))
    bad_row = row.replace("0.5", "zz", 1)
    lines = ["ply", "format ascii 1.0", "element vertex 2", *GAUSSIAN_PROPS, "end_header", row, bad_row]
    with pytest.raises(ValueError, match="malformed ascii PLY vertex data.*not a number"):
        read_gaussians_ply(_header_file(tmp_path, lines))
    short = " ".join(["0.5"] * (len(names) - 1))
    lines = ["ply", "format ascii 1.0", "element vertex 2", *GAUSSIAN_PROPS, "end_header", short, short]
    with pytest.raises(ValueError, match="lines hold 16 values, the header declares 17"):
        read_gaussians_ply(_header_file(tmp_path, lines))
    lines = ["ply", "format ascii 1.0", "element vertex 2", *GAUSSIAN_PROPS, "end_header", row, short]
    with pytest.raises(ValueError, match="malformed ascii PLY vertex data"):
        read_gaussians_ply(_header_file(tmp_path, lines))


def test_crlf_header_and_utf8_comment(tmp_path):
    g = make_gaussians(20, 1)
    write_gaussians_ply(tmp_path / "a.ply", g)
    data = (tmp_path / "a.ply").read_bytes()
    head, body = data.split(b"end_header\n", 1)
    fmt = b"format binary_little_endian 1.0\n"
    head = head.replace(fmt, fmt + "comment Créé ✓\n".encode())
    (tmp_path / "crlf.ply").write_bytes(head.replace(b"\n", b"\r\n") + b"end_header\r\n" + body)
    h = read_gaussians_ply(tmp_path / "crlf.ply")
    assert torch.equal(h.means, g.means) and torch.equal(h.sh, g.sh)
    assert read_ply_header(tmp_path / "crlf.ply").comments == ("Créé ✓",)


@pytest.mark.parametrize("name,value", [("x", np.nan), ("f_dc_1", np.inf), ("scale_2", -np.inf), ("rot_0", np.nan),
                                        ("opacity", np.nan)])
def test_nan_and_inf_rejected(tmp_path, name, value):
    g = make_gaussians(20, 0)
    write_gaussians_ply(tmp_path / "a.ply", g)
    data = plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"].data.copy()
    data[name][13] = value
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(tmp_path / "nan.ply"))
    with pytest.raises(ValueError, match=rf"property '{name}' holds a NaN or infinite value \(vertex 13\)"):
        read_gaussians_ply(tmp_path / "nan.ply")


def test_huge_scale_overflow(tmp_path):
    g = make_gaussians(5, 0)
    write_gaussians_ply(tmp_path / "a.ply", g)
    data = plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"].data.copy()
    data["scale_0"][2] = 500.0
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(tmp_path / "big.ply"))
    with pytest.raises(ValueError, match="far too large"):
        read_gaussians_ply(tmp_path / "big.ply")


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_absurd_vertex_count_fails_fast_without_allocating(tmp_path, fmt):
    path = _header_file(tmp_path, ["ply", f"format {fmt} 1.0", "element vertex 1000000000000", *GAUSSIAN_PROPS,
                                   "end_header"], body=b"\0" * 4096)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="truncated.*1000000000000 vertices"):
            read_gaussians_ply(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 2 * MAX_HEADER_BYTES + (1 << 20)  # the header buffer, never the announced data


def test_header_without_end_header(tmp_path):
    lines = ["ply", "format binary_little_endian 1.0", "element vertex 0", *GAUSSIAN_PROPS]
    with pytest.raises(ValueError, match="no 'end_header' line; the file is truncated"):
        read_gaussians_ply(_header_file(tmp_path, lines))
    endless = ["ply", "format ascii 1.0"] + ["comment " + "x" * 70] * 1200  # ~ 90 KiB of header
    with pytest.raises(ValueError, match="no 'end_header' line within the first 64 KiB"):
        read_gaussians_ply(_header_file(tmp_path, endless))


@pytest.mark.parametrize("lines,message", [
    (["ply", "format ascii 1.0", "element vertex 1", "property float16 x", "end_header"],
     "unsupported PLY property type"),
    (["ply", "format ascii 1.0", "element vertex -5", "property float x", "end_header"], "malformed PLY element line"),
    (["ply", "format ascii 1.0", "property float x", "end_header"], "property before any element"),
    (["ply", "format ascii 1.0", "element vertex 1", "property float x", "property float x", "end_header"], "twice"),
    (["ply", "format ascii 1.0", "element vertex 1", "bogus line", "end_header"], "unexpected line in PLY header"),
    (["ply", "element vertex 1", "property float x", "end_header"], "before its 'format' line"),
    (["ply", "comment only", "end_header"], "no 'format' line"),
    (["ply", "format ascii 1.0", "element face 1", "property float x", "end_header"], "no 'vertex' element"),
])
def test_garbage_headers(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_gaussians_ply(_header_file(tmp_path, lines))


def test_list_element_before_vertex(tmp_path):
    lines = ["ply", "format binary_little_endian 1.0", "element face 1", "property list uchar int vertex_indices",
             "element vertex 0", *GAUSSIAN_PROPS, "end_header"]
    with pytest.raises(ValueError, match="'face' with list properties comes before 'vertex'"):
        read_gaussians_ply(_header_file(tmp_path, lines, body=b"\x03" + b"\0" * 12))


def _ascii_gaussian_ply(g: Gaussians) -> bytes:
    names = gaussian_ply_property_names(g.sh_degree)
    cols = expected_columns(g)
    lines = ["ply", "format ascii 1.0", "element camera 1", "property float fx", f"element vertex {len(g)}"]
    lines += [f"property float {n}" for n in names] + ["element face 1", "property list uchar int vertex_indices"]
    lines += ["end_header", "500.0"] + [" ".join(repr(float(cols[n][i])) for n in names) for i in range(len(g))]
    return ("\n".join(lines + ["3 0 1 2"]) + "\n").encode()


@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_random_corruption_never_crashes(tmp_path, fmt):
    """Mutated and truncated files give a result or a ValueError: never another exception, a numpy warning or a
    hang."""
    g = make_gaussians(6, 1)
    data = _valid_bytes(tmp_path, n=6, degree=1) if fmt == "binary" else _ascii_gaussian_ply(g)
    (tmp_path / "clean.ply").write_bytes(data)
    assert torch.equal(read_gaussians_ply(tmp_path / "clean.ply").means, g.means)
    header_end = data.index(b"end_header") + 11
    rng = np.random.default_rng(1234)
    path = tmp_path / "fuzz.ply"
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for i in range(300):
            buf = bytearray(data)
            if i % 3 == 0:
                buf = buf[: rng.integers(0, len(buf))]
            else:
                for _ in range(rng.integers(1, 6)):  # mostly hit the header, where parsing happens
                    pos = rng.integers(0, header_end) if rng.random() < 0.8 else rng.integers(0, len(buf))
                    buf[pos] = rng.choice([rng.integers(0, 256), ord(" "), ord("\n"), ord("0"), ord("9")])
            path.write_bytes(bytes(buf))
            for reader in (read_gaussians_ply, read_point_cloud_ply):
                try:
                    reader(path)
                    outcomes["ok"] += 1
                except ValueError:
                    outcomes["error"] += 1
    assert outcomes["error"] > 200 and outcomes["ok"] > 0
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------------------ point clouds
def test_point_cloud_round_trip(tmp_path, read_chunks):
    gen = torch.Generator().manual_seed(0)
    pc = PointCloud(torch.randn(500, 3, generator=gen), torch.rand(500, 3, generator=gen),
                    torch.rand(500, generator=gen) * 5 + 1)
    pc.colors[:3] = torch.tensor([[0.0, 1.0, 0.5], [1 / 255, 254.6 / 255, 0.99], [0.002, 0.998, 0.25]])
    write_point_cloud_ply(tmp_path / "pc.ply", pc)
    ply = plyfile.PlyData.read(str(tmp_path / "pc.ply"))
    assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "red", "green", "blue", "confidence"]
    assert ply["vertex"].data.dtype["red"] == np.uint8 and ply["vertex"].data.dtype["x"] == np.dtype("<f4")
    want = np.floor(pc.colors.double().numpy() * 255 + 0.5)
    np.testing.assert_array_equal(ply["vertex"].data["red"], want[:, 0])
    assert ply["vertex"].data["red"][0] == 0 and ply["vertex"].data["green"][:2].tolist() == [255, 255]
    back = read_point_cloud_ply(tmp_path / "pc.ply")
    assert torch.equal(back.points, pc.points) and torch.equal(back.confidence, pc.confidence)
    assert (back.colors - pc.colors).abs().max() <= 0.5 / 255 + 1e-7
    write_point_cloud_ply(tmp_path / "again.ply", back)
    assert (tmp_path / "again.ply").read_bytes() == (tmp_path / "pc.ply").read_bytes()

    no_conf = PointCloud(pc.points, pc.colors)
    write_point_cloud_ply(tmp_path / "nc.ply", no_conf)
    assert read_point_cloud_ply(tmp_path / "nc.ply").confidence is None
    assert [p.name for p in plyfile.PlyData.read(str(tmp_path / "nc.ply"))["vertex"].properties][-1] == "blue"

    write_point_cloud_ply(tmp_path / "empty.ply", PointCloud(torch.zeros(0, 3), torch.zeros(0, 3)))
    assert len(read_point_cloud_ply(tmp_path / "empty.ply")) == 0


@_PLYFILE_ASCII_WARNING
@pytest.mark.parametrize("color_type,scale", [("f4", 1.0), ("f8", 255.0), ("u1", 255.0), ("u2", 65535.0)])
def test_point_cloud_from_other_tools(tmp_path, color_type, scale):
    rng = np.random.default_rng(3)
    n = 64
    arr = np.empty(n, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("nx", "f4"),
                             ("red", color_type), ("green", color_type), ("blue", color_type)])
    xyz = rng.normal(size=(n, 3))
    rgb = rng.random((n, 3))
    rgb[0] = 1.0  # one full-intensity value so 0..255 floats are recognised
    for j, a in enumerate("xyz"):
        arr[a] = xyz[:, j]
    for j, c in enumerate(("red", "green", "blue")):
        arr[c] = np.round(rgb[:, j] * scale) if color_type[0] == "u" else rgb[:, j] * scale
    for text in (True, False):
        plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=text).write(str(tmp_path / "o.ply"))
        pc = read_point_cloud_ply(tmp_path / "o.ply")
        np.testing.assert_array_equal(pc.points.numpy(), xyz.astype(np.float32))
        tol = 0.5 / scale + 1e-6 if color_type[0] == "u" else 1e-6
        assert np.abs(pc.colors.numpy() - rgb).max() <= tol
        assert pc.confidence is None


def test_point_cloud_without_colours(tmp_path):
    arr = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("confidence", "f4")])
    arr["confidence"] = [1, 2, 3, 4, 5]
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "nocol.ply"))
    pc = read_point_cloud_ply(tmp_path / "nocol.ply")
    assert torch.all(pc.colors == 0.5) and pc.confidence.tolist() == [1, 2, 3, 4, 5]
    assert torch.all(read_point_cloud_ply(tmp_path / "nocol.ply", default_color=1.0).colors == 1.0)
    # a 3DGS PLY read as a point cloud: centres with their DC colours
    g = make_gaussians(30, 2)
    write_gaussians_ply(tmp_path / "g.ply", g)
    pc = read_point_cloud_ply(tmp_path / "g.ply")
    assert torch.equal(pc.points, g.means)
    assert (pc.colors - (g.sh[:, 0] * SH_C0 + 0.5).clamp(0, 1)).abs().max() < 1e-6


def test_point_cloud_errors(tmp_path):
    lines = ["ply", "format ascii 1.0", "element vertex 1", "property float x", "property float y", "end_header", "1 2"]
    with pytest.raises(ValueError, match="lacks the coordinates z"):
        read_point_cloud_ply(_header_file(tmp_path, lines))
    lines = ["ply", "format ascii 1.0", "element vertex 1", "property float x", "property float y", "property float z",
             "end_header", "1 nan 2"]
    with pytest.raises(ValueError, match="'y' holds a NaN"):
        read_point_cloud_ply(_header_file(tmp_path, lines))
    bad = PointCloud(torch.tensor([[0.0, float("nan"), 0.0]]), torch.zeros(1, 3), validate=False)
    with pytest.raises(ValueError, match="NaN"):
        write_point_cloud_ply(tmp_path / "x.ply", bad)
    assert not (tmp_path / "x.ply").exists()
