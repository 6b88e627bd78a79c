"""Atomic writes: a failed or interrupted write never damages the existing file and leaves no temporary files."""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

import vist3a.io.atomic as atomic_mod
import vist3a.io.ply as ply_mod
from vist3a import Gaussians, PointCloud
from vist3a.io import (
    atomic_path,
    atomic_write,
    read_gaussians_ply,
    write_gaussians_ply,
    write_point_cloud_ply,
    write_splat,
)
from vist3a.rotations import normalize_quat

OLD = b"old contents that must survive\n" * 100


def make_gaussians(n: int, degree: int = 1) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        scales=torch.rand(n, 3, generator=gen) + 0.01,
        rotations=normalize_quat(torch.randn(n, 4, generator=gen)),
        opacities=torch.rand(n, generator=gen),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen),
    )


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_success_leaves_only_the_final_file(tmp_path, umask_022):
    target = tmp_path / "out.bin"
    with atomic_write(target) as fh:
        fh.write(b"hello")
        assert not target.exists()  # nothing visible until the block completes
        temps = [n for n in listing(tmp_path) if n.startswith(".out.bin.") and n.endswith(".tmp")]
        assert len(temps) == 1
    assert target.read_bytes() == b"hello"
    assert listing(tmp_path) == ["out.bin"]
    if sys.platform != "win32":
        assert stat.S_IMODE(target.stat().st_mode) == 0o644  # 0o666 & ~umask, not mkstemp's 0o600
    with atomic_write(target, "w") as fh:
        fh.write("text é\n")
    assert target.read_text(encoding="utf-8") == "text é\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_replacing_keeps_the_old_permissions(tmp_path, umask_022):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    os.chmod(target, 0o600)
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_in_block_keeps_old_file(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    with pytest.raises(type(error)), atomic_write(target) as fh:
        fh.write(b"partial new data" * 1000)
        raise error
    assert target.read_bytes() == OLD
    assert listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("victim", ["fsync", "replace", "chmod"])
def test_os_failures_keep_old_file(tmp_path, monkeypatch, victim):
    target = tmp_path / "scene.ply"
    target.write_bytes(OLD)

    def fail(*args, **kwargs):
        raise OSError(f"simulated {victim} failure")

    monkeypatch.setattr(atomic_mod.os, victim, fail)
    with pytest.raises(OSError, match=f"simulated {victim} failure"):
        write_gaussians_ply(target, make_gaussians(100))
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert listing(tmp_path) == ["scene.ply"]


def test_writer_failing_midway_keeps_old_file(tmp_path, monkeypatch):
    """Bad values found in the third block, after two blocks were already written to the temporary file."""
    monkeypatch.setattr(ply_mod, "_WRITE_CHUNK_ROWS", 10)
    good = make_gaussians(30)
    target = tmp_path / "scene.ply"
    write_gaussians_ply(target, good)
    before = target.read_bytes()
    scales = good.scales.clone()
    scales[25, 1] = float("nan")
    bad = Gaussians(good.means, scales, good.rotations, good.opacities, good.sh, validate=False)
    written = []
    def spying_open(*args, **kwargs):
        fh = open(*args, **kwargs)
        original = fh.write
        fh.write = lambda data: written.append(len(memoryview(data).cast("B"))) or original(data)
        return fh

    monkeypatch.setattr(atomic_mod, "open", spying_open, raising=False)
    with pytest.raises(ValueError, match="cannot write property 'scale_1'.*nothing was written"):
        write_gaussians_ply(target, bad)
    assert len(written) == 3  # header + two blocks reached the temporary file before the failure
    assert target.read_bytes() == before
    assert listing(tmp_path) == ["scene.ply"]
    assert torch.equal(read_gaussians_ply(target).means, good.means)


def test_every_writer_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.write_bytes(OLD)
    monkeypatch.setattr(atomic_mod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no rename")))
    g = make_gaussians(5)
    for write in (lambda: write_splat(target, g), lambda: write_gaussians_ply(target, g),
                  lambda: write_point_cloud_ply(target, PointCloud(torch.zeros(2, 3), torch.zeros(2, 3)))):
        with pytest.raises(OSError, match="no rename"):
            write()
        assert target.read_bytes() == OLD
        assert listing(tmp_path) == ["out"]


def test_bad_destinations(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*missing.* does not exist"):
        write_gaussians_ply(tmp_path / "missing" / "scene.ply", make_gaussians(3))
    assert listing(tmp_path) == []
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="existing folder"), atomic_write(tmp_path / "adir") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="mode must be"), atomic_write(tmp_path / "x", mode="ab"):
        pass
    assert listing(tmp_path) == ["adir"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_is_replaced_not_followed(tmp_path):
    """A link in the chosen folder pointing elsewhere must not let a write escape that folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    real = outside / "real.bin"
    real.write_bytes(OLD)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    link = chosen / "link.bin"
    link.symlink_to(real)
    with atomic_write(link) as fh:
        fh.write(b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert real.read_bytes() == OLD


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(OLD)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == OLD and listing(tmp_path) == ["weights.bin"]
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert target.read_bytes() == b"new" and listing(tmp_path) == ["weights.bin"]
