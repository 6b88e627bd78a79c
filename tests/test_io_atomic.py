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


_KILLED_WRITER = """
import os, signal, sys, torch
import vist3a.io.atomic as atomic_mod
import vist3a.io.ply as ply_mod
from vist3a import Gaussians

real_open, writes = open, []

class KilledAfterTwoBlocks:
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        writes.append(len(data))
        if len(writes) == 3:
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer or `kill -9` does mid-write
        return self.fh.write(data)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()

atomic_mod.open = lambda path, mode="r", *a, **k: (KilledAfterTwoBlocks(real_open(path, mode, *a, **k))
                                                   if "w" in mode else real_open(path, mode, *a, **k))
ply_mod._WRITE_CHUNK_ROWS = 100
n = 1000
ply_mod.write_gaussians_ply(sys.argv[1], Gaussians(torch.zeros(n, 3), torch.ones(n, 3), torch.tensor([[1.0, 0, 0, 0]])
                                                   .repeat(n, 1), torch.full((n,), 0.5), torch.zeros(n, 1, 3)))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_write_leaves_a_recognisable_temp_that_a_later_write_removes(tmp_path):
    """A write killed outright (SIGKILL) cannot clean up: it leaves its hidden temporary file, recognisably ours,
    and the target untouched. The next write into that folder removes it once it is stale -- and nothing else: not
    a fresh one, not one whose writer still runs, not files of other names, links or folders."""
    import signal
    import subprocess
    import time

    from conftest import REPO_ROOT

    target = tmp_path / "scene.ply"
    target.write_bytes(OLD)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env, capture_output=True,
                         check=False, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    assert target.read_bytes() == OLD
    left = [n for n in listing(tmp_path) if n != "scene.ply"]
    assert len(left) == 1 and left[0].startswith(".scene.ply.") and left[0].endswith(atomic_mod.TEMP_SUFFIX)
    stale = tmp_path / left[0]
    assert stale.stat().st_size > 0  # the header and two blocks reached it
    old = time.time() - 2 * atomic_mod.STALE_AFTER_S
    os.utime(stale, (old, old))
    host = atomic_mod._host_tag()
    keep = {  # none of these may be touched
        "fresh": f".other.ply.{host}-999999-abcdefgh{atomic_mod.TEMP_SUFFIX}",  # young: maybe still being written
        "alive": f".mine.ply.{host}-{os.getpid()}-abcdefgh{atomic_mod.TEMP_SUFFIX}",  # its writer (us) still runs
        "foreign": ".scene.ply.abcdefgh.tmp",  # another tool's temporary file
        "user": "notes.vist3a.tmp",  # not hidden: not ours
    }
    for key, name in keep.items():
        (tmp_path / name).write_bytes(b"keep")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    link = tmp_path / f".link.ply.{host}-999999-abcdefgh{atomic_mod.TEMP_SUFFIX}"
    link.symlink_to(tmp_path / "scene.ply")
    os.utime(link, (old, old), follow_symlinks=False)
    folder = tmp_path / f".dir.ply.{host}-999999-abcdefgh{atomic_mod.TEMP_SUFFIX}"
    folder.mkdir()
    os.utime(folder, (old, old))
    write_gaussians_ply(tmp_path / "next.ply", make_gaussians(5))  # a later write into the same folder
    assert not stale.exists()
    assert sorted(listing(tmp_path)) == sorted(["scene.ply", "next.ply", link.name, folder.name, *keep.values()])
    assert target.read_bytes() == OLD


def test_write_failures_name_the_destination_not_the_temp_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "scene.ply"
    target.write_bytes(OLD)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".scene.ply.x.vist3a.tmp"))

    monkeypatch.setattr(atomic_mod.os, "fsync", full)
    with pytest.raises(OSError, match="no space left") as info:
        write_gaussians_ply(target, make_gaussians(10))
    assert str(target) in str(info.value) and ".tmp" not in str(info.value) and info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == OLD and listing(tmp_path) == ["scene.ply"]
