"""Benchmark: .spz write + read (vist3a.io.spz) against the 3DGS .ply of the same scene, in the same run.

    python bench/bench_spz.py                 # 1M Gaussians, SH degree 3
    python bench/bench_spz.py -n 200000 --degree 0 --repeats 3

Prints the best of ``--repeats`` write and read times of both formats, the file sizes and the size ratio, and the
largest round-trip errors of the .spz (positions, log-scales, opacities, SH). The scene is smooth (positions on a
surface, colours and SH varying slowly with position), as real scenes are, so the gzip ratio is representative;
random noise compresses far less.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vist3a import Gaussians  # noqa: E402
from vist3a.io import read_gaussians_ply, read_spz, write_gaussians_ply, write_spz  # noqa: E402


def make_scene(n: int, degree: int) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.rand(n, generator=gen) * 6.283, torch.rand(n, generator=gen) * 3.1416
    means = torch.stack([torch.cos(u) * torch.sin(v), torch.sin(u) * torch.sin(v), torch.cos(v)], -1) * 2.0
    means += 0.01 * torch.randn(n, 3, generator=gen)
    k = (degree + 1) ** 2
    sh = torch.zeros(n, k, 3)
    sh[:, 0] = torch.stack([torch.sin(3 * u), torch.cos(2 * v), torch.sin(u + v)], -1)
    if k > 1:
        sh[:, 1:] = 0.2 * torch.sin(means[:, :1, None] * torch.arange(1, k)[None, :, None])
    return Gaussians(means, torch.exp(torch.randn(n, 3, generator=gen) * 0.3 - 4.5),
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1),
                     torch.rand(n, generator=gen), sh)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    scene = make_scene(args.n, args.degree)
    with tempfile.TemporaryDirectory() as tmp:
        ply, spz = os.path.join(tmp, "s.ply"), os.path.join(tmp, "s.spz")
        w_ply = best(lambda: write_gaussians_ply(ply, scene), args.repeats)
        w_spz = best(lambda: write_spz(spz, scene), args.repeats)
        r_ply = best(lambda: read_gaussians_ply(ply), args.repeats)
        r_spz = best(lambda: read_spz(spz), args.repeats)
        s_ply, s_spz = os.path.getsize(ply), os.path.getsize(spz)
        back = read_spz(spz)
    print(f"{args.n} Gaussians, SH degree {args.degree}")
    print(f".ply  write {w_ply:6.2f} s  read {r_ply:6.2f} s  {s_ply / 1e6:8.1f} MB")
    print(f".spz  write {w_spz:6.2f} s  read {r_spz:6.2f} s  {s_spz / 1e6:8.1f} MB  ({s_ply / s_spz:.1f}x smaller)")
    print("spz round trip, max |error|: "
          f"means {(back.means - scene.means).abs().max():.2e}, "
          f"log-scales {(back.scales.log() - scene.scales.log()).abs().max():.3f}, "
          f"opacities {(back.opacities - scene.opacities).abs().max():.4f}, "
          f"SH {(back.sh - scene.sh.clamp(-1, 127 / 128)).abs()[:, 1:].max() if args.degree else 0:.3f}")


if __name__ == "__main__":
    main()
