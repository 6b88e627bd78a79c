"""Two gloo processes (spawned, TCP init on 127.0.0.1) sharding the samples and all-reducing the sums give the
single-process result to float64 round-off."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from vist3a.stitching.search import LayerSearch, reduce_

CFG = "conv3d_k5x3x3_o8_s1x2x2_p2x1x1"
GRID = (4, 4)
LAYERS = ["enc_blocks_1", "enc_blocks_2", "agg_blocks_1"]
SAMPLES = {"train": 7, "heldout": 3}  # odd counts: the two ranks get different shares


def sample(split: str, i: int):
    """Deterministic (latent, activations) for sample i of a split, like one clip of a capture()."""
    g = torch.Generator().manual_seed((1000 if split == "train" else 2000) + i)
    lat = torch.randn(1, 16, 3, 8, 8, generator=g, dtype=torch.float64)
    acts = {}
    for k, name in enumerate(LAYERS):
        tok = torch.randn(9, 5 + 16, 8, generator=g, dtype=torch.float64) + k
        acts[name] = {"tokens": tok, "layers": {}} if name.startswith("agg") else tok
    return lat, acts


def run_search(rank: int, world: int) -> LayerSearch:
    search = LayerSearch(CFG, LAYERS)
    for split, n in SAMPLES.items():
        for i in range(rank, n, world):
            lat, acts = sample(split, i)
            search.update(lat, acts, grid_hw=GRID, split=split)
    return search


def _worker(rank: int, world: int, init: str, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        search = run_search(rank, world)
        reduce_(search)
        if rank == 0:
            res = search.solve()
            torch.save({"tensors": search.tensors(), "samples": search.samples,
                        "fits": {n: (f.weight, f.bias, f.train_mse, f.heldout_mse, f.cka) for n, f in res.fits.items()},
                        "ranking": res.ranking}, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_single_process(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, f"tcp://127.0.0.1:{_free_port()}", str(out)), nprocs=2, join=True)
    dist_res = torch.load(out, weights_only=False)
    single = run_search(0, 1)
    for a, b in zip(dist_res["tensors"], single.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    assert dist_res["samples"] == single.samples == SAMPLES
    ref = single.solve()
    assert dist_res["ranking"] == ref.ranking
    for name, (w, b, tr, ho, cka) in dist_res["fits"].items():
        f = ref.fits[name]
        assert (w - f.weight).abs().max() < 1e-10 and (b - f.bias).abs().max() < 1e-10
        assert abs(tr - f.train_mse) < 1e-10 and abs(ho - f.heldout_mse) < 1e-10 and abs(cka - f.cka) < 1e-10
