"""The PyTorch rasteriser: analytic images, gsplat's blending rules, tiled vs dense reference, and gradients."""

import functools

import pytest
import torch

from vist3a.cameras import Cameras, look_at
from vist3a.gaussians import Gaussians
from vist3a.render import render
from vist3a.render.projection import project_gaussians
from vist3a.render.reference import render_reference
from vist3a.rotations import normalize_quat
from vist3a.sh import rgb_to_sh_dc


pytestmark = pytest.mark.usefixtures("single_thread")


def _identity_camera(width, height, f, cx, cy, dtype=torch.float32) -> Cameras:
    k = torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]], dtype=dtype)
    return Cameras(torch.eye(4, dtype=dtype)[None], k, width, height)


def _splats(means, sigma, opacities, colors, dtype=torch.float32) -> Gaussians:
    means = torch.as_tensor(means, dtype=dtype).reshape(-1, 3)
    n = len(means)
    rot = torch.zeros(n, 4, dtype=dtype)
    rot[:, 0] = 1
    return Gaussians(
        means=means,
        scales=torch.full((n, 3), sigma, dtype=dtype),
        rotations=rot,
        opacities=torch.as_tensor(opacities, dtype=dtype).reshape(n),
        sh=rgb_to_sh_dc(torch.as_tensor(colors, dtype=dtype).reshape(n, 3))[:, None, :],
    )


def _random_scene(n, degree, seed, dtype=torch.float32) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * 0.8
    scales = torch.exp(torch.randn(n, 3, generator=gen) * 0.6) * 0.04
    scales[:8] *= 8  # a few large splats: long tile lists, frustum clamping
    means[8 : n // 3] *= 0.25  # a dense, nearly opaque core: pixels reach the T <= 1e-4 stop
    quats = normalize_quat(torch.randn(n, 4, generator=gen))
    opacities = torch.rand(n, generator=gen) * 0.98 + 0.01
    opacities[8 : n // 3] = 0.9 + 0.09 * opacities[8 : n // 3]
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.4
    return Gaussians(means, scales, quats, opacities, sh).to(dtype=dtype)


def _test_cameras(dtype=torch.float32) -> Cameras:
    """Three 37x29 cameras: two on an orbit, one close up with an off-centre principal point and fx != fy."""
    orbit = Cameras.orbit(2, radius=2.6, width=37, height=29, fov_deg=60, dtype=torch.float64)
    eye = torch.tensor([[0.3, -0.2, -1.2]], dtype=torch.float64)  # inside the cloud: splats behind it
    c2w = look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    k = torch.tensor([[[25.0, 0, 9.0], [0, 31.0, 20.0], [0, 0, 1]]], dtype=torch.float64)
    return Cameras(torch.cat([orbit.c2w, c2w]), torch.cat([orbit.K, k]), 37, 29).to(dtype=dtype)


# ---------------------------------------------------------------------- analytic images
@pytest.mark.parametrize("renderer", ["tiled", "reference"])
def test_single_isotropic_gaussian_matches_its_analytic_image(renderer):
    w, h, f, cx, cy = 48, 40, 50.0, 20.5, 17.5  # off-centre principal point on a pixel centre
    z, sigma, opacity = 4.0, 0.1, 0.8
    color, bg = torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.1, 0.2, 0.3])
    cams = _identity_camera(w, h, f, cx, cy)
    g = _splats([0.0, 0.0, z], sigma, [opacity], color)
    out = (render if renderer == "tiled" else render_reference)(g, cams, background=bg)

    s2 = (f * sigma / z) ** 2 + 0.3  # projected variance + low-pass
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    alpha = (opacity * torch.exp(-0.5 * d2 / s2)).clamp_max(0.999)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))[..., None]
    assert (alpha > 0).sum() > 30 and (alpha == 0).sum() > 30  # the threshold cuts inside the image

    torch.testing.assert_close(out.alpha[0], alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rgb[0], alpha * color + (1 - alpha) * bg, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.depth[0], torch.where(alpha > 0, z, 0.0).expand(h, w, 1), atol=1e-5, rtol=0)
    assert out.alpha[0, 17, 20, 0] == pytest.approx(opacity, abs=1e-6)  # the peak sits on pixel (17, 20)


@pytest.mark.parametrize("renderer", ["tiled", "reference"])
def test_blending_stops_before_transmittance_reaches_1e4(renderer):
    # Five splats at one pixel centre, opacity 0.95: T = 0.05, 2.5e-3, 1.25e-4, then 6.25e-6 <= 1e-4, so gsplat
    # stops at the fourth splat *without* blending it.
    cams = _identity_camera(16, 16, 40.0, 8.5, 8.5)
    depths = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0])
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0]])
    g = _splats(torch.stack([torch.zeros(5), torch.zeros(5), depths], -1), 0.05, [0.95] * 5, colors)
    bg = torch.tensor([0.5, 0.25, 0.75])
    out = (render if renderer == "tiled" else render_reference)(g, cams, background=bg)
    w = torch.tensor([0.95, 0.05 * 0.95, 0.05**2 * 0.95])
    t_final = 0.05**3
    want_rgb = (w[:, None] * colors[:3]).sum(0) + t_final * bg
    torch.testing.assert_close(out.rgb[0, 8, 8], want_rgb, atol=1e-6, rtol=0)
    assert out.alpha[0, 8, 8, 0].item() == pytest.approx(1 - t_final, abs=1e-7)
    assert out.depth[0, 8, 8, 0].item() == pytest.approx(float((w * depths[:3]).sum() / (1 - t_final)), rel=1e-6)


def test_splats_are_blended_in_depth_order_not_input_order():
    cams = _identity_camera(16, 16, 40.0, 8.5, 8.5)
    near_red = _splats([[0, 0, 2.0], [0, 0, 3.0]], 0.05, [0.9, 0.9], [[1.0, 0, 0], [0, 0, 1.0]])
    far_first = _splats([[0, 0, 3.0], [0, 0, 2.0]], 0.05, [0.9, 0.9], [[0, 0, 1.0], [1.0, 0, 0]])
    a, b = render(near_red, cams), render(far_first, cams)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-7, rtol=0)
    assert a.rgb[0, 8, 8, 0] == pytest.approx(0.9, abs=1e-6) and a.rgb[0, 8, 8, 2] == pytest.approx(0.09, abs=1e-6)


# ---------------------------------------------------------------------- tiled vs dense reference
@pytest.mark.parametrize("degree,sh_degree", [(0, None), (3, None), (3, 1)])
@pytest.mark.parametrize("tile_size,chunk_elements", [(16, 1 << 21), (16, 3000), (8, 1 << 21)])
def test_tiled_matches_dense_reference(degree, sh_degree, tile_size, chunk_elements):
    g = _random_scene(500, degree, seed=degree)
    cams = _test_cameras()
    bg = torch.tensor([0.3, 0.6, 0.1])
    out = render(g, cams, sh_degree=sh_degree, background=bg, backend="torch", tile_size=tile_size,
                 chunk_elements=chunk_elements)
    ref = render_reference(g, cams, sh_degree=sh_degree, background=bg)

    # The scene covers the cases that matter: culled splats behind a camera, visible splats whose centre is off
    # screen, pixels saturated to the 1e-4 stop region, and pixels showing only background.
    proj = project_gaussians(g.means, g.rotations, g.scales, g.opacities, cams.w2c, cams.K, 37, 29)
    assert ((proj.depths < 0) & ~proj.visible).any()
    m = proj.means2d
    off = (m[..., 0] < 0) | (m[..., 0] > 37) | (m[..., 1] < 0) | (m[..., 1] > 29)
    assert (off & proj.visible).any()
    assert (ref.alpha > 0.999).any() and (ref.alpha == 0).any()

    # float32 rounding only: observed max errors are ~4e-7 (rgb), ~1e-7 (alpha), ~1.3e-6 relative (depth).
    assert (out.rgb - ref.rgb).abs().max() <= 2e-6
    assert (out.alpha - ref.alpha).abs().max() <= 1e-6
    assert (out.depth * out.alpha - ref.depth * ref.alpha).abs().max() <= 2e-6 * ref.depth.max()
    solid = ref.alpha > 0.05
    torch.testing.assert_close(out.depth[solid], ref.depth[solid], rtol=5e-6, atol=0)


def test_tiled_matches_reference_in_float64_with_long_lists():
    g = _random_scene(300, 2, seed=7, dtype=torch.float64)
    g = g._replace(scales=g.scales * 3)  # big splats: every tile lists most of the scene
    cams = _test_cameras(torch.float64)
    out = render(g, cams, backend="torch", chunk_elements=5000)  # several segments per tile list
    ref = render_reference(g, cams)
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-12, rtol=0)
    assert out.rgb.dtype == torch.float64


def test_empty_scene_and_invisible_scene_show_the_background():
    cams = _test_cameras()
    bg = torch.tensor([0.2, 0.4, 0.6])
    empty = _random_scene(5, 0, seed=1)[torch.zeros(5, dtype=torch.bool)]
    behind = _splats([[0.0, 0.0, -3.0]], 0.1, [1.0], [[1.0, 0, 0]])
    for g, c in [(empty, cams), (behind, _identity_camera(20, 10, 20.0, 10.0, 5.0))]:
        out = render(g, c, background=bg)
        assert torch.equal(out.rgb, bg.expand_as(out.rgb))
        assert (out.alpha == 0).all() and (out.depth == 0).all()


# ---------------------------------------------------------------------- gradients
def _gradcheck_scene():
    """Four splats in front of a 12x10 camera, away from every non-differentiable threshold: opacities <= 0.8
    (alpha never reaches 0.999 and T stays far above 1e-4), centres inside the frustum (no Jacobian clamping),
    positive SH colours."""
    dtype = torch.float64
    means = torch.tensor([[0.1, 0.05, 3.0], [-0.3, 0.1, 3.5], [0.25, -0.2, 2.8], [0.0, 0.0, 4.0]], dtype=dtype)
    scales = torch.tensor([[0.3, 0.2, 0.25], [0.4, 0.3, 0.2], [0.2, 0.35, 0.3], [0.6, 0.5, 0.4]], dtype=dtype)
    quats = normalize_quat(torch.tensor([[1.0, 0.2, -0.1, 0.3], [0.8, -0.3, 0.4, 0.1], [0.9, 0.1, 0.1, -0.5],
                                         [1.0, 0.0, 0.3, 0.0]], dtype=dtype))
    opacities = torch.tensor([0.7, 0.55, 0.8, 0.6], dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    sh = torch.randn(4, 4, 3, generator=gen, dtype=dtype) * 0.05  # SH degree 1
    sh[:, 0] = rgb_to_sh_dc(torch.rand(4, 3, generator=gen, dtype=dtype) * 0.5 + 0.25)
    cams = _identity_camera(12, 10, 10.0, 6.3, 4.8, dtype=dtype)
    return (means, scales, quats, opacities, sh), cams


def test_gradcheck_tiled_renderer_float64():
    params, cams = _gradcheck_scene()
    inputs = tuple(p.clone().requires_grad_(True) for p in params)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def fn(means, scales, quats, opacities, sh):
        out = render(Gaussians(means, scales, quats, opacities, sh, validate=False), cams, background=bg)
        return out.rgb, out.alpha, out.depth

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("chunk_elements", [1 << 21, 2000])
def test_tiled_and_reference_gradients_agree(monkeypatch, chunk_elements):
    """Gradients of the tiled renderer equal the dense reference's, also when a small memory budget makes it split
    lists into segments and recompute them in backward (activation checkpointing)."""
    checkpoint_calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: checkpoint_calls.append(1) or real_checkpoint(*a, **k))
    g = _random_scene(120, 3, seed=11, dtype=torch.float64)
    cams = _test_cameras(torch.float64)
    weights = torch.rand(3, 29, 37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for fn in (functools.partial(render, chunk_elements=chunk_elements), render_reference):
        params = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh)]
        out = fn(Gaussians(*params, validate=False), cams, background=torch.tensor([0.2, 0.5, 0.1]))
        loss = (torch.cat([out.rgb, out.alpha, out.depth], -1) * weights).sum()
        grads.append(torch.autograd.grad(loss, params))
    for name, a, b in zip(("means", "scales", "rotations", "opacities", "sh"), *grads):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=name)
    assert bool(checkpoint_calls) == (chunk_elements < 1 << 21)


def test_gradients_stay_finite_for_degenerate_splats():
    """A splat at the camera centre (z = 0), one just past the near plane far off-axis, and one covering the whole
    image must neither produce NaN/inf images nor poison the gradients of the others."""
    cams = Cameras.orbit(1, width=32, height=24, radius=3.0)
    centre = cams.centers[0]
    forward = -centre / centre.norm()
    means = torch.stack([centre, torch.zeros(3), torch.tensor([0.1, 0.1, 0.1]),
                         centre + 0.011 * forward + torch.tensor([2.0, 0.0, 0.0])])
    params = [means, torch.tensor([[0.1] * 3, [0.2] * 3, [5.0] * 3, [0.1] * 3]),
              torch.tensor([[1.0, 0, 0, 0]] * 4), torch.tensor([0.9, 0.5, 0.2, 0.9]),
              torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(0)) * 0.2]
    params = [p.clone().requires_grad_(True) for p in params]
    out = render(Gaussians(*params), cams)
    for t in (out.rgb, out.alpha, out.depth):
        assert torch.isfinite(t).all()
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for p in params:
        assert torch.isfinite(p.grad).all()
    assert params[0].grad[1].abs().sum() > 0  # the ordinary splat still gets a gradient
