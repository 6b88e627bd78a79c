"""antimatter15 .splat files and the extension-dispatching save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vist3a import Gaussians
from vist3a.io import (
    load_gaussians,
    read_splat,
    save_gaussians,
    write_gaussians_ply,
    write_splat,
)
from vist3a.io.splat import SPLAT_DTYPE
from vist3a.rotations import normalize_quat
from vist3a.sh import SH_C0


def make_gaussians(n: int, degree: int = 0, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 3,
        scales=torch.exp(torch.randn(n, 3, generator=gen) - 3),
        rotations=normalize_quat(torch.randn(n, 4, generator=gen)),
        opacities=torch.rand(n, generator=gen),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.6,
    )


def records(path) -> np.ndarray:
    return np.fromfile(path, dtype=SPLAT_DTYPE)


def expected_records(g: Gaussians) -> np.ndarray:
    """The records in scene order, computed independently with the documented quantisation (float64, clip, floor)."""
    rec = np.zeros(len(g), dtype=SPLAT_DTYPE)
    rec["position"] = g.means.numpy()
    rec["scale"] = g.scales.numpy()
    rgb = (0.5 + SH_C0 * g.sh[:, 0].double().numpy()) * 255
    rec["rgba"][:, :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    rec["rgba"][:, 3] = np.clip(g.opacities.double().numpy() * 255, 0, 255).astype(np.uint8)
    q = g.rotations.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rec["rot"] = np.clip(q * 128 + 128, 0, 255).astype(np.uint8)
    return rec


def sort_records(rec: np.ndarray) -> np.ndarray:
    """Records in a canonical order (by their bytes), for order-independent comparison."""
    raw = rec.view(np.uint8).reshape(-1, 32)
    return rec[np.lexsort(raw.T[::-1])]


def test_layout_values_and_importance_order(tmp_path):
    g = make_gaussians(400, degree=2)
    write_splat(tmp_path / "a.splat", g)
    assert (tmp_path / "a.splat").stat().st_size == 400 * 32
    rec = records(tmp_path / "a.splat")
    want = expected_records(g)
    np.testing.assert_array_equal(sort_records(rec).view(np.uint8), sort_records(want).view(np.uint8))
    key = np.prod(rec["scale"].astype(np.float64), axis=1) * rec["rgba"][:, 3]
    assert np.all(np.diff(key) <= 0)  # largest volume x opacity first
    assert key[0] > key[-1]
    write_splat(tmp_path / "b.splat", g, order="none")
    np.testing.assert_array_equal(records(tmp_path / "b.splat").view(np.uint8), want.view(np.uint8))


def test_quantisation_edges(tmp_path):
    g = make_gaussians(4)
    g.opacities[:] = torch.tensor([0.0, 1.0, 0.5, 0.999])
    g.sh[:, 0] = torch.tensor([[-10.0, 10.0, 0.0]] * 4)  # rgb far outside [0, 1] is clipped
    g.rotations[:] = torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0.5, 0.5, -0.5, 0.5], [0, 0, 0, 1.0]])
    write_splat(tmp_path / "e.splat", g, order="none")
    rec = records(tmp_path / "e.splat")
    assert rec["rgba"][:, 3].tolist() == [0, 255, 127, 254]
    assert rec["rgba"][:, :3].tolist() == [[0, 255, 127]] * 4
    assert rec["rot"].tolist() == [[255, 128, 128, 128], [128, 0, 128, 128], [192, 192, 64, 192], [128, 128, 128, 255]]


def test_round_trip_and_byte_identical_rewrite(tmp_path):
    g = make_gaussians(2000, degree=1, seed=4)
    write_splat(tmp_path / "a.splat", g)
    h = read_splat(tmp_path / "a.splat")
    assert h.sh_degree == 0 and len(h) == len(g)
    order = np.lexsort(g.means.numpy().T)
    back = np.lexsort(h.means.numpy().T)
    assert torch.equal(h.means[back], g.means[order])
    assert torch.equal(h.scales[back], g.scales[order])
    # truncation: stored colour and opacity are at most one 8-bit step below the originals, never above
    err = (g.sh[order, 0] * SH_C0 + 0.5).clamp(0, 1) - (h.sh[back, 0] * SH_C0 + 0.5)
    assert err.min() >= -1e-6 and err.max() < 1 / 255 + 1e-6
    err = g.opacities[order] - h.opacities[back]
    assert err.min() >= -1e-6 and err.max() < 1 / 255 + 1e-6
    # quaternions come back unit length and inside the original's quantisation cell (within 1/128 per component)
    assert (h.rotations.norm(dim=-1) - 1).abs().max() < 1e-6
    assert (h.rotations[back] - g.rotations[order]).abs().max() < 1 / 128

    write_splat(tmp_path / "again.splat", h)
    assert (tmp_path / "again.splat").read_bytes() == (tmp_path / "a.splat").read_bytes()
    write_splat(tmp_path / "again64.splat", read_splat(tmp_path / "a.splat", dtype=torch.float64))
    assert (tmp_path / "again64.splat").read_bytes() == (tmp_path / "a.splat").read_bytes()


def test_gsplat_splat_bytes_equal(tmp_path):
    gsplat_exporter = pytest.importorskip("gsplat.exporter")
    g = make_gaussians(500, degree=3, seed=9)
    p = g.opacities.double().clamp(1e-10, 1 - 1e-10)
    data = gsplat_exporter.export_splats(
        g.means.double(), torch.log(g.scales.double()), g.rotations.double(), torch.log(p / (1 - p)),
        g.sh[:, :1].double(), g.sh[:, 1:].double(), format="splat",
    )
    write_splat(tmp_path / "morton.splat", g, order="morton")
    assert (tmp_path / "morton.splat").read_bytes() == data  # gsplat's order (Morton) and quantisation, byte for byte
    write_splat(tmp_path / "default.splat", g)
    theirs = np.frombuffer(data, dtype=SPLAT_DTYPE)
    np.testing.assert_array_equal(sort_records(records(tmp_path / "default.splat")).view(np.uint8),
                                  sort_records(theirs.copy()).view(np.uint8))


def test_empty(tmp_path):
    write_splat(tmp_path / "e.splat", make_gaussians(0))
    assert (tmp_path / "e.splat").read_bytes() == b""
    h = read_splat(tmp_path / "e.splat")
    assert len(h) == 0 and h.sh.shape == (0, 1, 3)


def test_malformed(tmp_path):
    write_splat(tmp_path / "a.splat", make_gaussians(10))
    data = (tmp_path / "a.splat").read_bytes()
    (tmp_path / "cut.splat").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="not a multiple of the 32-byte record"):
        read_splat(tmp_path / "cut.splat")
    write_gaussians_ply(tmp_path / "g.ply", make_gaussians(3))
    ply_bytes = (tmp_path / "g.ply").read_bytes()
    for extra in range(2):  # whatever its size, a PLY is recognised
        (tmp_path / "g.splat").write_bytes(ply_bytes + b"\0" * extra)
        with pytest.raises(ValueError, match="this is a PLY file, not a .splat: read it with read_gaussians_ply"):
            read_splat(tmp_path / "g.splat")
    rec = records(tmp_path / "a.splat")
    rec["position"][3, 1] = np.nan
    rec.tofile(tmp_path / "nan.splat")
    with pytest.raises(ValueError, match="NaN"):
        read_splat(tmp_path / "nan.splat")
    rec = records(tmp_path / "a.splat")
    rec["scale"][2, 0] = -1.0
    rec.tofile(tmp_path / "neg.splat")
    with pytest.raises(ValueError, match="negative scales"):
        read_splat(tmp_path / "neg.splat")
    rec = records(tmp_path / "a.splat")
    rec["scale"][2, 0] = 0.0  # a flat splat is accepted
    rec["rot"][1] = 128  # and an all-zero quaternion becomes the identity
    rec.tofile(tmp_path / "flat.splat")
    h = read_splat(tmp_path / "flat.splat")
    assert h.scales[2, 0] > 0 and (h.rotations.norm(dim=-1) - 1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="order must be"):
        write_splat(tmp_path / "x.splat", make_gaussians(2), order="random")
    bad = make_gaussians(3)
    bad = Gaussians(bad.means, bad.scales * torch.tensor([[1.0], [0.0], [1.0]]), bad.rotations, bad.opacities, bad.sh,
                    validate=False)
    with pytest.raises(ValueError, match="scales <= 0"):
        write_splat(tmp_path / "x.splat", bad)
    bad = Gaussians(bad.means, bad.scales + 1, bad.rotations, bad.opacities + 2, bad.sh, validate=False)
    with pytest.raises(ValueError, match=r"opacities outside \[0, 1\]"):
        write_splat(tmp_path / "x.splat", bad)
    huge = make_gaussians(3).to(dtype=torch.float64)
    huge.means[1, 0] = 1e300
    with pytest.raises(ValueError, match="exceed the float32 range"):
        write_splat(tmp_path / "x.splat", huge)
    assert not (tmp_path / "x.splat").exists()


def test_save_load_dispatch(tmp_path):
    g = make_gaussians(50, degree=2)
    save_gaussians(tmp_path / "s.PLY", g)
    assert (tmp_path / "s.PLY").read_bytes().startswith(b"ply\n")
    assert torch.equal(load_gaussians(tmp_path / "s.PLY").sh, g.sh)
    save_gaussians(str(tmp_path / "s.splat"), g)
    assert (tmp_path / "s.splat").stat().st_size == 50 * 32
    assert load_gaussians(tmp_path / "s.splat").sh_degree == 0
    for name in ("s.obj", "noext"):
        with pytest.raises(ValueError, match=r"unsupported file extension .*use \.ply .*, \.splat .* or \.spz"):
            save_gaussians(tmp_path / name, g)
        with pytest.raises(ValueError, match="unsupported file extension"):
            load_gaussians(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.PLY", "s.splat"]
