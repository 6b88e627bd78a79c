"""Video-VAE adapters (tiny random diffusers Wan / CogVideoX): shapes, [0, 1] input, raw-latent convention."""

from __future__ import annotations

import pytest
import torch

from vist3a.stitching.vae import (
    CogVideoXVAE,
    VideoVAE,
    WanVAE,
    latent_frames,
    tiny_video_vae,
    wrap_video_vae,
)


@pytest.fixture(scope="module")
def wan():
    return tiny_video_vae("wan", seed=0, sample=False)


@pytest.fixture(scope="module")
def cog():
    return tiny_video_vae("cogvideox", seed=0, sample=False)


def clip(t=9, size=64, seed=0):
    return torch.rand(1, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_latent_frames():
    assert latent_frames(9) == 3 and latent_frames(13) == 4 and latent_frames(1) == 1 and latent_frames(49) == 13


@pytest.mark.parametrize("name", ["wan", "cog"])
def test_shapes_and_protocol(name, request):
    vae = request.getfixturevalue(name)
    assert isinstance(vae, VideoVAE)
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (16, 4, 8)
    z = vae.encode(clip(9))
    assert z.shape == (1, 16, 3, 8, 8)  # T = 9 -> T_lat = 3, 64 / 8 = 8
    assert vae.encode(clip(13)).shape == (1, 16, 4, 8, 8)
    assert vae.latent_shape(13, 64, 64) == (16, 4, 8, 8)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        vae.encode(clip(8))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(clip(9, size=60))
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        vae.encode(torch.rand(1, 3, 9, 64, 64))


@pytest.mark.parametrize("name", ["wan", "cog"])
def test_raw_latent_is_the_encoder_distribution_of_the_minus1_1_clip(name, request):
    """encode([0,1] clip) == the diffusers latent_dist mean of (2 clip - 1) in (B, 3, T, H, W): no normalisation, no
    scaling factor."""
    vae = request.getfixturevalue(name)
    c = clip(9, seed=1)
    with torch.no_grad():
        ref = vae.vae.encode(c.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean
        wrong_range = vae.vae.encode(c.permute(0, 2, 1, 3, 4)).latent_dist.mean
    z = vae.encode(c)
    torch.testing.assert_close(z, ref)
    assert not torch.allclose(z, wrong_range)
    # model-space conversion is the documented normalisation and round-trips
    torch.testing.assert_close(vae.from_model_space(vae.to_model_space(z)), z)
    assert not torch.allclose(vae.to_model_space(z), z)


def test_wan_model_space_uses_latents_mean_std(wan):
    z = torch.randn(1, 16, 2, 4, 4)
    mean = torch.tensor(wan.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(wan.to_model_space(z), (z - mean) / std)


def test_cogvideox_model_space_uses_scaling_factor(cog):
    z = torch.randn(1, 16, 2, 4, 4)
    torch.testing.assert_close(cog.to_model_space(z), z * cog.vae.config.scaling_factor)


def test_sampling_is_seeded_and_differs_from_mean(wan):
    s1 = WanVAE(wan.vae, sample=True, generator=torch.Generator().manual_seed(3)).encode(clip(9))
    s2 = WanVAE(wan.vae, sample=True, generator=torch.Generator().manual_seed(3)).encode(clip(9))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, wan.encode(clip(9)))


def test_wrap_picks_adapter(wan, cog):
    assert isinstance(wrap_video_vae(wan.vae), WanVAE)
    assert isinstance(wrap_video_vae(cog.vae), CogVideoXVAE)
    with pytest.raises(ValueError, match="no adapter"):
        wrap_video_vae(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown VAE"):
        tiny_video_vae("no-such-vae")  # svd and hunyuan are adapters too (tests/test_vae_hunyuan_svd.py)
