"""Benchmark: vist3a.io 3DGS PLY write + read against plyfile doing the same work, in the same run.

    python bench/bench_ply.py            # 1M Gaussians, SH degree 3
    python bench/bench_ply.py -n 200000 --degree 0 --repeats 5

Both sides start from the same ``Gaussians`` and end with the same tensors: the plyfile side converts to the file
convention (log-scales, logit opacities, channel-major f_rest) into a structured array, writes it with
``PlyElement.describe`` + ``PlyData.write``, then reads with ``PlyData.read``, extracts the fields into arrays and
converts back (sigmoid, exp, quaternion normalisation) into tensors. Reported: min and median of ``--repeats``
interleaved rounds and the ratios plyfile / vist3a. The plyfile side uses its fastest path: one (N, F) float32 matrix
viewed as the structured array for writing, and the read structured array viewed back as a matrix (no per-field
copies; INRIA 3DGS's own ``save_ply`` is slower); it does not fsync, so the vist3a write is also timed without its
fsync.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import plyfile
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vist3a import Gaussians
from vist3a.io import (
    OPACITY_EPS,
    gaussian_ply_property_names,
    read_gaussians_ply,
    write_gaussians_ply,
)
from vist3a.rotations import normalize_quat


def make_scene(n: int, degree: int) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        scales=torch.exp(torch.randn(n, 3, generator=gen) - 4),
        rotations=normalize_quat(torch.randn(n, 4, generator=gen)),
        opacities=torch.rand(n, generator=gen),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.3,
    )


def _file_columns(g: Gaussians) -> np.ndarray:
    """The file convention as one (N, F) float32 matrix, columns in the 3DGS property order."""
    n = len(g)
    sh = g.sh.numpy()
    p = np.clip(g.opacities.double().numpy(), OPACITY_EPS, 1 - OPACITY_EPS)
    cols = [g.means.numpy(), np.zeros((n, 3), np.float32), sh[:, 0, :],
            sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1), (np.log(p) - np.log1p(-p))[:, None],
            np.log(g.scales.double().numpy()), g.rotations.numpy()]
    return np.concatenate([c.astype(np.float32, copy=False) for c in cols], axis=1)


def plyfile_write(path: str, g: Gaussians) -> None:
    """plyfile's fastest write: one (N, F) float32 matrix viewed as the structured vertex array (no per-field
    copies), ``PlyElement.describe`` + ``PlyData.write``."""
    names = gaussian_ply_property_names(g.sh_degree)
    mat = np.ascontiguousarray(_file_columns(g))
    arr = mat.view(np.dtype([(name, "<f4") for name in names])).reshape(-1)
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(path)


def plyfile_read(path: str) -> Gaussians:
    """plyfile's fastest read: ``PlyData.read`` then the structured array viewed as an (N, F) float32 matrix (all
    properties are float32), columns sliced by position."""
    v = plyfile.PlyData.read(path)["vertex"]
    names = [p.name for p in v.properties]
    n_rest = sum(name.startswith("f_rest_") for name in names)
    k = 1 + n_rest // 3
    data = v.data
    mat = data.view(np.float32).reshape(len(data), len(names))
    col = {name: i for i, name in enumerate(names)}
    x, dc0, r0 = col["x"], col["f_dc_0"], col["f_rest_0"] if n_rest else None
    means = mat[:, x:x + 3]
    dc = mat[:, dc0:dc0 + 3]
    rest = (mat[:, r0:r0 + n_rest] if n_rest else np.zeros((len(data), 0), np.float32))
    rest = rest.reshape(-1, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    opacities = 1.0 / (1.0 + np.exp(-mat[:, col["opacity"]].astype(np.float64)))
    s0, q0 = col["scale_0"], col["rot_0"]
    scales = np.exp(mat[:, s0:s0 + 3].astype(np.float64))
    quats = mat[:, q0:q0 + 4].astype(np.float64)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    # validate=False like read_gaussians_ply, which checks the file's values itself instead
    return Gaussians(f32(means), f32(scales), f32(quats), f32(opacities), f32(sh), validate=False)


class _NoFsync:
    """Context in which os.fsync is a no-op: the vist3a write without its durability cost (plyfile never fsyncs)."""

    def __enter__(self):
        self._fsync, os.fsync = os.fsync, lambda fd: None

    def __exit__(self, *exc):
        os.fsync = self._fsync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="number of Gaussians (default 1M)")
    parser.add_argument("--degree", type=int, default=3, help="SH degree (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each operation's best round is reported")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temporary folder)")
    args = parser.parse_args()

    g = make_scene(args.n, args.degree)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ours_path, theirs_path = os.path.join(tmp, "ours.ply"), os.path.join(tmp, "plyfile.ply")

        def write_no_fsync():
            with _NoFsync():
                write_gaussians_ply(ours_path, g)

        ops = {
            "write": lambda: write_gaussians_ply(ours_path, g),
            "write_nofsync": write_no_fsync,
            "plyfile_write": lambda: plyfile_write(theirs_path, g),
            "read": lambda: read_gaussians_ply(ours_path),
            "plyfile_read": lambda: plyfile_read(theirs_path),
        }
        times = {name: [] for name in ops}
        results = {}
        for _ in range(args.repeats):  # interleaved rounds, so background load hits both sides alike
            for name, fn in ops.items():
                start = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - start)
        with open(ours_path, "rb") as a, open(theirs_path, "rb") as b:
            same_file = a.read() == b.read()
        size_mb = os.path.getsize(ours_path) / 1e6

    h_ours, h_ply = results["read"], results["plyfile_read"]
    assert torch.equal(h_ours.sh, h_ply.sh) and torch.equal(h_ours.means, h_ply.means)
    print(f"{args.n} Gaussians, SH degree {args.degree}, file {size_mb:.1f} MB, {args.repeats} interleaved rounds; "
          f"both writers produce identical files: {same_file}")
    print(f"{'':24s}{'vist3a min/med':>18s}{'plyfile min/med':>18s}{'ratio min':>11s}{'ratio med':>11s}")
    both = lambda a, b: [x + y for x, y in zip(times[a], times[b])]
    rows = (
        ("write (atomic + fsync)", times["write"], times["plyfile_write"]),
        ("write (without fsync)", times["write_nofsync"], times["plyfile_write"]),
        ("read", times["read"], times["plyfile_read"]),
        ("write + read", both("write", "read"), both("plyfile_write", "plyfile_read")),
    )
    med = statistics.median
    for label, ours, theirs in rows:
        print(f"{label:24s}{min(ours):8.3f}/{med(ours):7.3f}s{min(theirs):8.3f}/{med(theirs):7.3f}s"
              f"{min(theirs) / min(ours):10.2f}x{med(theirs) / med(ours):10.2f}x")
    print("ratio = plyfile time / vist3a time (> 1: vist3a faster)")


if __name__ == "__main__":
    main()
