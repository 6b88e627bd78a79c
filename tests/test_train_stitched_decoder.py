"""training/train_stitched_decoder.py and training/losses.py on tiny models (CPU): loss terms and weights, 2-process
gloo finetuning (the loss falls; a SIGTERM on one rank stops both; resume is bit-exact), single-process Ctrl-C and
--stop-after resume, the exported decoder (load_decoder, VideoTo3DPipeline, the ComfyUI node) and clear errors."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO_ROOT
from safetensors.torch import load_file, save_file

from training import losses
from training import train_stitched_decoder as tsd
from vist3a.models import tiny_model

BASE = ["--preset", "tiny", "--synthetic", "1", "--warmup", "1", "--lr", "1e-3", "--save-every", "2", "--quiet"]
DIST_ARGS = [*BASE, "--views", "5,9", "--steps", "8"]
SINGLE_ARGS = [*BASE, "--views", "5,9", "--steps", "5"]


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _state(out: Path) -> dict:
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "state.safetensors"))


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sorted(sa) == sorted(sb)
    assert any(k.startswith("tensor/stitching.") for k in sa) and any("lora_A" in k for k in sa)
    for key in sa:  # trained tensors, optimizer moments, RNG states
        assert torch.equal(sa[key], sb[key]), key
    da, db = load_file(str(a / "decoder" / "model.safetensors")), load_file(str(b / "decoder" / "model.safetensors"))
    assert all(torch.equal(da[k], db[k]) for k in da)


def _losses(out: Path) -> list[dict]:
    # "time" (cumulative training seconds) differs between runs by nature; everything else must match exactly
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


# ============================================================================================ loss
@pytest.fixture(scope="module")
def anysplat_outputs():
    from vist3a.models import AnySplat, AnySplatConfig

    torch.manual_seed(0)
    with torch.no_grad():
        return AnySplat(AnySplatConfig.tiny()).eval()(torch.rand(1, 2, 3, 56, 56))


def test_loss_terms_and_weights(anysplat_outputs, single_thread):
    target = anysplat_outputs
    w = losses.loss_weights("anysplat")
    total, terms = losses.stitched_loss(target, target, w)
    assert float(total) == 0.0 and list(terms) == [name for name, _ in w.items()]
    cases = [("anchor_feats", 0.5, "anchor_feats", 0.1), ("depth", 0.25, "depth", 1.0),
             ("gs_conf", 2.0, "conf", 0.01), ("intrinsic_normalized", 0.125, "intrinsics", 1.0)]
    for key, delta, term, weight in cases:
        pred = dict(target)
        pred[key] = target[key] + delta
        total, terms = losses.stitched_loss(pred, target, w)
        assert terms[term].item() == pytest.approx(delta, rel=1e-5)
        assert total.item() == pytest.approx(weight * delta, rel=1e-5), term  # every other term stays 0
        assert all(abs(v.item()) < 1e-6 for k, v in terms.items() if k != term), (term, terms)  # shift-free grads
    pred = dict(target)
    pred["gaussians"] = [copy.copy(g) for g in target["gaussians"]]
    pred["gaussians"][0].scales = target["gaussians"][0].scales + 0.01
    total, terms = losses.stitched_loss(pred, target, w)
    assert terms["scales"].item() == pytest.approx(0.01, rel=1e-4) and total.item() == pytest.approx(0.1, rel=1e-4)
    # a gradient perturbation only moves depth and depth_grad
    pred = dict(target)
    ramp = torch.linspace(0, 1, 56).view(1, 1, 1, 56, 1)
    pred["depth"] = target["depth"] + ramp
    _, terms = losses.stitched_loss(pred, target, w)
    assert terms["depth_grad"].item() > 0 and terms["depth"].item() == pytest.approx(0.5, rel=1e-4)
    # outputs only one side has are skipped, not zero-filled
    pred = {k: v for k, v in target.items() if k != "gs_conf"}
    _, terms = losses.stitched_loss(pred, target, w)
    assert "conf" not in terms and "depth" in terms
    with pytest.raises(ValueError, match="no common outputs"):
        losses.stitched_loss({"x": 1}, target, w)
    with pytest.raises(ValueError, match="shape"):
        losses.stitched_loss({"depth": target["depth"][:, :1]}, target, w)


def test_vggt_weights_and_gradient_l1():
    w = losses.loss_weights("vggt")
    assert dict(w.items()) == {"pose_enc": 5.0, "depth": 1.0, "world_points": 1.0, "depth_conf": 5e-3,
                               "world_points_conf": 5e-3, "depth_grad": 5e-3, "world_points_grad": 5e-3}
    t = {"pose_enc_list": torch.zeros(2, 1, 3, 9), "world_points": torch.zeros(1, 3, 8, 8, 3)}
    p = {"pose_enc_list": t["pose_enc_list"] + 0.1, "world_points": t["world_points"]}
    total, terms = losses.stitched_loss(p, t, w)
    assert set(terms) == {"pose_enc", "world_points", "world_points_grad"}
    assert total.item() == pytest.approx(0.5, rel=1e-5)
    x = torch.arange(16.0).view(1, 1, 4, 4)  # d/dx = 1, d/dy = 4 at scale 0; one scale only (4 px // 2 = 2)
    assert losses.gradient_l1(x, torch.zeros_like(x)).item() == pytest.approx((1 + 4 + 2 + 8) / 2)
    with pytest.raises(ValueError, match="unknown model kind"):
        losses.loss_weights("nerf")


def test_views_parsing_and_draws():
    assert tsd.parse_views("21, 9,13,17") == (9, 13, 17, 21)
    draws = [tsd.views_for_step(0, s, (9, 13, 17, 21)) for s in range(40)]
    assert draws == [tsd.views_for_step(0, s, (9, 13, 17, 21)) for s in range(40)] and len(set(draws)) == 4
    with pytest.raises(ValueError, match="4k \\+ 1"):
        tsd.parse_views("9,12")


# ============================================================================================ 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)

    def sigterm_on_rank1(step: int) -> None:
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    rcs = [tsd.main([*DIST_ARGS, "--output", f"{root}/full"]),
           tsd.main([*DIST_ARGS, "--output", f"{root}/resumed"], on_step=sigterm_on_rank1)]
    rcs.append(tsd.main([*DIST_ARGS, "--output", f"{root}/resumed", "--resume"]))
    dist.destroy_process_group()
    Path(root, f"rc{rank}.json").write_text(json.dumps(rcs))


def test_two_process_finetune_loss_falls_and_resume_is_exact(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rc0, rc1 = (json.loads((tmp_path / f"rc{r}.json").read_text()) for r in (0, 1))
    assert rc0 == rc1 == [0, 143, 0]  # rank 1's SIGTERM stopped both ranks after step 3
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cfg = json.loads((full / "train_config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["views"] == [5, 9]
    log = _losses(full)
    assert [m["step"] for m in log] == list(range(1, 9))
    assert [m["views"] for m in log] == [tsd.views_for_step(0, s, (5, 9)) for s in range(8)]
    first, last = sum(m["loss"] for m in log[:3]) / 3, sum(m["loss"] for m in log[-3:]) / 3
    assert last < 0.5 * first, [round(m["loss"], 3) for m in log]
    assert _losses(resumed) == log  # same losses, step for step (metrics truncated and continued)
    _assert_same_state(full, resumed)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["latest", "step_000004", "step_000006",
                                                                           "step_000008"]


# ============================================================================================ 1 process
@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """A full 5-step run, and one stopped by Ctrl-C after step 2, continued with --stop-after 1, then finished."""
    root = tmp_path_factory.mktemp("single")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert tsd.main([*SINGLE_ARGS, "--output", str(root / "full")]) == 0

        def ctrl_c(step: int) -> None:
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

        rcs = [tsd.main([*SINGLE_ARGS, "--output", str(root / "resumed")], on_step=ctrl_c)]
        rcs.append(tsd.main([*SINGLE_ARGS, "--output", str(root / "resumed"), "--resume", "--stop-after", "1"]))
        steps_after_stop = _losses(root / "resumed")[-1]["step"]
        has_decoder = (root / "resumed" / "decoder").exists()
        rcs.append(tsd.main([*SINGLE_ARGS, "--output", str(root / "resumed"), "--resume"]))
    finally:
        torch.set_num_threads(torch_threads)
    return root, rcs, steps_after_stop, has_decoder


def test_ctrl_c_stop_after_and_resume_are_exact(single_runs):
    root, rcs, steps_after_stop, has_decoder = single_runs
    assert rcs == [130, 0, 0] and steps_after_stop == 3 and not has_decoder
    _assert_same_state(root / "full", root / "resumed")
    assert _losses(root / "full") == _losses(root / "resumed")
    names = sorted(p.relative_to(root / "full").as_posix() for p in (root / "full").rglob("*") if p.is_file())
    assert names == ["checkpoints/latest", "checkpoints/step_000002/state.json",
                     "checkpoints/step_000002/state.safetensors", "checkpoints/step_000004/state.json",
                     "checkpoints/step_000004/state.safetensors", "checkpoints/step_000005/state.json",
                     "checkpoints/step_000005/state.safetensors", "decoder/decoder_config.json",
                     "decoder/model.safetensors", "metrics.jsonl", "train_config.json"]


def _trained_in_memory(out: Path):
    """Rebuild the run's student (official recipe), load the final checkpoint's trained tensors, merge peft LoRA."""
    from vist3a.stitching.lora import merge_lora

    args = tsd.build_parser().parse_args([*SINGLE_ARGS, "--output", str(out)])
    student = tsd.prepare_trainable_official(tsd.build_student(args, tiny_model("anysplat", 0)), 64, 32)
    state = _state(out)
    with torch.no_grad():
        for name, p in tsd.trainable_tensors(student).items():
            p.copy_(state[f"tensor/{name}"])
    return merge_lora(student).eval()


def test_exported_decoder_loads_and_decodes(single_runs, tmp_path, single_thread):
    from vist3a.pipeline import VideoTo3DPipeline, load_stitched_decoder
    from vist3a.stitching import load_decoder
    from vist3a.stitching.vae import tiny_video_vae

    out = single_runs[0] / "full"
    loaded = load_decoder(out / "decoder")
    cfg = json.loads((out / "decoder" / "decoder_config.json").read_text())
    assert cfg["lora"]["r"] == 64 and cfg["lora"]["merged"] and cfg["cut"] == "enc_blocks_2"
    assert cfg["resolution"]["video"] == 64 and cfg["resolution"]["model"] == 56
    memory = _trained_in_memory(out)
    torch.manual_seed(3)
    latent, frames = torch.randn(1, 16, 3, 8, 8), torch.rand(1, 9, 3, 56, 56)
    with torch.no_grad():
        a, b = loaded(latent, frames), memory(latent, frames)
    for key in ("depth", "anchor_feats", "pose_enc", "extrinsic"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a["gaussians"][0].means, b["gaussians"][0].means, rtol=1e-4, atol=1e-5)
    # the finetune changed the decoder (it is not the untrained tiny one)
    assert not torch.equal(loaded.stitching.weight, tsd.build_student(
        tsd.build_parser().parse_args([*SINGLE_ARGS, "--output", "x"]), tiny_model("anysplat", 0)
    ).stitching.weight)

    pipe = VideoTo3DPipeline(tiny_video_vae("wan", seed=0).vae, load_stitched_decoder(out / "decoder"), 9, 64, 64)
    scene = pipe(torch.rand(9, 3, 64, 64))
    assert len(scene.gaussians) == 9 * 56 * 56 and len(scene.cameras) == 9

    import _fake_comfy

    _fake_comfy.install(tmp_path)
    try:
        import shutil

        from nodes.decoding import LoadStitchedDecoder

        shutil.copytree(out / "decoder", tmp_path / "models" / "vist3a" / "my_finetune")
        assert "my_finetune" in LoadStitchedDecoder.INPUT_TYPES()["required"]["decoder"][0]
        handle, = LoadStitchedDecoder().load("my_finetune", "auto", "cpu")
        with torch.no_grad():
            c = handle.decoder(latent, frames)
        torch.testing.assert_close(c["depth"], a["depth"], rtol=0, atol=0)
    finally:
        _fake_comfy.uninstall()


# ============================================================================================ init and data
def test_init_from_layer_search_file_and_from_decoder(single_runs, tmp_path):
    from vist3a.stitching.config import StitchingConfig

    cfg = StitchingConfig.parse("conv3d_k5x3x3_o64_s1x2x2_p2x1x1")
    weight, bias = torch.randn(*cfg.weight_shape), torch.randn(64)
    path = tmp_path / "stitching_layer_enc_blocks_1.safetensors"
    save_file({"weight": weight, "bias": bias}, str(path),
              metadata={"format": "vist3a.stitching_layer", "config": cfg.to_string(), "layer": "enc_blocks_1",
                        "in_channels": "16"})
    args = tsd.build_parser().parse_args([*SINGLE_ARGS, "--output", "x", "--init-stitching", str(path)])
    student = tsd.build_student(args, tiny_model("anysplat", 0))
    assert student.cut == "enc_blocks_1" and torch.equal(student.stitching.weight, weight)
    args = tsd.build_parser().parse_args([*SINGLE_ARGS, "--output", "x", "--init-stitching", str(path),
                                          "--cut", "enc_blocks_2"])
    with pytest.raises(ValueError, match="fitted at enc_blocks_1"):
        tsd.build_student(args, tiny_model("anysplat", 0))
    dec = single_runs[0] / "full" / "decoder"
    args = tsd.build_parser().parse_args([*SINGLE_ARGS, "--output", "x", "--init-decoder", str(dec)])
    student = tsd.build_student(args, tiny_model("anysplat", 0))
    assert torch.equal(student.stitching.weight, load_file(str(dec / "model.safetensors"))["stitching.weight"])


def test_folder_data_vggt_real_frames(tmp_path, single_thread):
    from training.data import write_synthetic_scenes
    from vist3a.stitching import load_decoder

    write_synthetic_scenes(tmp_path / "data", scenes=2, frames=8, size=64)
    out = tmp_path / "out"
    rc = tsd.main(["--preset", "tiny", "--model", "vggt", "--data", str(tmp_path / "data"), "--views", "5",
                   "--window", "8", "--steps", "2", "--frames", "real", "--lora-rank", "4", "--quiet",
                   "--output", str(out)])
    assert rc == 0 and load_decoder(out / "decoder").kind == "vggt"
    assert set(_losses(out)[0]) >= {"pose_enc", "depth", "world_points", "depth_grad", "world_points_conf"}


# ============================================================================================ errors
@pytest.mark.parametrize("extra, message", [
    (["--views", "8"], "4k \\+ 1"),
    (["--vae-size", "64", "--model-size", "70"], "resolutions do not line up"),
    (["--data", "/nonexistent/scenes"], "exactly one of --data"),
    (["--synthetic", "0"], "at least 1 scene"),
    (["--steps", "0"], "--steps must be >= 1"),
])
def test_bad_arguments_give_clear_errors(tmp_path, caplog, extra, message):
    args = ["--preset", "tiny", "--synthetic", "1", "--steps", "2", "--quiet", "--output", str(tmp_path / "o"),
            *extra]  # an option given twice: the later wins in argparse
    with caplog.at_level(logging.ERROR):
        assert tsd.main(args) == 2
    assert any(re.search(message, r.getMessage()) for r in caplog.records), caplog.text
    assert not (tmp_path / "o").exists()


def test_missing_model_and_data_and_existing_run(tmp_path, caplog, single_runs):
    with caplog.at_level(logging.ERROR):
        assert tsd.main(["--synthetic", "1", "--output", str(tmp_path / "o")]) == 2
        assert tsd.main(["--preset", "tiny", "--data", str(tmp_path / "none"), "--output", str(tmp_path)]) == 2
        assert tsd.main([*SINGLE_ARGS, "--output", str(single_runs[0] / "full")]) == 2
    text = caplog.text
    assert "--model-path" in text and "no such folder" in text and "pass --resume" in text


def test_module_help_from_repo_root():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "training.train_stitched_decoder", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0 and "--views" in res.stdout and "--resume" in res.stdout and "LoRA" in res.stdout


def test_heads_run_in_fp32_under_autocast():
    from vist3a.models import AnySplat, AnySplatConfig

    torch.manual_seed(0)
    model = tsd.keep_heads_fp32(AnySplat(AnySplatConfig.tiny()).eval(), "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 2, 3, 56, 56))
    assert out["depth"].dtype == out["extrinsic"].dtype == out["anchor_feats"].dtype == torch.float32
    assert out["gaussians"][0].means.dtype == torch.float32


# ============================================================================================ recipes
def _released_gradient_loss(pred, target, scales=4):
    """The released gradient_loss_multi_scale written out with explicit loops (float64)."""
    d = (pred - target).double()
    total = 0.0
    for s in range(scales):
        x = d[:, ::2 ** s, ::2 ** s]
        b, v, h = x.shape[:3]
        acc = 0.0
        for i in range(h - 1):  # along H
            acc += (x[:, :, i + 1] - x[:, :, i]).abs().clamp(max=100).sum()
        for j in range(v - 1):  # across views
            acc += (x[:, j + 1] - x[:, j]).abs().clamp(max=100).sum()
        total += acc / (b * v * h)
    return total / scales


def test_official_gradient_term_is_the_released_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 5, 16, 64, 1, generator=g), torch.rand(2, 5, 16, 64, 1, generator=g)
    pred[0, 1, 3, 4, 0] += 300.0  # the clamp at 100 matters
    got = losses.official_gradient_l1(pred, target)
    torch.testing.assert_close(got.double(), _released_gradient_loss(pred, target), rtol=1e-5, atol=0)
    # a per-view constant offset: invisible to the paper's per-image gradients, not to the released (view) term
    shift = target + torch.arange(5.0).view(1, 5, 1, 1, 1)
    assert losses.gradient_l1(shift, target) < 1e-6 < losses.official_gradient_l1(shift, target)
    # the released term sums over W (64 here) and divides by B*V*H only: far larger than the paper's means
    assert losses.official_gradient_l1(pred, target) > 10 * losses.gradient_l1(pred, target)


def test_official_recipe_compares_camera_to_world_extrinsics(anysplat_outputs):
    target = anysplat_outputs
    pred = dict(target)
    pred["c2w"] = target["c2w"] + 1.0  # only the camera-to-world matrices differ
    _, official = losses.stitched_loss(pred, target, losses.loss_weights("anysplat", "official"))
    _, paper = losses.stitched_loss(pred, target, losses.loss_weights("anysplat", "paper"))
    assert float(official["extrinsics"]) == pytest.approx(1.0) and float(paper["extrinsics"]) == 0.0
    with pytest.raises(ValueError, match="recipe"):
        losses.loss_weights("anysplat", "released")


def test_official_recipe_trains_loralib_convs_and_exports_them_merged(tmp_path, single_thread):
    from vist3a.models import AnySplat, AnySplatConfig
    from vist3a.stitching import StitchedDecoder, StitchingLayer, load_decoder, save_decoder
    from vist3a.stitching.lora import LoralibConv2d

    torch.manual_seed(0)
    student = StitchedDecoder(AnySplat(AnySplatConfig.tiny()), "enc_blocks_2",
                              StitchingLayer("conv3d_k5x3x3_o64_s1x2x2_p2x1x1")).eval()
    tsd.prepare_trainable_official(student, rank=4, alpha=2.0)
    convs = {n: m for n, m in student.model.named_modules() if isinstance(m, LoralibConv2d)}
    assert convs and "encoder.gaussian_param_head.input_merger.0" in convs
    for m in convs.values():
        k = m.kernel_size[0]
        assert m.lora_A.shape == (4 * k, m.in_channels * k) and m.lora_B.shape == (m.out_channels * k, 4 * k)
        assert m.lora_A.requires_grad and m.lora_B.requires_grad and not m.weight.requires_grad
        with torch.no_grad():
            m.lora_B.normal_(0, 0.05)
    train = tsd.trainable_tensors(student)
    assert any(k.endswith("input_merger.0.lora_A") for k in train) and any("lora_A.default" in k for k in train)
    g = torch.Generator().manual_seed(1)
    lat, frames = torch.randn(1, 16, 2, 8, 8, generator=g), torch.rand(1, 5, 3, 56, 56, generator=g)
    with torch.no_grad():
        want = student(lat, frames)["depth"]
        save_decoder(student, tmp_path / "dec")
        got = load_decoder(tmp_path / "dec")(lat, frames)["depth"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="loralib"):
        save_decoder(student, tmp_path / "lora", base_source="base")


def test_paper_recipe_run_and_recorded_recipe(tmp_path, single_thread):
    out = tmp_path / "paper"
    assert tsd.main([*BASE, "--views", "5", "--steps", "1", "--recipe", "paper", "--output", str(out)]) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["recipe"] == "paper" and cfg["frames"] == "decoded"
    state = _state(out)
    assert not any(k.endswith(".lora_A") for k in state)  # peft everywhere: no loralib conv factors
    # resuming with another recipe is refused (the schedule / loss would change)
    assert tsd.main([*BASE, "--views", "5", "--steps", "2", "--recipe", "official", "--output", str(out),
                     "--resume"]) == 2
