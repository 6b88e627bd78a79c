"""Projection of 3D Gaussians (vist3a.render.projection) against gsplat's pure-PyTorch reference implementation."""

import math

import pytest
import torch

from vist3a.cameras import Cameras, look_at
from vist3a.render.projection import ALPHA_THRESHOLD, box_extent, project_gaussians
from vist3a.rotations import normalize_quat

gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")

W, H = 40, 30


pytestmark = pytest.mark.usefixtures("single_thread")


def _cameras(dtype=torch.float64) -> Cameras:
    eye = torch.tensor([[0.0, -0.3, -3.0], [2.5, 0.2, -1.0]], dtype=dtype)
    c2w = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, -1.0, 0.0], dtype=dtype))
    k = torch.tensor(
        [[[35.0, 0, 20.0], [0, 35.0, 15.0], [0, 0, 1]],  # centred principal point
         [[30.0, 0, 12.5], [0, 42.0, 20.0], [0, 0, 1]]],  # off-centre, fx != fy
        dtype=dtype,
    )
    return Cameras(c2w, k, W, H)


def _scene(n=400, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * 1.5  # wide: some behind / beside the cameras
    scales = torch.exp(torch.randn(n, 3, generator=gen, dtype=dtype) * 0.7) * 0.08
    quats = normalize_quat(torch.randn(n, 4, generator=gen, dtype=dtype))
    opacities = torch.rand(n, generator=gen, dtype=dtype)
    opacities[:20] = ALPHA_THRESHOLD * 0.5  # too transparent: culled by us, not by gsplat's _torch_impl
    return means, quats, scales, opacities


def _gsplat_projection(means, quats, scales, cams, near=0.01, far=1e10):
    covars, _ = gsplat_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    return gsplat_impl._fully_fused_projection(means, covars, cams.w2c, cams.K, W, H, eps2d=0.3, near_plane=near,
                                               far_plane=far)


def test_projection_matches_gsplat_torch_impl():
    cams = _cameras()
    means, quats, scales, opacities = _scene()
    radii_ref, means2d_ref, depths_ref, conics_ref, _ = _gsplat_projection(means, quats, scales, cams)
    proj = project_gaussians(means, quats, scales, opacities, cams.w2c, cams.K, W, H)

    valid_ref = (radii_ref > 0).all(-1)
    both = valid_ref & proj.visible
    assert both.sum() > 100, "the scene should have many splats visible in both"
    torch.testing.assert_close(proj.depths, depths_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(proj.means2d[both], means2d_ref[both], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(proj.conics[both], conics_ref[both], rtol=1e-9, atol=1e-12)

    # The scene must exercise the frustum clamp of the Jacobian: visible splats whose centre lies beyond
    # the clamp limits (x/z > (W - cx)/fx + 0.3 tan_fovx, etc.) and whose conics still agree.
    fx, cx = cams.K[:, 0, 0, None], cams.K[:, 0, 2, None]
    x_over_z = (proj.means2d[..., 0] - cx) / fx
    lim = (W - cx) / fx + 0.3 * 0.5 * W / fx
    assert (both & (x_over_z > lim)).any()

    # Our visibility is gsplat's minus the opacity cull, with boxes no larger than gsplat's fixed 3.33 sigma.
    assert not (proj.visible & ~valid_ref).any()
    assert not proj.visible[:, :20].any()  # opacity < 1/255
    centre_inside = (
        (means2d_ref[..., 0] > 0) & (means2d_ref[..., 0] < W) & (means2d_ref[..., 1] > 0) & (means2d_ref[..., 1] < H)
    )
    expect_visible = valid_ref & centre_inside & (opacities >= ALPHA_THRESHOLD)
    assert proj.visible[expect_visible].all()
    # Behind-the-camera splats exist and are culled.
    assert ((depths_ref < 0.01) & ~proj.visible).any() and not (proj.visible & (depths_ref < 0.01)).any()


def test_radii_use_the_opacity_aware_extent():
    cams = _cameras()
    means, quats, scales, opacities = _scene(seed=1)
    radii_ref, _, _, conics_ref, _ = _gsplat_projection(means, quats, scales, cams)
    proj = project_gaussians(means, quats, scales, opacities, cams.w2c, cams.K, W, H)
    a, b, c = conics_ref.unbind(-1)
    det = a * c - b * b
    cov_xx, cov_yy = c / det, a / det  # inverse of the conic = 2D covariance
    extent = torch.sqrt(2 * torch.log(255 * opacities)).clamp_max(3.33)
    want = torch.stack([torch.ceil(extent * cov_xx.sqrt()), torch.ceil(extent * cov_yy.sqrt())], -1)
    frac = torch.stack([extent * cov_xx.sqrt(), extent * cov_yy.sqrt()], -1)
    unambiguous = ((frac - frac.round()).abs() > 1e-6).all(-1) & proj.visible
    assert unambiguous.sum() > 100
    assert torch.equal(proj.radii[unambiguous].double(), want[unambiguous])
    assert (proj.radii[~proj.visible] == 0).all()
    # Never larger than gsplat's opacity-unaware 3.33-sigma boxes, and much smaller for translucent splats.
    assert (proj.radii <= radii_ref)[proj.visible].all()
    faint = proj.visible & (opacities < 0.1)
    assert (proj.radii[faint].sum() < 0.8 * radii_ref[faint].sum())


def test_box_extent_is_where_alpha_reaches_the_threshold():
    o = torch.tensor([1.0, 0.5, 0.1, 0.02, 1.5 / 255], dtype=torch.float64)
    e = box_extent(o)
    assert e.max() < 3.33
    torch.testing.assert_close(o * torch.exp(-0.5 * e * e), torch.full_like(o, 1 / 255), rtol=1e-12, atol=0)
    assert math.isclose(float(box_extent(torch.tensor(1.0, dtype=torch.float64))), math.sqrt(2 * math.log(255)))


def test_near_and_far_planes_cull():
    cams = Cameras(torch.eye(4, dtype=torch.float64)[None], torch.tensor(
        [[[20.0, 0, 20.0], [0, 20.0, 15.0], [0, 0, 1]]], dtype=torch.float64), W, H)
    z = torch.tensor([0.005, 0.5, 5.0, 50.0], dtype=torch.float64)
    means = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(4, 4)
    scales = torch.full((4, 3), 0.05, dtype=torch.float64)
    proj = project_gaussians(means, quats, scales, torch.ones(4, dtype=torch.float64), cams.w2c, cams.K, W, H,
                             near_plane=0.01, far_plane=10.0)
    assert proj.visible[0].tolist() == [False, True, True, False]
    assert torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all()
