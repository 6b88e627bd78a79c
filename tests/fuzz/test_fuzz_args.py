"""Fuzz corpus, arguments: bad values for every `vist3a generate / reconstruct / render` option, unwritable and
impossible outputs, missing models, no space.

Each case must be refused BEFORE any model loads (the pipeline constructors are replaced by a trap) with one clear
message naming the argument, exit code 2, and the earlier output beside it untouched with nothing partial left.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
from _contract import SENTINEL, assert_clear_cli, assert_unchanged, run_cli, snapshot
from PIL import Image

import vist3a.io.atomic as atomic_mod
import vist3a.io.paths as paths_mod
from vist3a import Gaussians
from vist3a.io import write_gaussians_ply
from vist3a.pipeline import TextTo3DPipeline, VideoTo3DPipeline

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def no_models(monkeypatch):
    """Any model construction fails the case: the refusal must come first."""
    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    for cls, names in ((TextTo3DPipeline, ("tiny", "from_pretrained")),
                       (VideoTo3DPipeline, ("tiny", "micro", "from_pretrained"))):
        for name in names:
            monkeypatch.setattr(cls, name, classmethod(trap))
    from vist3a.pipeline import presets

    monkeypatch.setattr(presets, "tiny_wan_pipeline", trap)
    monkeypatch.setattr(presets, "tiny_decoder", trap)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder holding an earlier result (scene.ply) and a small scene to render (in.ply)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scene.ply").write_bytes(SENTINEL)
    n = 30
    g = torch.Generator().manual_seed(0)
    write_gaussians_ply(tmp_path / "in.ply", Gaussians(torch.randn(n, 3, generator=g), torch.full((n, 3), 0.05),
                                                       torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                                                       torch.full((n,), 0.8), torch.rand(n, 1, 3, generator=g)))
    (tmp_path / "orbit.png").write_bytes(SENTINEL)
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(clip / f"{i}.png")
    return tmp_path


G = ["generate", "a red sports car", "--preset", "tiny", "-o", "scene.ply"]
R = ["reconstruct", "clip", "--preset", "tiny", "-o", "scene.ply"]
V = ["render", "in.ply", "-o", "orbit.png", "--views", "1", "--size", "8"]

# (case id, argv, what the message must name)
BAD_ARGS = [
    ("cfg-negative", [*G, "--cfg", "-1"], ["--cfg"]),
    ("cfg-nan", [*G, "--cfg", "nan"], ["--cfg", "finite"]),
    ("cfg-inf", [*G, "--cfg", "inf"], ["--cfg"]),
    ("shift-zero", [*G, "--flow-shift", "0"], ["--flow-shift"]),
    ("shift-negative", [*G, "--flow-shift", "-2"], ["--flow-shift"]),
    ("shift-nan", [*G, "--flow-shift", "nan"], ["--flow-shift"]),
    ("steps-zero", [*G, "--steps", "0"], ["--steps"]),
    ("steps-negative", [*G, "--steps", "-3"], ["--steps"]),
    ("seed-negative", [*G, "--seed", "-1"], ["--seed", "2**64 - 1"]),
    ("seed-2^64", [*G, "--seed", str(2**64)], ["--seed"]),
    ("seed-2^70", [*G, "--seed", str(2**70)], ["--seed"]),
    ("frames-8", [*G, "--frames", "8"], ["--frames", "4k + 1"]),
    ("frames-zero", [*G, "--frames", "0"], ["--frames"]),
    ("frames-negative", [*G, "--frames", "-3"], ["--frames"]),
    ("size-500", [*G, "--size", "500"], ["multiples of 16"]),
    ("size-zero", [*G, "--size", "0"], ["--size"]),
    ("size-word", [*G, "--size", "abc"], ["--size"]),
    ("size-dangling-x", [*G, "--size", "64x"], ["--size"]),
    ("size-three-numbers", [*G, "--size", "64x64x64"], ["--size"]),
    ("size-odd-width", [*G, "--size", "72x64"], ["--size width", "multiples of 16"]),
    ("device-nonsense", [*G, "--device", "nonsense"], ["--device", "nonsense"]),
    ("device-cuda-99", [*G, "--device", "cuda:99"], ["--device", "cuda:99"]),
    ("device-meta", [*G, "--device", "meta"], ["--device", "meta"]),
    ("dtype-fp8", [*G, "--dtype", "fp8"], ["--dtype"]),
    ("decoder-dtype-x", [*G, "--decoder-dtype", "x"], ["--decoder-dtype"]),
    ("sh-degree-9", [*G, "--sh-degree", "9"], ["--sh-degree"]),
    ("sh-degree-minus-2", [*G, "--sh-degree", "-2"], ["--sh-degree"]),
    ("empty-prompt", ["generate", "   ", "--preset", "tiny", "-o", "scene.ply"], ["prompt is empty"]),
    ("output-missing-folder", ["generate", "a car", "--preset", "tiny", "-o", "nofolder/x.ply"],
     ["-o/--output", "nofolder", "does not exist"]),
    ("output-under-a-file", ["generate", "a car", "--preset", "tiny", "-o", "in.ply/x.ply"], ["is a file"]),
    ("output-is-folder", ["generate", "a car", "--preset", "tiny", "-o", "clip"], ["-o/--output"]),
    ("output-suffix", ["generate", "a car", "--preset", "tiny", "-o", "scene.png"], ["-o/--output", ".ply"]),
    ("pointmap-same-as-output", [*G, "--pointmap", "scene.ply"], ["different files"]),
    ("splat-suffix", [*G, "--splat", "x.ply"], ["--splat", ".splat"]),
    ("pointmap-suffix", [*G, "--pointmap", "x.splat"], ["--pointmap", ".ply"]),
    ("offload-on-cpu", ["generate", "a car", "-o", "scene.ply", "--device", "cpu", "--offload", "model"],
     ["--offload"]),
    ("tiny-with-wan", [*G, "--wan", "x/y"], ["drop --wan"]),
    ("tiny-lora-missing-folder", [*G, "--lora", "no_such_adapter"], ["--lora", "no_such_adapter",
                                                                      "does not exist"]),
    ("tiny-decoder-missing-folder", [*G, "--decoder", "no_such_decoder"], ["--decoder", "no_such_decoder"]),
    ("tiny-decoder-missing-pth", [*G, "--decoder", "gone.pth"], ["--decoder", "gone.pth"]),
    ("lora-bad-hub-id", [*G, "--lora", "owner/repo"], ["--lora", "owner/repo"]),
    # --- reconstruct
    ("rec-missing-input", ["reconstruct", "nothing_here", "--preset", "tiny", "-o", "scene.ply"], ["nothing_here"]),
    ("rec-frames-6", [*R, "--frames", "6"], ["--frames"]),
    ("rec-seed-2^64", [*R, "--seed", str(2**64)], ["--seed"]),
    ("rec-size-30", [*R, "--size", "30"], ["multiples of 16"]),
    ("rec-device-bad", [*R, "--device", "gpu"], ["--device"]),
    ("rec-micro-with-decoder", ["reconstruct", "clip", "--preset", "micro", "-o", "scene.ply", "--decoder", "d"],
     ["drop --decoder"]),
    ("rec-output-suffix", ["reconstruct", "clip", "--preset", "tiny", "-o", "scene.obj"], ["-o/--output"]),
    # --- render
    ("fov-zero", [*V, "--fov", "0"], ["--fov", "(0, 180)"]),
    ("fov-180", [*V, "--fov", "180"], ["--fov"]),
    ("fov-nan", [*V, "--fov", "nan"], ["--fov"]),
    ("fov-negative", [*V, "--fov", "-10"], ["--fov"]),
    ("elevation-90", [*V, "--elevation", "90"], ["--elevation"]),
    ("elevation-inf", [*V, "--elevation", "inf"], ["--elevation"]),
    ("views-zero", [*V, "--views", "0"], ["--views"]),
    ("views-huge", [*V, "--views", "100000"], ["--views"]),
    ("render-size-4", [*V, "--size", "4"], ["--size"]),
    ("render-size-huge", [*V, "--size", "100000"], ["--size"]),
    ("fps-zero", [*V, "--fps", "0"], ["--fps"]),
    ("render-device-bad", [*V, "--device", "tpu:0"], ["--device"]),
    ("render-output-jpg", ["render", "in.ply", "-o", "orbit.jpg"], ["-o/--output", ".png"]),
    ("render-output-missing-folder", ["render", "in.ply", "-o", "none/orbit.png"], ["does not exist"]),
    ("render-missing-input", ["render", "nothing.ply", "-o", "orbit.png"], ["nothing.ply", "does not exist"]),
]


@pytest.mark.parametrize("case, argv, names", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_argument_refused_before_any_model_loads(case, argv, names, work, no_models, capsys):
    before = snapshot(work)
    assert_clear_cli(run_cli(argv, capsys), argv[0], *names)
    assert_unchanged(work, before)


def test_device_cuda_without_cuda(work, no_models, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(work)
    message = assert_clear_cli(run_cli([*G, "--device", "cuda"], capsys), "generate", "--device", "CUDA")
    assert "--device cpu" in message
    assert_unchanged(work, before)


def _unwritable(monkeypatch, folder):
    """Make ``folder`` refuse new files: really (chmod) when not root, else by failing file creation with EROFS as a
    read-only file system does."""
    if not ROOT:
        os.chmod(folder, 0o555)
        return lambda: os.chmod(folder, 0o755)
    real = atomic_mod.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, folder):
            raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, ".x.vist3a.tmp"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", mkstemp)
    return lambda: None


@pytest.mark.parametrize("command", ["generate", "reconstruct", "render"])
def test_unwritable_output_folder_refused_before_any_work(command, work, no_models, monkeypatch, capsys):
    ro = work / "ro"
    ro.mkdir()
    (ro / "scene.ply").write_bytes(SENTINEL)
    restore = _unwritable(monkeypatch, ro)
    before = snapshot(work)
    try:
        argv = {"generate": ["generate", "a car", "--preset", "tiny", "-o", "ro/scene.ply"],
                "reconstruct": ["reconstruct", "clip", "--preset", "tiny", "-o", "ro/scene.ply"],
                "render": ["render", "in.ply", "-o", "ro/orbit.png"]}[command]
        message = assert_clear_cli(run_cli(argv, capsys), command, str(ro), "not writable")
        assert ".tmp" not in message  # names the output, never a hidden temporary file
    finally:
        restore()
    assert_unchanged(work, before)


def test_no_space_refused_before_any_model_loads(work, no_models, monkeypatch, capsys):
    class Usage:
        total, used, free = 10 << 30, (10 << 30) - (1 << 20), 1 << 20

    monkeypatch.setattr(paths_mod.shutil, "disk_usage", lambda path: Usage())
    before = snapshot(work)
    message = assert_clear_cli(run_cli([*G, "--size", "512", "--frames", "13"], capsys), "generate",
                               "not enough free space", "scene.ply")
    assert "Free some space" in message
    assert_unchanged(work, before)


def test_all_missing_models_in_one_message(work, no_models, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(work / "empty-cache"))
    before = snapshot(work)
    message = assert_clear_cli(run_cli(["generate", "a car", "-o", "scene.ply", "--device", "cpu"], capsys),
                               "generate", "4 models are not available", "--wan", "--lora", "--decoder", "--base")
    commands = ("hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                'hf download HJGO/VIST3A --include "vist3a_1.3b_lora_ema/*"',
                "hf download HJGO/VIST3A anysplat_stitched.pth", "hf download lhjiang/anysplat")
    for command in commands:
        assert command in message, command
    assert "then pass --decoder <folder>/anysplat_stitched.pth" in message and "load_published" not in message
    message = assert_clear_cli(run_cli(["reconstruct", "clip", "-o", "scene.ply", "--device", "cpu", "--wan",
                                        "local_wan_missing"], capsys), "reconstruct", "3 models",
                               "local_wan_missing", "does not exist", "hf download lhjiang/anysplat")
    assert_unchanged(work, before)


def test_unreachable_hub_is_named(work, no_models, monkeypatch, capsys):
    """Online but without network: the one message says the hub could not be asked (one request per model)."""
    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    asked = []

    def no_network(repo, filename, *args, **kwargs):
        asked.append((repo, filename))
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(work / "empty-cache"))
    monkeypatch.setattr(huggingface_hub, "file_exists", no_network)
    before = snapshot(work)
    message = assert_clear_cli(run_cli(["generate", "a car", "-o", "scene.ply", "--device", "cpu"], capsys),
                               "generate", "could not be asked", "ConnectionError")
    assert len(asked) == 4 and "HF_HUB_OFFLINE" not in message
    assert_unchanged(work, before)


def test_debug_shows_the_traceback_and_bugs_say_so(work, monkeypatch, capsys):
    """--debug re-raises (the traceback is for bug reports); an unexpected exception is an internal error (exit 1)
    that says how to get the traceback, still without printing one."""
    with pytest.raises(ValueError, match="--cfg"):
        run_cli([*G, "--cfg", "nan", "--debug"], capsys)
    with pytest.raises(ValueError, match="--cfg"):
        run_cli(["--debug", *G, "--cfg", "nan"], capsys)
    from vist3a import cli

    monkeypatch.setattr(cli, "_cmd_info", lambda args: 1 / 0)  # a bug
    outcome = run_cli(["info", "in.ply"], capsys)
    assert outcome.rc == 1 and "internal error: ZeroDivisionError" in outcome.err and "--debug" in outcome.err
    assert "Traceback" not in outcome.err
    with pytest.raises(ZeroDivisionError):
        run_cli(["info", "in.ply", "--debug"], capsys)


def test_the_corpus_is_what_it_claims():
    assert len(BAD_ARGS) >= 60
    flags = " ".join(" ".join(a) for _, a, _ in BAD_ARGS)
    for flag in ("--cfg", "--flow-shift", "--steps", "--seed", "--fov", "--device", "-o"):
        assert flag in flags, flag


def test_a_real_process_shows_one_line_and_no_traceback(tmp_path):
    """The same contract from a real `python -m vist3a` process (what a user's shell sees)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    (tmp_path / "scene.ply").write_bytes(SENTINEL)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "vist3a", "generate", "a car", "--preset", "tiny", "-o", "scene.ply",
                          "--seed", str(2**70)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                         timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("vist3a generate: error: --seed ")
    assert (tmp_path / "scene.ply").read_bytes() == SENTINEL and sorted(p.name for p in tmp_path.iterdir()) == [
        "scene.ply"]
