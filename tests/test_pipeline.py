"""Text -> 3D and video -> 3D pipelines on tiny random models (CPU, offline, seconds)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vist3a import Gaussians, Pointmap
from vist3a.io import (
    load_gaussians,
    read_point_cloud_ply,
    save_gaussians,
    write_point_cloud_ply,
)
from vist3a.pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    PROMPT_TEMPLATE,
    GenerationSettings,
    TextTo3DPipeline,
    VideoTo3DPipeline,
    apply_template,
    check_frames,
    check_size,
    load_stitched_decoder,
    model_size,
    to_model_space,
    to_raw_latent,
)
from vist3a.pipeline.frames import resample_indices


@pytest.fixture(scope="module")
def tiny_pipe():
    return TextTo3DPipeline.tiny(seed=0)


def test_published_defaults():
    s = GenerationSettings()
    assert (s.num_frames, s.height, s.width, s.num_inference_steps, s.guidance_scale, s.flow_shift) == (
        13, 512, 512, 50, 7.5, 5.0)
    assert s.negative_prompt == DEFAULT_NEGATIVE_PROMPT and s.prompt_template == PROMPT_TEMPLATE
    assert apply_template("a red car", PROMPT_TEMPLATE).startswith(
        "The camera rotates around the scene, maintaining constant distance: `a red car`")
    assert apply_template("a red car", None) == "a red car"
    assert model_size(512, 512) == (448, 448) and model_size(480, 832) == (420, 728)


@pytest.mark.parametrize("frames", [0, 4, 8, 12, 14, 1])
def test_bad_frame_counts(frames):
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        check_frames(frames)


@pytest.mark.parametrize("hw", [(500, 512), (512, 520), (8, 8)])
def test_bad_sizes(hw):
    with pytest.raises(ValueError, match="multiples of 16"):
        check_size(*hw)


def test_pipeline_rejects_bad_inputs_before_sampling(tiny_pipe):
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_pipe("   ")
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        tiny_pipe("a car", num_frames=10)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_pipe("a car", height=72)
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_pipe("a car", num_inference_steps=0)


def test_latent_unnormalisation_round_trip(tiny_pipe):
    vae = tiny_pipe.wan.vae
    z = torch.randn(1, 16, 3, 8, 8)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(to_raw_latent(vae, z), z * std + mean)
    torch.testing.assert_close(to_model_space(vae, to_raw_latent(vae, z)), z)


def test_text_to_ply_end_to_end(tiny_pipe, tmp_path, caplog):
    plyfile = pytest.importorskip("plyfile")
    with caplog.at_level("WARNING"):
        out = tiny_pipe("a red sports car", seed=5, progress=False)
    assert "UNTRAINED" in caplog.text
    t, (h3, w3) = 9, model_size(64, 64)
    assert isinstance(out.gaussians, Gaussians) and len(out.gaussians) == t * h3 * w3
    assert len(out.cameras) == t and (out.cameras.width, out.cameras.height) == (w3, h3)
    assert isinstance(out.pointmap, Pointmap) and out.pointmap.points.shape == (t, h3, w3, 3)
    assert out.frames.shape == (t, 3, 64, 64) and 0 <= float(out.frames.min()) <= float(out.frames.max()) <= 1
    assert out.depth.shape == (t, h3, w3) and out.latent.shape == (1, 16, 3, 8, 8)
    assert out.info["seed"] == 5 and out.info["text"].endswith("consistency.")
    path = tmp_path / "scene.ply"
    save_gaussians(path, out.gaussians)
    back = load_gaussians(path)
    torch.testing.assert_close(back.means, out.gaussians.means)
    torch.testing.assert_close(back.opacities, out.gaussians.opacities, rtol=1e-4, atol=1e-5)
    vertex = plyfile.PlyData.read(str(path))["vertex"]
    assert vertex.count == len(out.gaussians)
    np.testing.assert_allclose(vertex["x"], out.gaussians.means[:, 0].numpy(), rtol=1e-6)
    cloud_path = tmp_path / "points.ply"
    write_point_cloud_ply(cloud_path, out.pointmap.to_point_cloud())
    assert len(read_point_cloud_ply(cloud_path)) == t * h3 * w3


def test_same_seed_same_bytes(tiny_pipe, tmp_path):
    paths = []
    for i, seed in enumerate([11, 11, 12]):
        out = tiny_pipe("a wooden cabin", seed=seed, progress=False)
        paths.append(tmp_path / f"{i}.ply")
        save_gaussians(paths[-1], out.gaussians)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    again = TextTo3DPipeline.tiny(seed=0)("a wooden cabin", seed=11, progress=False)  # fresh models, same weights
    save_gaussians(tmp_path / "fresh.ply", again.gaussians)
    assert (tmp_path / "fresh.ply").read_bytes() == paths[0].read_bytes()


def test_vggt_decoder_gives_pointmap_only():
    pipe = TextTo3DPipeline.tiny(seed=0, decoder_kind="vggt")
    out = pipe("a bridge", seed=1, num_inference_steps=1, return_frames=False, progress=False)
    assert out.gaussians is None and out.frames is None
    assert out.pointmap.points.shape == (9, 56, 56, 3) and torch.isfinite(out.pointmap.points).all()


def _write_clip(folder, n=11, size=(96, 80)):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"frame_{i}.png")  # natural sort: frame_2 before frame_10
    return folder


def test_video_to_3d_from_png_folder(tmp_path):
    folder = _write_clip(tmp_path / "clip")
    pipe = VideoTo3DPipeline.tiny(seed=0)
    out = pipe(folder, seed=0)
    assert out.frames.shape == (9, 3, 64, 64) and out.latent.shape == (1, 16, 3, 8, 8)
    assert len(out.gaussians) == 9 * 56 * 56 and len(out.cameras) == 9
    with pytest.raises(ValueError, match=r"\(9, 3, 64, 64\) is needed"):
        pipe(torch.rand(9, 3, 60, 64))
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        pipe(folder, num_frames=7)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe(tmp_path / "missing")


def test_resample_indices_keep_ends():
    assert resample_indices(21, 5) == [0, 5, 10, 15, 20]
    assert resample_indices(3, 5) == [0, 0, 1, 2, 2]


def test_missing_weights_offline_name_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"(?s)nobody/no-wan \(--wan\).*hf download nobody/no-wan.*--wan <folder>"):
        TextTo3DPipeline.from_pretrained(wan="nobody/no-wan")
    with pytest.raises(OSError, match=r"nobody/none/sub/adapter_config.json.*--lora"):
        from vist3a.pipeline.wan import load_vist3a_lora

        load_vist3a_lora(None, "nobody/none/sub")
    with pytest.raises(OSError, match="decoder_config.json"):
        load_stitched_decoder("nobody/none-decoder")
    with pytest.raises(FileNotFoundError, match="decoder.pth does not exist"):
        load_stitched_decoder("/nonexistent/decoder.pth")


def test_vist3a_lora_loads_and_merges(tmp_path):
    from peft import LoraConfig, get_peft_model

    from vist3a.pipeline.presets import tiny_wan_pipeline
    from vist3a.pipeline.wan import load_vist3a_lora

    base = tiny_wan_pipeline(seed=0).transformer
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    peft_model = get_peft_model(tiny_wan_pipeline(seed=0).transformer, cfg)
    peft_model.save_pretrained(str(tmp_path / "lora"))
    expected = peft_model.merge_and_unload().state_dict()
    merged = load_vist3a_lora(base, tmp_path / "lora")
    key = "blocks.0.attn2.to_k.weight"
    assert not torch.equal(expected[key], tiny_wan_pipeline(seed=0).transformer.state_dict()[key])
    for k, v in expected.items():
        torch.testing.assert_close(merged.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_vist3a_lora(base, tmp_path)


def test_video_file_frames_or_clear_error(tmp_path, monkeypatch):
    import sys

    from vist3a.pipeline.frames import load_frames

    path = tmp_path / "clip.mp4"
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        writer = imageio_ffmpeg.write_frames(str(path), (48, 32), fps=8, macro_block_size=1)
        writer.send(None)
        for i in range(7):
            writer.send(np.full((32, 48, 3), i * 30, dtype=np.uint8))
        writer.close()
        frames = load_frames(path, 5, 16, 16)
        assert frames.shape == (5, 3, 16, 16)
        assert float(frames[0].mean()) < float(frames[-1].mean())  # first and last frames kept, in order
    else:
        path.write_bytes(b"not a video")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ValueError, match="extract the frames"):
        load_frames(path, 5, 16, 16)
