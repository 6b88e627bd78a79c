"""Stitching-layer config grammar: parse, round trip, size arithmetic, helpful errors."""

import pytest

from vist3a.stitching import RELEASED_CONFIG, StitchingConfig, parse_config


def test_released_config_parses():
    c = StitchingConfig.parse(RELEASED_CONFIG)
    assert (c.dims, c.kernel, c.out_channels, c.stride, c.padding, c.dilation, c.in_channels) == (
        3, (5, 3, 3), 1024, (1, 2, 2), (2, 1, 1), (1, 1, 1), 16)
    assert c.weight_shape == (1024, 16, 5, 3, 3)
    assert c.fan_in == 720
    assert c.to_string() == RELEASED_CONFIG
    assert c.output_size((13, 64, 64)) == (13, 32, 32)


@pytest.mark.parametrize("text, dims, kernel, stride, padding, dilation, canonical", [
    ("conv1d_k3_o8", 1, (3,), (1,), (0,), (1,), "conv1d_k3_o8"),
    ("conv2d_k3x5_o32_s2_p1x2", 2, (3, 5), (2, 2), (1, 2), (1, 1), "conv2d_k3x5_o32_s2_p1x2"),
    ("conv3d_k3_o4_d1x2x2", 3, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 2, 2), "conv3d_k3_o4_d1x2x2"),
    ("CONV3D_K5X3X3_O1024_S1X2X2_P2X1X1", 3, (5, 3, 3), (1, 2, 2), (2, 1, 1), (1, 1, 1), RELEASED_CONFIG),
    ("conv3d_k3x3x3_o16_p1x1x1_s1", 3, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), "conv3d_k3_o16_p1"),
    ("conv2d_k1_o8_p0", 2, (1, 1), (1, 1), (0, 0), (1, 1), "conv2d_k1_o8"),
])
def test_valid_forms_parse_and_round_trip(text, dims, kernel, stride, padding, dilation, canonical):
    c = parse_config(text)
    assert (c.dims, c.kernel, c.stride, c.padding, c.dilation) == (dims, kernel, stride, padding, dilation)
    assert c.to_string() == canonical
    assert StitchingConfig.parse(c.to_string()) == c
    assert str(c) == canonical


def test_frozen_and_in_channels():
    c = StitchingConfig.parse("conv2d_k3_o8", in_channels=48)
    assert c.in_channels == 48 and c.weight_shape == (8, 48, 3, 3)
    with pytest.raises(AttributeError):
        c.out_channels = 3  # type: ignore[misc]
    assert StitchingConfig.parse(c) is c
    assert StitchingConfig(dims=3, kernel=3, out_channels=4).kernel == (3, 3, 3)


def test_size_arithmetic():
    c = StitchingConfig.parse("conv3d_k3_o8_s1x2x2_p1_d1x2x2")
    assert c.receptive == (3, 5, 5)
    out = c.output_size((9, 40, 30))
    assert out == ((9 + 2 - 3) // 1 + 1, (40 + 2 - 5) // 2 + 1, (30 + 2 - 5) // 2 + 1)
    assert c.output_size(c.input_size_for(out)) == out
    with pytest.raises(ValueError, match="too small"):
        StitchingConfig.parse("conv2d_k5_o8").output_size((2, 2))


@pytest.mark.parametrize("text, fragment", [
    ("", "expected 'conv"),
    ("conv4d_k3_o8", "must start with 'conv1d'"),
    ("linear_k3_o8", "must start with"),
    ("conv3d_o8", "missing kernel"),
    ("conv3d_k3", "missing out_channels"),
    ("conv3d_k3x3_o8", "has 2 values"),
    ("conv2d_k3_o8_q2", "unknown part 'q2'"),
    ("conv2d_k3_o8_s2_s2", "given twice"),
    ("conv2d_k3_o8_s2y2", "not an int"),
    ("conv2d_k3_o8x8", "single int"),
    ("conv2d_k0_o8", ">= 1"),
    ("conv2d_k3_o8_s0", ">= 1"),
    ("conv2d_k3_o0", ">= 1"),
    ("conv2d_k3_o8_", "unknown part ''"),
    ("conv2d_k-3_o8", "not an int"),
])
def test_malformed_strings_raise_helpfully(text, fragment):
    with pytest.raises(ValueError) as info:
        StitchingConfig.parse(text)
    assert fragment in str(info.value)
    if text:
        assert "conv3d_k5x3x3_o1024_s1x2x2_p2x1x1" in str(info.value) or ">= 1" in str(info.value) \
            or "single int" in str(info.value)
