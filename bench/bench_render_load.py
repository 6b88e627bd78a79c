"""Our PyTorch rasteriser on a busy machine: torch intra-op threads x ``chunk_elements``, each timed with the CPU
otherwise idle and while competing CPU-burning processes run, in interleaved rounds (min / median and ratios).

Why: on a 2-core machine the render time of one view swung from 0.4 s to 11 s with two torch threads while another
process was busy (OpenMP threads wait for each other at every parallel region; when one of them is descheduled,
all wait). This script measures that and the defaults that ``vist3a.render`` picks (:func:`vist3a.render.
render_threads`).

Each configuration runs in the SAME process one after another (``torch.set_num_threads`` between them), on one
scene: N Gaussians (SH degree 0) in a ball of radius ~1 seen from 3 units at S x S pixels (``bench_render.
random_scene``). A round = every configuration once without load, then every configuration once with ``--burners``
busy processes (each a single-threaded Python ``while True`` loop, started before and killed after the loaded half
of the round). ``auto`` rows are the render's own choice (``threads=None``); the fixed rows pass ``threads=k``.

    python bench/bench_render_load.py [--num 200000] [--size 512] [--rounds 3] [--burners 1]
        [--threads 1 2] [--chunks 524288 2097152]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render import random_scene

from vist3a.cameras import Cameras
from vist3a.render import render

BURNER = "while True:\n    pass\n"


def start_burners(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(n)]
    time.sleep(0.5)  # let them get scheduled
    return procs


def stop_burners(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=200_000, help="Gaussians (default 200000)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--burners", type=int, default=1, help="busy processes in the loaded case (default 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default 1 2)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1 << 19, 1 << 21],
                        help="chunk_elements values (default 524288 2097152)")
    parser.add_argument("--no-auto", action="store_true", help="skip the rows of the render's automatic choice")
    args = parser.parse_args(argv)
    # SIGTERM -> SystemExit, so the ``finally`` below always kills the burners
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scene = random_scene(args.num, 0, "cpu")
    cams = Cameras.orbit(1, radius=3.0, fov_deg=50.0, width=args.size, height=args.size)
    configs = [(t, c) for t in args.threads for c in args.chunks]
    if not args.no_auto:
        configs += [(None, None)]  # the render's defaults: automatic threads, default chunk

    def run(threads, chunk):
        kw = {} if chunk is None else {"chunk_elements": chunk}
        with torch.no_grad():
            return render(scene, cams, backend="torch", threads=threads, **kw).rgb

    ref = run(1, args.chunks[0])  # warm-up, and the image every configuration must reproduce
    max_diff = 0.0
    times = {(cfg, loaded): [] for cfg in configs for loaded in (False, True)}
    print(f"{args.num} Gaussians, {args.size}^2, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.2f}, {args.rounds} interleaved rounds, {args.burners} burner(s) when loaded",
          flush=True)
    for r in range(args.rounds):
        for loaded in (False, True):
            procs = start_burners(args.burners) if loaded else []
            try:
                for cfg in configs:
                    t0 = time.perf_counter()
                    out = run(*cfg)
                    times[(cfg, loaded)].append(time.perf_counter() - t0)
                    print(f"    {'loaded' if loaded else 'idle  '} {cfg}: {times[(cfg, loaded)][-1]:.3f} s", flush=True)
                    max_diff = max(max_diff, float((out - ref).abs().max()))
            finally:
                stop_burners(procs)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)

    def name(cfg):
        t, c = cfg
        return "auto (render defaults)" if t is None else f"{t} thread(s), chunk {c}"

    base = times[((1, args.chunks[-1]), False)] if (1, args.chunks[-1]) in configs else times[(configs[0], False)]
    print()
    print("| configuration | idle min / med s | loaded min / med s | loaded / idle (med) | vs 1 thread idle (med) |")
    print("| --- | --- | --- | --- | --- |")
    med = statistics.median
    for cfg in configs:
        idle, busy = times[(cfg, False)], times[(cfg, True)]
        print(f"| {name(cfg)} | {min(idle):.3f} / {med(idle):.3f} | {min(busy):.3f} / {med(busy):.3f} | "
              f"{med(busy) / med(idle):.2f}x | idle {med(idle) / med(base):.2f}x, loaded {med(busy) / med(base):.2f}x |")
    print(f"\nmax |difference| of any configuration's image from the 1-thread one: {max_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
