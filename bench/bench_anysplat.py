"""Full-size AnySplat forward: time and peak memory (random weights; the numbers do not depend on the values).

CPU: 2 views at 224x224 in float32 (the golden setting). CUDA (when available): 13 views at 448x448 in bf16
autocast with the aggregator in bf16, as the official inference runs, plus float32 for comparison.
Ratios are printed against the float32 weights' own size (memory) and against the first timed run (speed).

    python bench/bench_anysplat.py [--device cpu|cuda] [--views 2] [--size 224] [--repeats 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vist3a.models import AnySplat


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build(device: torch.device) -> AnySplat:
    with torch.device("meta"):
        model = AnySplat()
    model = model.to_empty(device=device).float()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and m.weight is not None:
                m.weight.add_(1.0)
    return model.eval()


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--views", type=int, default=None, help="default: 2 on CPU, 13 on CUDA")
    parser.add_argument("--size", type=int, default=None, help="default: 224 on CPU, 448 on CUDA")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    views = args.views or (13 if device.type == "cuda" else 2)
    size = args.size or (448 if device.type == "cuda" else 224)

    rss0 = rss_gb()
    t0 = time.perf_counter()
    model = build(device)
    build_s = time.perf_counter() - t0
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**3
    print(f"device {device}, {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters, "
          f"float32 weights {weights_gb:.2f} GiB, built in {build_s:.1f} s")
    images = torch.rand(1, views, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def fp32():
        with torch.no_grad():
            model(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed(fp32, device, args.repeats)
    print(f"float32 forward, {views} views at {size}x{size}: " + ", ".join(f"{t:.2f} s" for t in times)
          + f"  (second/first {times[-1] / times[0]:.2f}x)")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**3
        print(f"peak VRAM {peak:.2f} GiB = {peak / weights_gb:.2f}x the float32 weights")
        model.encoder.aggregator.to(torch.bfloat16)

        def bf16():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(images)

        torch.cuda.reset_peak_memory_stats()
        times16 = timed(bf16, device, args.repeats)
        peak16 = torch.cuda.max_memory_allocated() / 1024**3
        print(f"bf16 aggregator + autocast forward: " + ", ".join(f"{t:.2f} s" for t in times16)
              + f"  (speed-up vs float32 {min(times) / min(times16):.2f}x), peak VRAM {peak16:.2f} GiB")
    else:
        peak = rss_gb()
        print(f"peak RSS {peak:.2f} GiB (process start {rss0:.2f} GiB) = {peak / weights_gb:.2f}x the float32 weights")


if __name__ == "__main__":
    main()
