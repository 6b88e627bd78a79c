"""StitchingLayer: shapes of the released config at small sizes, im2col == conv, official conv semantics, errors."""

import pytest
import torch
import torch.nn.functional as F

from vist3a.stitching import (
    RELEASED_CONFIG,
    StitchingLayer,
    num_video_frames,
    resize_latent,
    to_rows,
)


def test_released_config_shapes_small():
    layer = StitchingLayer(RELEASED_CONFIG)
    assert tuple(layer.weight.shape) == (1024, 16, 5, 3, 3) and tuple(layer.bias.shape) == (1024,)
    assert set(layer.state_dict()) == {"weight", "bias"}
    lat = torch.randn(1, 16, 2, 16, 16)
    with torch.no_grad():
        y = layer(lat, (8, 8))
    assert tuple(y.shape) == (1, 1024, 5, 8, 8)
    # the official resize: 512 px latent 64x64 -> conv input 64x64 (not the minimal 63)
    assert layer.input_size(4, (32, 32)) == (13, 64, 64)
    assert layer.output_size(4, (32, 32)) == (13, 32, 32)
    assert num_video_frames(4) == 13 and num_video_frames(1) == 1


def test_matches_official_conv3d_semantics():
    """Trilinear align_corners resize + nn.Conv3d(padding_mode='replicate') with the same weights."""
    torch.manual_seed(0)
    layer = StitchingLayer("conv3d_k5x3x3_o8_s1x2x2_p2x1x1").double()
    ref = torch.nn.Conv3d(16, 8, (5, 3, 3), stride=(1, 2, 2), padding=(2, 1, 1), padding_mode="replicate").double()
    ref.load_state_dict(layer.state_dict())
    lat = torch.randn(2, 16, 3, 10, 12, dtype=torch.float64)
    x = F.interpolate(lat, size=(9, 12, 16), mode="trilinear", align_corners=True)
    with torch.no_grad():
        got = layer(lat, (6, 8))
        want = ref(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.resize(lat, (6, 8)), x, rtol=0, atol=0)
    assert resize_latent(x, tuple(x.shape[2:])) is x


@pytest.mark.parametrize("config", [
    RELEASED_CONFIG.replace("o1024", "o12"), "conv3d_k3_o6_s2x1x2_p1_d1x2x1", "conv2d_k3_o7_s2_p1",
    "conv2d_k3x1_o5_d2x1_p2x0", "conv1d_k5_o4_p2", "conv1d_k3_o4_d2",
])
def test_unfold_times_weight_equals_conv(config):
    torch.manual_seed(1)
    layer = StitchingLayer(config).double()
    x = torch.randn(2, 16, 7, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        y = layer.conv(x)
        cols = layer.unfold(x)
    assert cols.shape == (y.shape[0] * y[0, 0].numel(), layer.config.fan_in)
    fit = cols @ layer.weight.flatten(1).T + layer.bias
    torch.testing.assert_close(fit, to_rows(y), rtol=0, atol=1e-12)


def test_unfold_uses_replicate_not_zero_padding():
    layer = StitchingLayer("conv2d_k3_o2_p1").double()
    x = torch.ones(1, 16, 1, 4, 4, dtype=torch.float64) * 3.0
    assert torch.all(layer.unfold(x) == 3.0)  # zero padding would put zeros at the border rows


def test_temporal_stride_still_outputs_one_feature_map_per_frame():
    layer = StitchingLayer("conv3d_k3_o4_s2_p1")
    assert layer.input_size(2, (4, 4)) == (10, 8, 8)
    assert tuple(layer(torch.randn(1, 16, 2, 8, 8), (4, 4)).shape) == (1, 4, 5, 4, 4)


@pytest.mark.parametrize("shape, fragment", [
    ((16, 2, 8, 8), "must be 5-D"),
    ((1, 12, 2, 8, 8), "has 12 channels, expected 16"),
    ((1, 16, 0, 8, 8), "at least 1 latent frame"),
])
def test_errors(shape, fragment):
    layer = StitchingLayer("conv3d_k5x3x3_o8_s1x2x2_p2x1x1")
    with pytest.raises(ValueError, match=fragment):
        layer(torch.randn(*shape), (4, 4))


def test_in_channels_override():
    layer = StitchingLayer("conv2d_k1_o3", in_channels=4)
    assert layer.in_channels == 4 and tuple(layer.weight.shape) == (3, 4, 1, 1)
    assert tuple(layer(torch.randn(1, 4, 2, 3, 3), (3, 3)).shape) == (1, 3, 5, 3, 3)
