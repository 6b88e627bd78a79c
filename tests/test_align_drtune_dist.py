"""DRTune under a 2-process gloo group on the CPU: FSDP2 (``fully_shard`` per block + root), stopped after one step and
resumed, gives the same EMA adapter as the replicated run with all-reduced LoRA gradients; only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

ARGS = ["--preset", "tiny", "--device", "cpu", "--t-min", "2", "--t-max", "3", "--steps", "2", "--quiet",
        "--lr", "1e-2", "--ema-decay", "0.5", "--save-every", "1"]


def _worker(rank: int, world: int, port: int, out: str, mode: str, rc_dir: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "HF_HUB_OFFLINE": "1"})
    torch.set_num_threads(1)
    from training import align_drtune

    extra = {"stop": ["--fsdp", "on", "--stop-at", "1"], "resume": ["--fsdp", "on", "--resume"],
             "off": ["--fsdp", "off"]}[mode]
    rc = align_drtune.main([*ARGS, "--output", out, *extra])
    with open(os.path.join(rc_dir, f"rc_{mode}_{rank}"), "w") as fh:
        fh.write(str(rc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_resume_equals_replicated_run(tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    # FSDP2: stopped after step 1 (a job that ends), then resumed by a new 2-process job; replicated: uninterrupted
    for mode, out in (("stop", "on"), ("resume", "on"), ("off", "off")):
        mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / out), mode, str(tmp_path)), nprocs=2, join=True)
        assert [(tmp_path / f"rc_{mode}_{r}").read_text() for r in (0, 1)] == ["0", "0"], mode
    a = load_file(str(tmp_path / "on" / "lora_ema" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "off" / "lora_ema" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 32
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # one metrics line per step: rank 0 writes, rank 1 does not
    cfg = json.loads((tmp_path / "on" / "config.json").read_text())
    assert cfg["fsdp"] is True and cfg["world_size"] == 2
