"""Benchmark: vist3a.io 3DGS PLY write + read against plyfile doing the same work, in the same run.

    python bench/bench_ply.py            # 1M Gaussians, SH degree 3
    python bench/bench_ply.py -n 200000 --degree 0 --repeats 5

Both sides start from the same ``Gaussians`` and end with the same tensors: the plyfile side converts to the file
convention (log-scales, logit opacities, channel-major f_rest) into a structured array, writes it with
``PlyElement.describe`` + ``PlyData.write``, then reads with ``PlyData.read``, extracts the fields into arrays and
converts back (sigmoid, exp, quaternion normalisation) into tensors. Reported times are the best of ``--repeats``
interleaved rounds. The plyfile side is vectorised per property (INRIA 3DGS's own ``save_ply`` fills the array with a
per-row Python loop and is far slower); it does not fsync, so the vist3a write is also timed without its fsync.
"""

from __future__ import annotations

import argparse
import os
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


def plyfile_write(path: str, g: Gaussians) -> None:
    n = len(g)
    names = gaussian_ply_property_names(g.sh_degree)
    arr = np.empty(n, dtype=[(name, "<f4") for name in names])
    means, sh = g.means.numpy(), g.sh.numpy()
    for j, axis in enumerate("xyz"):
        arr[axis] = means[:, j]
    for name in ("nx", "ny", "nz"):
        arr[name] = 0.0
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    for c in range(3):
        arr[f"f_dc_{c}"] = sh[:, 0, c]
    for i in range(rest.shape[1]):
        arr[f"f_rest_{i}"] = rest[:, i]
    p = np.clip(g.opacities.double().numpy(), OPACITY_EPS, 1 - OPACITY_EPS)
    arr["opacity"] = np.log(p) - np.log1p(-p)
    log_scales = np.log(g.scales.double().numpy())
    quats = g.rotations.numpy()
    for i in range(3):
        arr[f"scale_{i}"] = log_scales[:, i]
    for i in range(4):
        arr[f"rot_{i}"] = quats[:, i]
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(path)


def plyfile_read(path: str) -> Gaussians:
    v = plyfile.PlyData.read(path)["vertex"]
    names = [p.name for p in v.properties]
    n_rest = sum(name.startswith("f_rest_") for name in names)
    k = 1 + n_rest // 3
    data = v.data
    means = np.stack([data["x"], data["y"], data["z"]], axis=1)
    dc = np.stack([data[f"f_dc_{c}"] for c in range(3)], axis=1)
    rest = np.stack([data[f"f_rest_{i}"] for i in range(n_rest)], axis=1).reshape(-1, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    opacities = 1.0 / (1.0 + np.exp(-data["opacity"].astype(np.float64)))
    scales = np.exp(np.stack([data[f"scale_{i}"] for i in range(3)], axis=1).astype(np.float64))
    quats = np.stack([data[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float64)
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
        best = {name: float("inf") for name in ops}
        results = {}
        for _ in range(args.repeats):  # interleaved rounds, so background load hits both sides alike
            for name, fn in ops.items():
                start = time.perf_counter()
                results[name] = fn()
                best[name] = min(best[name], time.perf_counter() - start)
        with open(ours_path, "rb") as a, open(theirs_path, "rb") as b:
            same_file = a.read() == b.read()
        size_mb = os.path.getsize(ours_path) / 1e6

    h_ours, h_ply = results["read"], results["plyfile_read"]
    assert torch.equal(h_ours.sh, h_ply.sh) and torch.equal(h_ours.means, h_ply.means)
    print(f"{args.n} Gaussians, SH degree {args.degree}, file {size_mb:.1f} MB, best of {args.repeats} interleaved "
          f"rounds; both writers produce identical files: {same_file}")
    print(f"{'':24s}{'vist3a':>10s}{'plyfile':>10s}{'speed-up':>10s}")
    rows = (
        ("write (atomic + fsync)", best["write"], best["plyfile_write"]),
        ("write (without fsync)", best["write_nofsync"], best["plyfile_write"]),
        ("read", best["read"], best["plyfile_read"]),
        ("write + read", best["write"] + best["read"], best["plyfile_write"] + best["plyfile_read"]),
    )
    for label, ours, theirs in rows:
        print(f"{label:24s}{ours:9.3f}s{theirs:9.3f}s{theirs / ours:9.1f}x")


if __name__ == "__main__":
    main()
