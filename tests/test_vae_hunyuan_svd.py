"""HunyuanVideo and SVD VAE adapters on tiny random instances of the real diffusers classes: their real factors
(16 ch 4x8x8; 4 ch 1x8x8), layouts, model-space scaling, and runs through the layer search, finetuning and the
noise-robustness evaluation (``--vae hunyuan|svd``)."""

from __future__ import annotations

import json

import pytest
import torch

from vist3a.stitching.vae import SVDVAE, HunyuanVideoVAE, tiny_video_vae, wrap_video_vae


@pytest.mark.parametrize("kind, cls, channels, temporal", [("hunyuan", HunyuanVideoVAE, 16, 4),
                                                          ("svd", SVDVAE, 4, 1)])
def test_adapters_factors_and_layout(kind, cls, channels, temporal, single_thread):
    vae = tiny_video_vae(kind, seed=0, sample=False)
    assert isinstance(vae, cls) and isinstance(wrap_video_vae(vae.vae), cls)
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (channels, temporal, 8)
    clip = torch.rand(2, 5, 3, 32, 48)
    z = vae.encode(clip)
    t_lat = 2 if temporal == 4 else 5
    assert z.shape == (2, channels, t_lat, 4, 6) and vae.latent_shape(5, 32, 48) == (channels, t_lat, 4, 6)
    # batch items are independent (no mixing across the folded batch / frame axes)
    torch.testing.assert_close(vae.encode(clip[1:]), z[1:], rtol=1e-4, atol=1e-5)
    if kind == "svd":  # one latent per frame: frame 2 alone encodes to latent frame 2
        torch.testing.assert_close(vae.encode(clip[:1, 2:3])[:, :, 0], z[:1, :, 2], rtol=1e-4, atol=1e-5)
    scale = float(vae.vae.config.scaling_factor)
    assert scale == pytest.approx(0.476986 if kind == "hunyuan" else 0.18215)
    torch.testing.assert_close(vae.from_model_space(vae.to_model_space(z)), z)
    torch.testing.assert_close(vae.to_model_space(z), z * scale)
    frames = vae.decode(z[:1])
    assert frames.shape == (1, 5, 3, 32, 48) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    if kind == "hunyuan":
        with pytest.raises(ValueError, match="4k \\+ 1"):
            vae.encode(torch.rand(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.rand(1, 5, 3, 30, 32))


@pytest.mark.parametrize("kind", ["hunyuan", "svd"])
def test_layer_search_runs_on_the_vae(kind, tmp_path, single_thread):
    from training import find_stitching_layer as fsl

    out = tmp_path / "search"
    assert fsl.main(["--tiny", "--vae", kind, "--model", "vggt", "--synthetic", "--samples", "2", "--heldout", "1",
                     "--views", "5", "--layers", "enc_blocks_1,enc_blocks_2", "--out", str(out), "--quiet"]) == 0
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["vae"] == kind and len(ranking["ranking"]) == 2
    from safetensors import safe_open

    with safe_open(str(out / "stitching_layer_enc_blocks_1.safetensors"), "pt") as fh:
        assert fh.metadata()["in_channels"] == ("16" if kind == "hunyuan" else "4")
        assert fh.get_tensor("weight").shape[1] == (16 if kind == "hunyuan" else 4)


def test_finetune_and_noise_eval_with_svd(tmp_path, single_thread):
    """SVD latents: 4 channels, one latent frame per video frame, through finetuning and the noise evaluation."""
    from training import eval_noise_robustness as noise
    from training import train_stitched_decoder as tsd
    from vist3a.stitching import load_decoder

    assert tsd.main(["--preset", "tiny", "--model", "vggt", "--vae", "svd", "--synthetic", "1", "--views", "5",
                     "--steps", "1", "--warmup", "0", "--output", str(tmp_path / "ft"), "--quiet"]) == 0
    dec = load_decoder(tmp_path / "ft" / "decoder")
    assert dec.stitching.in_channels == 4 and dec.stitching.temporal_factor == 1
    cfg = json.loads((tmp_path / "ft" / "decoder" / "decoder_config.json").read_text())
    assert cfg["latent_channels"] == 4 and cfg["temporal_factor"] == 1
    assert noise.main(["--preset", "tiny", "--vae-kind", "svd", "--synthetic", "--clips", "1", "--views", "5",
                       "--alphas", "0,0.5", "--render-views", "2", "--norm", "rms", "--output",
                       str(tmp_path / "noise"), "--quiet"]) == 0
    assert (tmp_path / "noise").is_dir()
