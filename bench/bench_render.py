"""Benchmark the tiled PyTorch rasteriser against the dense reference on one random scene.

Default: 10k random Gaussians with SH degree 3, all in view of one 128x128 camera, float32 on the CPU. Reports the
tiled renderer's forward time (with and without autograd) and forward+backward time for 16x16 (the default) and 8x8
tiles, the dense reference's forward time, the speed ratios and the max abs differences to the reference. Times are
medians (and minima) of ``--repeats`` runs after a warm-up; on a shared machine, run it when the CPU is idle.

    python bench/bench_render.py [--num 10000] [--size 128] [--repeats 5] [--tile-sizes 16 8] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from vist3a.cameras import Cameras
from vist3a.gaussians import Gaussians
from vist3a.render import render
from vist3a.render.projection import project_gaussians
from vist3a.render.reference import render_reference
from vist3a.rotations import normalize_quat

log = logging.getLogger("bench_render")


def random_scene(num: int, degree: int, device: str, seed: int = 0) -> Gaussians:
    """``num`` Gaussians in a ball of radius ~1 around the origin, a few pixels wide at 128x128 from 3 units."""
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(num, 3, generator=gen) * 0.4,
        scales=torch.exp(torch.randn(num, 3, generator=gen) * 0.3) * 0.02,
        rotations=normalize_quat(torch.randn(num, 4, generator=gen)),
        opacities=torch.rand(num, generator=gen) * 0.9 + 0.05,
        sh=torch.randn(num, (degree + 1) ** 2, 3, generator=gen) * 0.3,
    ).to(device=device)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median and minimum wall time (s) over ``repeats`` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=10_000, help="number of Gaussians")
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--degree", type=int, default=3, help="SH degree")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[16, 8], help="tile sizes to time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the (slow) dense reference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    scene = random_scene(args.num, args.degree, args.device)
    cams = Cameras.orbit(1, radius=3.0, fov_deg=50.0, width=args.size, height=args.size, device=args.device)
    proj = project_gaussians(scene.means, scene.rotations, scene.scales, scene.opacities, cams.w2c, cams.K,
                             args.size, args.size)
    radii = proj.radii[proj.visible].float()
    log.info("scene: %d Gaussians (SH degree %d), %d visible, mean box half-size %.1f px, %dx%d, %s, %d threads",
             args.num, args.degree, int(proj.visible.sum()), float(radii.mean()) if len(radii) else 0.0,
             args.size, args.size, args.device, torch.get_num_threads())

    params = [t.clone().requires_grad_(True) for t in (scene.means, scene.scales, scene.rotations,
                                                        scene.opacities, scene.sh)]
    # Warm up every configuration first: the first large allocations of a process are slow (page faults while the
    # heap grows), which would otherwise penalise whichever configuration is timed first.
    for tile_size in args.tile_sizes:
        out = render(Gaussians(*params, validate=False), cams, backend="torch", tile_size=tile_size)
        (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    tiled, tiled_times = {}, {}
    for tile_size in args.tile_sizes:
        kw = {"backend": "torch", "tile_size": tile_size}

        def forward(kw=kw):
            return render(scene, cams, **kw)

        def forward_no_grad(kw=kw):
            with torch.no_grad():
                return render(scene, cams, **kw)

        def forward_backward(kw=kw):
            for p in params:
                p.grad = None
            out = render(Gaussians(*params, validate=False), cams, **kw)
            (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
            return out

        t_fwd = timed(forward, args.repeats)[:2]
        *t_fwd_ng, tiled[tile_size] = timed(forward_no_grad, args.repeats)
        tiled_times[tile_size] = t_fwd_ng[0]
        t_fb = timed(forward_backward, args.repeats)[:2]
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
        name = f"tiled {tile_size:2d}x{tile_size:<2d}"
        log.info("%s forward (autograd on): %7.3f s (min %.3f)", name, *t_fwd)
        log.info("%s forward (no_grad):     %7.3f s (min %.3f)", name, *t_fwd_ng)
        log.info("%s forward + backward:    %7.3f s (min %.3f)   gradients finite: %s", name, *t_fb, grads_finite)
    if args.skip_reference:
        return
    start = time.perf_counter()
    with torch.no_grad():
        ref = render_reference(scene, cams)
    t_ref = time.perf_counter() - start
    log.info("dense reference forward:         %7.3f s   (one run, no_grad)", t_ref)
    for tile_size, out in tiled.items():
        diffs = ", ".join(f"{n} {float((getattr(out, n) - getattr(ref, n)).abs().max()):.1e}"
                          for n in ("rgb", "alpha", "depth"))
        log.info("tiled %2dx%-2d: %5.1fx faster than the reference (no_grad forward, median); max |diff| %s",
                 tile_size, tile_size, t_ref / tiled_times[tile_size], diffs)


if __name__ == "__main__":
    main()
