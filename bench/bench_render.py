"""Benchmark our PyTorch rasteriser (``vist3a.render``, what ``vist3a render`` and the pack's previews use) against
what a ComfyUI user would pick instead: ComfyUI core's RenderSplat (``comfy_extras/nodes_gaussian_splat.py``, 0.2x),
on the same random scenes, CPU, interleaved repeats, min / median times and ratios.

ComfyUI's renderer is imported from ``--comfyui-dir`` / ``$COMFYUI_DIR`` and called as it is (its module-level
``_render_gaussian``, the function RenderSplat.execute runs per frame; nothing is copied). Run the script with a
Python that can import that ComfyUI (its own virtual environment, with this pack's requirements), e.g.

    COMFYUI_DIR=../comfyui PYTHONPATH=. ../comfyvenv/bin/python bench/bench_render.py
    python bench/bench_render.py --sizes 10000:128 --reference     # no ComfyUI: ours only (+ dense reference check)

Scenes: N Gaussians in a ball of radius ~1 seen from 3 units, SH degree 0 (RenderSplat renders base colour only).
The two renderers do not draw the same image by design (RenderSplat blends in linear light and weights each splat by
its peak along the pixel ray; ours is gsplat's classic 3DGS), so only times are compared. ``--reference`` also runs
our dense (untiled) reference once at the first size and prints the max difference (a correctness check).
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


def comfy_renderer(comfyui_dir: str | None):
    """ComfyUI core's splat renderer function, or (None, reason)."""
    import os
    import sys

    comfyui_dir = comfyui_dir or os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        return None, "no --comfyui-dir / COMFYUI_DIR given"
    sys.path.insert(0, os.path.abspath(comfyui_dir))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # the CPU comparison (as `main.py --cpu`), read when model_management loads
        from comfy_extras import nodes_gaussian_splat as ns
    except Exception as err:  # noqa: BLE001 -- any import failure: report it and time ours only
        return None, (f"cannot import comfy_extras.nodes_gaussian_splat from {comfyui_dir} ({type(err).__name__}: "
                      f"{err}); run with ComfyUI's own Python (0.2x, which has the core splat nodes)")
    if not hasattr(ns, "_render_gaussian"):
        return None, f"{comfyui_dir}: this ComfyUI's nodes_gaussian_splat has no _render_gaussian (other version)"
    return ns, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10000:128", "100000:512", "500000:512"],
                        help="N:pixels pairs (default 10000:128 100000:512 500000:512)")
    parser.add_argument("--degree", type=int, default=0, help="SH degree of the scenes (default 0, see above)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--comfyui-dir", default=None, help="ComfyUI folder (default $COMFYUI_DIR)")
    parser.add_argument("--reference", action="store_true", help="dense reference check at the first size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    ns, why = comfy_renderer(args.comfyui_dir)
    if ns is None:
        print(f"ComfyUI RenderSplat comparison skipped: {why}. Timing ours only.")
    print(f"CPU, {torch.get_num_threads()} torch thread(s), SH degree {args.degree}, {args.repeats} interleaved rounds")
    print(f"{'N':>8} {'px':>5} {'ours min/med s':>16} {'ComfyUI min/med s':>19} {'ratio min':>10} {'ratio med':>10}")
    for spec in args.sizes:
        n, size = (int(x) for x in spec.split(":"))
        scene = random_scene(n, args.degree, "cpu")
        cams = Cameras.orbit(1, radius=3.0, fov_deg=50.0, width=size, height=size)

        def ours(scene=scene, cams=cams):
            with torch.no_grad():
                return render(scene, cams, backend="torch").rgb

        sides = {"ours": ours}
        if ns is not None:
            rgb = (scene.sh[:, 0, :] * 0.28209479177387814 + 0.5).clamp(0, 1)
            cam = ns._lookat_camera_info((0.0, 0.0, 3.0), (0.0, 0.0, 0.0), 50.0, torch.device("cpu"))

            def comfy(scene=scene, rgb=rgb, cam=cam, size=size):
                return ns._render_gaussian(scene.means, rgb, scene.opacities, scene.scales, scene.rotations, size,
                                           size, 1.0, (1.0, 1.0, 1.0), cam)[0]

            sides["comfyui"] = comfy
        for fn in sides.values():  # warm-up
            fn()
        times = {k: [] for k in sides}
        for _ in range(args.repeats):
            for k, fn in sides.items():  # interleaved
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = statistics.median
        o = times["ours"]
        line = f"{n:>8} {size:>5} {min(o):7.3f}/{med(o):7.3f}"
        if "comfyui" in times:
            c = times["comfyui"]
            line += f" {min(c):9.3f}/{med(c):8.3f} {min(c) / min(o):9.2f}x {med(c) / med(o):9.2f}x"
        print(line, flush=True)
    if ns is not None:
        print("ratio = ComfyUI RenderSplat time / ours (> 1: ours faster)")
    if args.reference:
        n, size = (int(x) for x in args.sizes[0].split(":"))
        scene = random_scene(n, args.degree, "cpu")
        cams = Cameras.orbit(1, radius=3.0, fov_deg=50.0, width=size, height=size)
        with torch.no_grad():
            out, ref = render(scene, cams, backend="torch"), render_reference(scene, cams)
        diffs = ", ".join(f"{k} {float((getattr(out, k) - getattr(ref, k)).abs().max()):.1e}"
                          for k in ("rgb", "alpha", "depth"))
        print(f"dense reference check ({n} Gaussians, {size}px): max |diff| {diffs}")


if __name__ == "__main__":
    main()
