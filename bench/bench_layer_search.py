"""Benchmark: peak RAM and time of the streaming layer search (vist3a.stitching.search) against a store-all-features
baseline (the official VIST3A approach: keep every layer's features of every sample in RAM, then solve), in one run.

    python bench/bench_layer_search.py                      # 10, 100, 1000 samples, 8 layers, D = 256
    python bench/bench_layer_search.py --samples 10 100 --layers 4 --dim 128 --baseline-cap-gb 1
    python bench/bench_layer_search.py --latent-hw 32 --samples 10 100   # 4x the token rows per sample

Each (method, sample count) runs in a fresh subprocess so ``ru_maxrss`` is that run's own peak; both the gross peak
and the peak *above* the process's state after imports and setup (net) are reported. Both methods see the same
synthetic data, generated per sample from a seed (no 3D model / VAE forward: the model's cost is the same for both
and would hide the search's own): a latent (1, 16, 4, 16, 16) -> 13 frames x 8 x 8 tokens (832 rows; ``--latent-hw 32``: 16 x 16 tokens, 3328 rows) and, per layer,
tokens = a_l * (im2col(latent) @ P) + noise_l (different signal-to-noise per layer, so the ranking is defined).

Baseline: features stored in float16 (as the official script does) in preallocated tensors (kinder than the
official list + ``torch.cat``, which doubles the peak), then per layer one pass over the stored samples with the same
float64 normal equations (the official script also recomputes X^T X per layer and makes three passes; we don't, so
its time here is a lower bound). It is skipped where its feature store alone would exceed ``--baseline-cap-gb``
(default 4 GB: the 1000-clip case, 3.3 GB of stored features at the defaults, runs); the estimate is printed
instead. ``--repeats`` runs interleaved rounds and reports min / median ratios. Torch runs single-threaded in the children
(shared, loaded CPU: multi-threaded small matmuls are slower there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

T_LAT = 4
LAT_HW = int(os.environ.get("BENCH_LATENT_HW", "16"))  # set by --latent-hw for the children
GRID = (LAT_HW // 2, LAT_HW // 2)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sample(i: int):
    """Deterministic latent of sample i and the generator that then draws its feature noise."""
    import torch

    g = torch.Generator().manual_seed(10_000 + i)
    lat = torch.randn(1, 16, T_LAT, LAT_HW, LAT_HW, generator=g)
    return lat, g


def child(method: str, n: int, layers: int, dim: int, cka: bool) -> dict:
    import torch

    from vist3a.stitching.layer import StitchingLayer, resize_latent
    from vist3a.stitching.search import LayerSearch, mse_from_sums, solve_ridge

    torch.set_num_threads(1)
    cfg = f"conv3d_k5x3x3_o{dim}_s1x2x2_p2x1x1"
    names = [f"enc_blocks_{k + 1}" for k in range(layers)]
    proj = torch.randn(720, dim, generator=torch.Generator().manual_seed(1)) / 720 ** 0.5
    geom = StitchingLayer(cfg, device="meta")  # resize sizes + im2col only, no parameters in memory

    def patches(lat):
        return geom.unfold(resize_latent(lat.double(), geom.input_size(lat.shape[2], GRID)))

    def data(i):
        lat, g = _sample(i)
        x = patches(lat)  # (832, 720) float64
        signal = (x.float() @ proj)
        ys = {name: (1.0 - 0.08 * k) * signal + (0.1 + 0.1 * k) * torch.randn(signal.shape, generator=g)
              for k, name in enumerate(names)}
        return x, ys

    # warm-up (one-time allocator / BLAS / data-generation costs, the same for both methods): one sample's data
    # and a float64 product of the right size
    x, ys = data(0)
    torch.cat([x, x[:, :1]], 1).T @ ys[names[0]].double()
    del x, ys
    base = _peak_mb()  # after imports, setup and warm-up, before the search
    t0 = time.perf_counter()

    rows = ((T_LAT - 1) * 4 + 1) * GRID[0] * GRID[1]
    if method == "streaming":
        search = LayerSearch(cfg, names, cka=cka, heldout=False)  # no held-out data in this benchmark
        for i in range(n):
            x, ys = data(i)
            search.update_rows(x, ys, samples=1)
            del x, ys
        res = search.solve()
        mse = {name: res.fits[name].train_mse for name in names}
        state_mb = search.nbytes() / 2**20
    else:  # store all features (float16), then solve layer by layer
        store = {name: torch.empty(n, rows, dim, dtype=torch.float16) for name in names}
        latents = torch.empty(n, 16, T_LAT, LAT_HW, LAT_HW, dtype=torch.float16)
        for i in range(n):
            lat, _ = _sample(i)
            _, ys = data(i)
            latents[i] = lat[0].half()
            for name in names:
                store[name][i] = ys[name].half()
            del ys
        state_mb = (sum(t.numel() * 2 for t in store.values()) + latents.numel() * 2) / 2**20
        xtx = torch.zeros(721, 721, dtype=torch.float64)
        for i in range(n):  # X^T X once (the official script recomputes it per layer)
            x = patches(latents[i:i + 1])
            a = torch.cat([x, torch.ones(rows, 1, dtype=x.dtype)], 1)
            xtx.addmm_(a.T, a)
        mse = {}
        for name in names:
            xty = torch.zeros(721, dim, dtype=torch.float64)
            yy = 0.0
            for i in range(n):
                x = patches(latents[i:i + 1])
                a = torch.cat([x, torch.ones(rows, 1, dtype=x.dtype)], 1)
                y = store[name][i].double()
                xty.addmm_(a.T, y)
                yy += float(y.square().sum())
            w = solve_ridge(xtx, xty)
            mse[name] = mse_from_sums(xtx, xty, yy, float(n * rows), w)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    best = min(mse, key=mse.get)
    return {"method": method, "samples": n, "seconds": seconds, "peak_mb": peak, "net_mb": peak - base,
            "state_mb": state_mb, "best": best, "mse": mse}


def run_child(method: str, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--n", str(n), "--layers", str(args.layers),
           "--dim", str(args.dim)] + ([] if args.cka else ["--no-cka"])
    env = {**os.environ, "BENCH_LATENT_HW": str(args.latent_hw)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--latent-hw", type=int, default=16, help="latent side (16: 8x8 tokens, 832 rows per sample; "
                                                             "32: 16x16 tokens, 3328 rows)")
    p.add_argument("--no-cka", dest="cka", action="store_false")
    p.add_argument("--baseline-cap-gb", type=float, default=4.0,
                   help="skip the baseline where its feature store alone would exceed this (default 4 GB: the "
                        "1000-clip case at the defaults needs 3.3 GB and runs)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds (streaming, store, streaming, ...); "
                                                          "min / median ratios over them")
    p.add_argument("--child", choices=("streaming", "store"))
    p.add_argument("--n", type=int)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.layers, args.dim, args.cka)))
        return 0
    global LAT_HW, GRID
    LAT_HW, GRID = args.latent_hw, (args.latent_hw // 2, args.latent_hw // 2)
    rows = ((T_LAT - 1) * 4 + 1) * GRID[0] * GRID[1]
    per_sample_mb = (rows * args.dim * 2 * args.layers + 16 * T_LAT * LAT_HW * LAT_HW * 2) / 2**20
    print(f"layer search benchmark: {args.layers} layers, D={args.dim}, {rows} token rows per sample, d=720 "
          f"(conv3d_k5x3x3_o{args.dim}_s1x2x2_p2x1x1), CKA {'on' if args.cka else 'off'}; baseline stores "
          f"{per_sample_mb:.2f} MB of float16 features per sample")
    print(f"{'samples':>7} {'method':>10} {'time s':>8} {'peak MB':>8} {'net MB':>8} {'state MB':>9} best")
    results: dict = {}
    for rnd in range(args.repeats):  # interleaved: streaming and store alternate, so load drifts hit both alike
        for n in args.samples:
            for method in ("streaming", "store"):
                if method == "store" and per_sample_mb * n / 1024 > args.baseline_cap_gb:
                    if rnd == 0:
                        print(f"{n:>7} {method:>10}  skipped: its feature store would need "
                              f"{per_sample_mb * n / 1024:.2f} GB > cap {args.baseline_cap_gb:g} GB (raise "
                              "--baseline-cap-gb where the RAM is free)")
                    continue
                r = run_child(method, n, args)
                results.setdefault((n, method), []).append(r)
                print(f"{n:>7} {method:>10} {r['seconds']:8.2f} {r['peak_mb']:8.1f} {r['net_mb']:8.1f} "
                      f"{r['state_mb']:9.1f} {r['best']}", flush=True)
    med = statistics.median
    print(f"\nratios (store-all / streaming), min / median over {args.repeats} interleaved round(s):")
    for n in args.samples:
        s, b = results.get((n, "streaming")), results.get((n, "store"))
        if s and b:
            st, bt = [r["seconds"] for r in s], [r["seconds"] for r in b]
            sp, bp = [r["peak_mb"] for r in s], [r["peak_mb"] for r in b]
            sn, bn = [r["net_mb"] for r in s], [r["net_mb"] for r in b]
            agree = max(abs(b[0]["mse"][k] - s[0]["mse"][k]) / s[0]["mse"][k] for k in s[0]["mse"])
            print(f"  {n:>5} samples: peak RAM x{min(bp) / min(sp):.2f} / x{med(bp) / med(sp):.2f} (net above setup "
                  f"x{min(bn) / max(min(sn), 1e-9):.1f} / x{med(bn) / max(med(sn), 1e-9):.1f}), time "
                  f"x{min(bt) / min(st):.2f} / x{med(bt) / med(st):.2f}; same best layer: {b[0]['best'] == s[0]['best']}"
                  f", max rel. MSE difference {agree:.1e} (float16 storage)")
    results = {k: v[0] for k, v in results.items()}
    streams = [results[(n, "streaming")] for n in args.samples if (n, "streaming") in results]
    if len(streams) > 1:
        print(f"  streaming peak RAM from {streams[0]['samples']} to {streams[-1]['samples']} samples: "
              f"{streams[0]['peak_mb']:.1f} -> {streams[-1]['peak_mb']:.1f} MB (accumulators "
              f"{streams[-1]['state_mb']:.1f} MB, flat)")
    full = (24 * (721 * 1024 + 1024 * 1024) + 721 * 721) * 8 / 2**20
    per = 13 * 32 * 32 * 1024 * 2 * 24 / 2**20
    print(f"  released config (24 DINOv2 blocks, D=1024, 13x32x32 tokens per clip): streaming state {full:.0f} MB "
          f"flat vs {per:.0f} MB of float16 features per clip stored by the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
