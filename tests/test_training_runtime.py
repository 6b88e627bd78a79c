"""training/runtime.py: pickle-free atomic training checkpoints (optimizer + scheduler + RNG round trip, keep-last-N,
broken checkpoints skipped or reported), the cosine schedule and the single-process distributed helpers."""

from __future__ import annotations

import itertools
import json
import pickle
import random

import numpy as np
import pytest
import torch

from training import runtime as rt


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    sched = rt.cosine_with_warmup(opt, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    return model, opt, sched


def _train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_round_trip_continues_bit_exactly(tmp_path, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "dump", no_pickle)
    monkeypatch.setattr(pickle, "dumps", no_pickle)
    monkeypatch.setattr(torch, "save", no_pickle)
    # reference: 3 + 4 steps in one go
    model, opt, sched = _setup()
    _train(model, opt, sched, 3)
    random.seed(5)
    np.random.seed(6)
    rng = rt.capture_rng_state()
    path = rt.save_training_state(tmp_path, step=3, tensors=dict(model.named_parameters()), optimizer=opt,
                                  scheduler=sched, rng=[rng], extra={"note": "x", "views": [9, 13]})
    assert path == tmp_path / "step_000003" and (tmp_path / "latest").read_text().strip() == "step_000003"
    assert sorted(p.name for p in path.iterdir()) == ["state.json", "state.safetensors"]
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))
    _train(model, opt, sched, 4)
    want, want_lr = _params(model), sched.get_last_lr()

    # fresh objects, restore, continue
    model2, opt2, sched2 = _setup(seed=1)
    state = rt.load_training_state(tmp_path, optimizer=opt2, scheduler=sched2)
    assert state.step == 3 and state.extra == {"note": "x", "views": [9, 13]} and state.path == path
    with torch.no_grad():
        for name, p in model2.named_parameters():
            p.copy_(state.tensors[name])
    rt.restore_rng_state(state.rng[0])
    assert (random.random(), float(np.random.rand())) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])
    _train(model2, opt2, sched2, 4)  # the same draws were made before the reference's 4 steps
    for name, value in _params(model2).items():
        assert torch.equal(value, want[name]), name
    assert sched2.get_last_lr() == want_lr


def test_keep_last_and_latest(tmp_path):
    model, opt, sched = _setup()
    for step in (1, 2, 3, 4):
        rt.save_training_state(tmp_path, step=step, tensors=dict(model.named_parameters()), optimizer=opt,
                               scheduler=sched, keep_last=2)
    assert [p.name for p in rt.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    assert rt.latest_checkpoint(tmp_path) == tmp_path / "step_000004"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert rt.latest_checkpoint(tmp_path / "missing") is None


def test_broken_checkpoints_are_skipped_or_reported(tmp_path):
    model, opt, sched = _setup()
    rt.save_training_state(tmp_path, step=1, tensors=dict(model.named_parameters()), optimizer=opt, scheduler=sched)
    rt.save_training_state(tmp_path, step=2, tensors=dict(model.named_parameters()), optimizer=opt, scheduler=sched)
    # a half-written newer folder (json missing) and a leftover temporary folder are ignored
    (tmp_path / "step_000005").mkdir()
    (tmp_path / "step_000005" / "state.safetensors").write_bytes(b"partial")
    (tmp_path / ".step_000006.abc.tmp").mkdir()
    assert rt.latest_checkpoint(tmp_path) == tmp_path / "step_000002"
    # the pointer names a corrupt checkpoint -> fall back to the newest complete one
    (tmp_path / "step_000002" / "state.json").write_text("{not json")
    assert rt.latest_checkpoint(tmp_path) == tmp_path / "step_000001"
    with pytest.raises(ValueError, match="corrupt"):
        rt.load_training_state(tmp_path / "step_000002")
    with pytest.raises(ValueError, match="state.json is missing"):
        rt.load_training_state(tmp_path / "step_000005")
    # corrupt tensors file
    (tmp_path / "step_000001" / "state.safetensors").write_bytes(b"garbage!")
    with pytest.raises(ValueError, match="missing or corrupt"):
        rt.load_training_state(tmp_path / "step_000001")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        rt.load_training_state(tmp_path / "empty_dir_that_is_not_there")


def test_optimizer_mismatch_is_clear(tmp_path):
    model, opt, sched = _setup()
    _train(model, opt, sched, 1)
    rt.save_training_state(tmp_path, step=1, tensors={}, optimizer=opt)
    other = torch.optim.AdamW(torch.nn.Linear(3, 3).parameters())
    with pytest.raises(ValueError, match="does not match"):
        rt.load_training_state(tmp_path, optimizer=other)


def test_state_json_has_no_pickled_or_binary_content(tmp_path):
    model, opt, sched = _setup()
    _train(model, opt, sched, 2)
    path = rt.save_training_state(tmp_path, step=2, tensors=dict(model.named_parameters()), optimizer=opt,
                                  scheduler=sched, rng=[rt.capture_rng_state()])
    doc = json.loads((path / "state.json").read_text())
    assert doc["step"] == 2 and doc["format"] == "vist3a.training_state"
    assert doc["scheduler"]["last_epoch"] == 2
    assert doc["optimizer"]["param_groups"][0]["lr"] == pytest.approx(sched.get_last_lr()[0])
    from safetensors.torch import load_file

    keys = set(load_file(str(path / "state.safetensors")))
    assert {"tensor/0.weight", "rng/0/torch"} <= keys and any(k.startswith("optim/state/") for k in keys)
    with pytest.raises(TypeError, match="cannot store"):
        rt.save_training_state(tmp_path, step=3, tensors={}, extra={"bad": object()})


def test_cosine_with_warmup_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = rt.cosine_with_warmup(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.2)
    lrs = []
    for _ in range(16):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.6)
    assert lrs[14] == pytest.approx(0.2) and lrs[15] == pytest.approx(0.2)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    with pytest.raises(ValueError, match="min_lr_ratio"):
        rt.cosine_with_warmup(opt, 1, 10, min_lr_ratio=2.0)


def test_single_process_context(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = rt.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.is_main) == (0, 1, 0, None, True)
    assert ctx.device == torch.device("cpu")
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(rt.all_reduce_mean(t, ctx), t)
    assert rt.broadcast_object({"a": 1}, ctx) == {"a": 1} and rt.gather_objects(3, ctx) == [3]
    rt.cleanup_distributed()
