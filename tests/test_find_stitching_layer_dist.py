"""``find_stitching_layer`` under a 2-process gloo group (torchrun-style environment): data sharded by rank, sums
all-reduced, only rank 0 writes; the result equals the single-process run."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

ARGS = ["--tiny", "--synthetic", "--samples", "8", "--heldout", "3", "--batch-size", "1", "--latent-mean",
        "--layers", "enc_blocks_1..3", "--quiet"]


def _worker(rank: int, world: int, port: int, out: str, rc_dir: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from training import find_stitching_layer as fsl

    rc = fsl.main([*ARGS, "--out", out])
    with open(os.path.join(rc_dir, f"rc{rank}"), "w") as fh:
        fh.write(str(rc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one(tmp_path, monkeypatch):
    from training import find_stitching_layer as fsl

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert fsl.main([*ARGS, "--out", str(single)]) == 0
    mp.spawn(_worker, args=(2, _free_port(), str(multi), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rc0").read_text() == "0" and (tmp_path / "rc1").read_text() == "0"
    a = json.loads((single / "ranking.json").read_text())
    b = json.loads((multi / "ranking.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert [r["layer"] for r in a["ranking"]] == [r["layer"] for r in b["ranking"]]
    for ra, rb in zip(a["ranking"], b["ranking"]):
        assert ra["train_rows"] == rb["train_rows"] and ra["heldout_rows"] == rb["heldout_rows"]
        for key in ("train_mse", "heldout_mse", "cka"):
            assert abs(ra[key] - rb[key]) <= 1e-9 * abs(ra[key]), (key, ra[key], rb[key])
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in multi.iterdir())
    for name in ("enc_blocks_1", "enc_blocks_3"):
        wa = load_file(str(single / f"stitching_layer_{name}.safetensors"))
        wb = load_file(str(multi / f"stitching_layer_{name}.safetensors"))
        torch.testing.assert_close(wa["weight"], wb["weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wa["bias"], wb["bias"], rtol=1e-5, atol=1e-6)
