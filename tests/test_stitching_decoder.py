"""StitchedDecoder on tiny models: equals the full model's forward_from, removes the cut part, validates inputs."""

import pytest
import torch
from _models_helpers import TINY_STITCHING, tiny_stitched

from vist3a import Gaussians, Pointmap
from vist3a.models import AnySplat, AnySplatConfig
from vist3a.stitching import StitchedDecoder, StitchingLayer


def _inputs(b=1, t_lat=2, h=4, w=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    t = (t_lat - 1) * 4 + 1
    return (torch.randn(b, 16, t_lat, h, w, generator=g),
            torch.rand(b, t, 3, h * 8 // 16 * 14, w * 8 // 16 * 14, generator=g))


@pytest.mark.parametrize("hw", [(4, 4), (4, 6)])  # square and non-square (2x2 and 2x3 token grids)
def test_anysplat_decoder_equals_full_model_forward_from(hw):
    dec, full = tiny_stitched()
    lat, frames = _inputs(b=2, h=hw[0], w=hw[1])
    grid = (hw[0] // 2, hw[1] // 2)
    with torch.no_grad():
        out = dec(lat, frames)
        y = dec.stitching(lat, grid)
        tokens = y.permute(0, 2, 3, 4, 1).reshape(-1, grid[0] * grid[1], y.shape[1])
        ref = full.forward_from("enc_blocks_2", tokens, frames)
    for key in ("pose_enc", "depth", "depth_conf", "anchor_feats", "world_points", "c2w"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    assert out["depth"].shape == (2, 5, grid[0] * 14, grid[1] * 14, 1)


def test_cut_part_is_removed_and_blocks_reindexed():
    dec, full = tiny_stitched(cut="enc_blocks_1")
    pe, full_pe = dec.model.aggregator.patch_embed, full.aggregator.patch_embed
    assert pe.patch_embed is None and pe.first_block == 1 and len(pe.blocks) == len(full_pe.blocks) - 1
    sd = dec.state_dict()
    assert not any("patch_embed.patch_embed" in k for k in sd)
    torch.testing.assert_close(sd["model.encoder.aggregator.patch_embed.blocks.0.attn.qkv.weight"],
                               full_pe.blocks[1].attn.qkv.weight, rtol=0, atol=0)
    assert "model.encoder.aggregator.patch_embed.blocks.1.attn.qkv.weight" in sd
    assert "model.encoder.aggregator.patch_embed.blocks.2.attn.qkv.weight" not in sd
    n_full = sum(p.numel() for p in full.parameters())
    n_dec = sum(p.numel() for p in dec.model.parameters())
    removed = sum(p.numel() for p in full_pe.patch_embed.parameters()) + sum(p.numel() for p in
                                                                             full_pe.blocks[0].parameters())
    assert n_full - n_dec == removed
    assert dec.model.cut_points()[0] == "enc_blocks_1"
    with pytest.raises(ValueError, match="patch embedding and blocks 0..0 were removed"):
        dec.model(torch.rand(1, 2, 3, 28, 28))


def test_predict_returns_containers():
    dec, _ = tiny_stitched()
    lat, frames = _inputs()
    pred = dec.predict(lat, frames)
    assert isinstance(pred.gaussians[0], Gaussians) and pred.gaussians[0].means.shape == (5 * 28 * 28, 3)
    assert len(pred.cameras) == 1 and pred.depth.shape == (1, 5, 28, 28)
    vdec, _ = tiny_stitched("vggt")
    assert not vdec.needs_frames
    vpred = vdec.predict(lat)  # VGGT needs no frames
    assert isinstance(vpred.pointmaps[0], Pointmap) and vpred.depth.shape == (1, 5, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(vdec(lat)["depth"], vdec(lat, frames)["depth"], rtol=0, atol=0)


@pytest.mark.parametrize("make, fragment", [
    (lambda lat, fr: (lat[:, :12], fr), "has 12 channels, expected 16"),
    (lambda lat, fr: (lat[0], fr), "must be 5-D"),
    (lambda lat, fr: (lat, None), "pass the VAE-decoded frames as frames=(B=1, T=5, 3, 28, 28)"),
    (lambda lat, fr: (lat, fr[:, :4]), "decode to T = (2-1)*4+1 = 5 video frames, but 4 frames"),
    (lambda lat, fr: (lat, torch.rand(1, 5, 3, 32, 32)), "pairs with 28x28 3D-model frames"),
    (lambda lat, fr: (lat, fr.permute(0, 2, 1, 3, 4)), "must be (B, T, 3, H, W)"),
    (lambda lat, fr: (lat, fr * 2 - 1), "pass (frames + 1) / 2"),
    (lambda lat, fr: (lat, torch.cat([fr, fr])), "latent batch 1 but frames batch 2"),
    (lambda lat, fr: (lat[..., :3, :3], fr), "must be a multiple of 16"),
])
def test_input_errors_name_the_problem(make, fragment):
    dec, _ = tiny_stitched()
    lat, frames = _inputs()
    with pytest.raises(ValueError) as info:
        dec(*make(lat, frames))
    assert fragment in str(info.value)


def test_resolution_message_uses_official_numbers():
    dec, _ = tiny_stitched()
    assert dec.model_size_for((512, 512)) == (28 * 16, 28 * 16) == (448, 448)
    with pytest.raises(ValueError, match="448x448 3D-model frames"):
        dec._grid_and_images(torch.zeros(1, 16, 1, 64, 64), torch.zeros(1, 1, 3, 518, 518))


def test_construction_errors():
    def model():
        return AnySplat(AnySplatConfig.tiny())

    with pytest.raises(ValueError, match="'enc_blocks_k'"):
        StitchedDecoder(model(), "agg_blocks_2", StitchingLayer(TINY_STITCHING))
    with pytest.raises(ValueError, match="outside enc_blocks_1..enc_blocks_3"):
        StitchedDecoder(model(), "enc_blocks_7", StitchingLayer(TINY_STITCHING))
    with pytest.raises(ValueError, match="_o64"):
        StitchedDecoder(model(), "enc_blocks_2", StitchingLayer("conv3d_k3_o32_s1x2x2_p1"))
    with pytest.raises(TypeError, match="AnySplat, VGGT or MVDUSt3R"):
        StitchedDecoder(torch.nn.Linear(2, 2), "enc_blocks_2", StitchingLayer(TINY_STITCHING))
    m = model()
    StitchedDecoder(m, "enc_blocks_2", StitchingLayer(TINY_STITCHING))
    StitchedDecoder(m, "enc_blocks_2", StitchingLayer(TINY_STITCHING))  # same cut again: fine
    with pytest.raises(ValueError, match="already cut at enc_blocks_2"):
        StitchedDecoder(m, "enc_blocks_1", StitchingLayer(TINY_STITCHING))
