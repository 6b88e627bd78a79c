"""The fast text-to-3D path (vist3a/pipeline/fast.py) on the tiny models: exact where it claims to be exact (options
off, batched CFG), approximate where it says so (First Block Cache skips blocks), and wired into the pipeline, the
CLI and the WanVIST3ASampler node. Speed and quality figures live in bench/bench_fast_path.py, not here."""

import sys

import _fake_comfy
import pytest
import torch
from conftest import REPO_ROOT

from vist3a.pipeline import apply_template
from vist3a.pipeline.fast import FAST, FastOptions, fast_steps, sample_latent
from vist3a.pipeline.presets import tiny_wan_pipeline

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

KW = {"height": 64, "width": 64, "num_frames": 9, "guidance_scale": 5.0, "max_sequence_length": 64}
TEXT = apply_template("a red sports car", None)


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(wan, steps=3, seed=0):
    return wan(prompt=TEXT, negative_prompt="blurry", num_inference_steps=steps, output_type="latent",
               generator=torch.Generator().manual_seed(seed), **KW).frames.float()


def _fast(wan, options, steps=3, seed=0, **extra):
    return sample_latent(wan, TEXT, "blurry", num_inference_steps=steps, options=options,
                         generator=torch.Generator().manual_seed(seed), progress=False, **KW, **extra)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_all_options_off_equals_wanpipeline(wan, single_thread):
    ref = _reference(wan)
    assert torch.equal(_fast(wan, None), ref)


def test_batched_cfg_equals_two_forwards_up_to_rounding(wan, single_thread):
    ref = _reference(wan)
    calls = []
    hook = wan.transformer.register_forward_pre_hook(lambda _m, _a, kw: calls.append(kw["hidden_states"].shape[0]),
                                                     with_kwargs=True)
    try:
        out = _fast(wan, FastOptions(batch_cfg=True, cache="none"))
    finally:
        hook.remove()
    assert calls == [2, 2, 2]  # one forward of batch 2 per step, not two of batch 1
    assert _rel(out, ref) < 1e-5
    assert not torch.equal(_fast(wan, FastOptions(cache="none"), seed=1), ref)  # the seed matters


def test_first_block_cache_skips_blocks_and_stays_close(wan, single_thread):
    def count_block_calls(options):  # a skipped block never runs its feed-forward
        n = [0]
        hooks = [b.ffn.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1)) for b in wan.transformer.blocks]
        try:
            out = _fast(wan, options, steps=8)
        finally:
            for h in hooks:
                h.remove()
        return out, n[0]

    exact, full = count_block_calls(FastOptions(cache="none"))
    cached, fewer = count_block_calls(FastOptions(cache="first_block", cache_threshold=0.2))
    assert full == 8 * len(wan.transformer.blocks)
    assert fewer < full  # some steps reused the cached residual of the later blocks
    assert 0 < _rel(cached, exact) < 0.2 and torch.isfinite(cached).all()
    assert not wan.transformer.is_cache_enabled  # the hook is removed after sampling


def test_fast_options_are_checked():
    assert fast_steps(FAST, 50) == 30 and fast_steps(FAST.replace(steps=7), 50) == 7 and fast_steps(None, 50) == 50
    assert fast_steps(FAST, 1) == 1
    for bad, msg in [({"cache": "magic"}, "choose one of none, first_block"),
                     ({"cache_threshold": float("nan")}, "finite number > 0"), ({"steps": 0}, ">= 1"),
                     ({"steps_scale": 1.5}, "(0, 1]")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("]", r"\]")):
            FAST.replace(**bad).check()


def test_unknown_attention_backend_is_a_clear_error(wan):
    from vist3a.pipeline.fast import apply_fast_options

    with pytest.raises(ValueError, match="attention_backend 'nope' is not usable here"):
        apply_fast_options(wan.transformer, FastOptions(attention_backend="nope"))


def test_pipeline_fast_call(single_thread):
    from vist3a.pipeline import TextTo3DPipeline

    pipe = TextTo3DPipeline.tiny()
    scene = pipe("a red sports car", seed=0, progress=False, fast=True, num_inference_steps=5)
    assert scene.info["steps"] == 3 and scene.info["fast"]["cache"] == "first_block"  # 0.6 x 5
    assert torch.isfinite(scene.gaussians.means).all() and len(scene.gaussians) > 0
    default = pipe("a red sports car", seed=0, progress=False, num_inference_steps=3)
    assert default.info["fast"] is None and default.latent.shape == scene.latent.shape
    with pytest.raises(TypeError, match="fast must be True, False, None or a FastOptions"):
        pipe("a red sports car", seed=0, fast="yes")


def test_cli_generate_fast(tmp_path, monkeypatch, capsys, single_thread):
    from vist3a.cli import main
    from vist3a.io import read_gaussians_ply

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a car", "--preset", "tiny", "--fast", "--no-progress", "-o", "scene.ply"]) == 0
    assert len(read_gaussians_ply(tmp_path / "scene.ply")) > 0
    assert main(["generate", "a car", "--preset", "tiny", "--attention-backend", "warp9", "-o", "s.ply"]) == 2
    err = capsys.readouterr().err
    assert "--attention-backend 'warp9'" in err and "flash" in err and not (tmp_path / "s.ply").exists()


def test_node_fast_option(tmp_path, single_thread):
    _fake_comfy.install(tmp_path)
    try:
        import nodes

        sampler = nodes.NODE_CLASS_MAPPINGS["WanVIST3ASampler"]
        assert sampler.INPUT_TYPES()["optional"]["fast"][0] == "BOOLEAN"
        args = ("none (base Wan)", 1.0, 0, 3, 5.0, 9, 64, 64, 5.0, "tiny")
        fast, = sampler().sample(*args, fast=True)
        slow, = sampler().sample(*args)
        assert fast["samples"].shape == slow["samples"].shape == (1, 16, 3, 8, 8)
        assert _rel(fast["samples"], slow["samples"]) < 0.2  # same seed, same steps: close, not equal (cache)
    finally:
        _fake_comfy.uninstall()
