"""Pointmap -> PointCloud flattening and point clouds as splats."""

import pytest
import torch

from vist3a import Cameras, PointCloud, Pointmap
from vist3a.sh import sh_dc_to_rgb


def make_pointmap(v=2, h=4, w=5):
    pts = torch.randn(v, h, w, 3)
    conf = torch.arange(v * h * w, dtype=torch.float32).reshape(v, h, w) + 1
    cols = torch.rand(v, h, w, 3)
    return Pointmap(pts, conf, cols, Cameras.orbit(v, width=w, height=h))


def test_flatten_with_threshold_keeps_matching_points():
    pm = make_pointmap()
    pc = pm.to_point_cloud(min_confidence=21.0)
    keep = pm.confidence.reshape(-1) >= 21
    assert len(pc) == int(keep.sum()) == 20
    assert torch.equal(pc.points, pm.points.reshape(-1, 3)[keep])
    assert torch.equal(pc.colors, pm.colors.reshape(-1, 3)[keep])
    assert bool((pc.confidence >= 21).all())


def test_flatten_drops_percentile_and_non_finite():
    pm = make_pointmap()
    pm.points[0, 0, 0, 1] = float("nan")
    pc = pm.to_point_cloud(drop_percentile=50.0)
    assert len(pc) == 20  # the upper half of 40 confidences, all finite
    assert bool(torch.isfinite(pc.points).all())


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="confidence must be"):
        Pointmap(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match="do not match the points"):
        Pointmap(torch.zeros(2, 2, 2, 3), torch.zeros(2, 2, 2), torch.zeros(2, 2, 2, 3), Cameras.orbit(3, width=2, height=2))


def test_point_cloud_to_gaussians_keeps_colour():
    cols = torch.rand(7, 3)
    g = PointCloud(torch.randn(7, 3), cols).to_gaussians(radius=0.05)
    assert g.sh_degree == 0 and torch.allclose(sh_dc_to_rgb(g.sh[:, 0]), cols, atol=1e-6)
    assert torch.equal(g.scales, torch.full((7, 3), 0.05))
    with pytest.raises(ValueError, match="colors must lie in"):
        PointCloud(torch.zeros(1, 3), torch.full((1, 3), 2.0))
