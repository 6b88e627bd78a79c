"""`vist3a.render.render`: input checks, backend selection, the gsplat fallback, point clouds, and (with a GPU)
agreement between gsplat's CUDA rasteriser and ours."""

import inspect
import logging
import sys
import types

import pytest
import torch

from vist3a.cameras import Cameras
from vist3a.gaussians import Gaussians
from vist3a.pointcloud import PointCloud
from vist3a.render import RenderOutput, api, render, render_point_cloud
from vist3a.rotations import normalize_quat


pytestmark = pytest.mark.usefixtures("single_thread")


def _scene(n=200, degree=1, seed=0, device="cpu") -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    g = Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.5,
        scales=torch.exp(torch.randn(n, 3, generator=gen) * 0.5) * 0.05,
        rotations=normalize_quat(torch.randn(n, 4, generator=gen)),
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.3,
    )
    return g.to(device=device)


def _cams(v=2, w=40, h=32, device="cpu") -> Cameras:
    return Cameras.orbit(v, radius=3.0, width=w, height=h, device=device)


@pytest.fixture
def fresh_gsplat_state(monkeypatch):
    """A clean record of gsplat's health, so tests do not see each other's (or a real run's) failures."""
    state = api._GsplatState()
    monkeypatch.setattr(api, "_GSPLAT", state)
    return state


# ---------------------------------------------------------------------- outputs and validation
def test_output_shapes_dtypes_and_gradients():
    g = _scene()
    params = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh)]
    out = render(Gaussians(*params, validate=False), _cams(3, 40, 32))
    assert isinstance(out, RenderOutput) and out.backend == "torch"
    assert out.rgb.shape == (3, 32, 40, 3) and out.alpha.shape == (3, 32, 40, 1) and out.depth.shape == (3, 32, 40, 1)
    assert out.rgb.dtype == torch.float32
    assert (out.alpha > 0.5).any() and (out.alpha >= 0).all() and (out.alpha <= 1).all()
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_background_per_view_and_half_precision_input():
    g, cams = _scene(), _cams(2)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = render(g, cams, background=bg)
    empty_px = out.alpha[..., 0] == 0
    assert empty_px[0].any() and empty_px[1].any()
    assert torch.equal(out.rgb[0][empty_px[0]], bg[0].expand(int(empty_px[0].sum()), 3))
    assert torch.equal(out.rgb[1][empty_px[1]], bg[1].expand(int(empty_px[1].sum()), 3))
    half = render(g.to(dtype=torch.bfloat16), cams, background=bg)
    assert half.rgb.dtype == torch.float32
    assert (half.rgb - out.rgb).abs().mean() < 0.02


def test_lower_sh_degree_ignores_higher_bands():
    g = _scene(degree=3)
    cams = _cams()
    low = render(g, cams, sh_degree=1)
    same = render(g._replace(sh=g.sh[:, :4]), cams)
    torch.testing.assert_close(low.rgb, same.rgb, rtol=0, atol=0)
    assert (render(g, cams).rgb - low.rgb).abs().max() > 1e-3  # degree 3 really differs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backend": "cuda"}, "backend must be one of"),
        ({"sh_degree": 2}, "sh_degree must be"),
        ({"background": torch.ones(4)}, "background must have shape"),
        ({"near_plane": 0.0}, "near_plane"),
        ({"near_plane": 5.0, "far_plane": 1.0}, "near_plane"),
        ({"tile_size": 0}, "tile_size"),
        ({"chunk_elements": 0}, "chunk_elements"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render(_scene(degree=1), _cams(), **kwargs)


def test_empty_cameras_and_wrong_types_raise():
    with pytest.raises(ValueError, match="cameras is empty"):
        render(_scene(), _cams()[torch.zeros(2, dtype=torch.bool)])
    with pytest.raises(TypeError, match="must be a vist3a Gaussians"):
        render(torch.zeros(5, 3), _cams())
    with pytest.raises(TypeError, match="must be a vist3a Cameras"):
        render(_scene(), torch.eye(4)[None])


def test_mismatched_devices_raise(monkeypatch):
    g = _scene()
    meta_cams = Cameras(torch.eye(4)[None].to("meta"), torch.eye(3)[None].to("meta"), 8, 8, validate=False)
    with pytest.raises(ValueError, match="different device|on cpu but the cameras on meta"):
        render(g, meta_cams)
    with pytest.raises(ValueError, match="background is on meta"):
        render(g, _cams(), background=torch.ones(3, device="meta"))


# ---------------------------------------------------------------------- backend selection and gsplat fallback
def test_cpu_auto_uses_torch_and_gsplat_on_cpu_is_refused():
    g, cams = _scene(), _cams()
    assert render(g, cams).backend == "torch"
    assert render(g, cams, backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="needs CUDA"):
        render(g, cams, backend="gsplat")


def _pretend_cuda(monkeypatch):
    """Make render() treat CPU tensors as if they were on a GPU, so the gsplat branch runs without one."""
    monkeypatch.setattr(api, "_is_cuda", lambda device: True)


@pytest.mark.parametrize("backend", ["auto", "gsplat"])
def test_gsplat_failure_logs_once_and_falls_back(monkeypatch, caplog, fresh_gsplat_state, backend):
    _pretend_cuda(monkeypatch)
    calls = []

    def broken_gsplat(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Error building extension 'gsplat_cuda': nvcc not found")

    monkeypatch.setattr(api, "_render_gsplat", broken_gsplat)
    g, cams = _scene(), _cams()
    with caplog.at_level(logging.WARNING, logger="vist3a.render"):
        first = render(g, cams, backend=backend)
        second = render(g, cams, backend=backend)
    assert first.backend == second.backend == "torch"
    assert len(calls) == 1, "a failed gsplat setup must not be retried"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nvcc not found" in warnings[0].getMessage() and "falling back" in warnings[0].getMessage()
    assert "nvcc not found" in fresh_gsplat_state.failure
    torch.testing.assert_close(first.rgb, render(g, cams, backend="torch").rgb, rtol=0, atol=0)


def test_gsplat_errors_after_a_success_are_raised(monkeypatch, fresh_gsplat_state):
    _pretend_cuda(monkeypatch)
    g, cams = _scene(), _cams()
    ok = render(g, cams, backend="torch")
    monkeypatch.setattr(api, "_render_gsplat", lambda *a, **k: RenderOutput(ok.rgb, ok.alpha, ok.depth, "gsplat"))
    assert render(g, cams).backend == "gsplat"

    def fails(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(api, "_render_gsplat", fails)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        render(g, cams)
    assert fresh_gsplat_state.failure is None


def test_auto_skips_gsplat_for_float64(monkeypatch, fresh_gsplat_state):
    _pretend_cuda(monkeypatch)
    monkeypatch.setattr(api, "_render_gsplat", lambda *a, **k: pytest.fail("gsplat must not be called for float64"))
    assert render(_scene().to(dtype=torch.float64), _cams()).backend == "torch"
    with pytest.raises(ValueError, match="float32"):
        render(_scene().to(dtype=torch.float64), _cams(), backend="gsplat")


def test_gsplat_call_wiring(monkeypatch, fresh_gsplat_state):
    """The arguments we pass bind to the real gsplat.rasterization signature and mean what gsplat means: a fake
    gsplat that interprets them (w2c viewmats, wxyz quats, (V, 3) backgrounds, RGB+ED output layout) with our own
    PyTorch renderer must reproduce backend='torch' exactly."""
    gsplat = pytest.importorskip("gsplat")
    _pretend_cuda(monkeypatch)
    seen = {}

    def fake_rasterization(**kw):
        inspect.signature(gsplat.rasterization).bind(**kw)
        seen.update(kw)
        scene = Gaussians(kw["means"], kw["scales"], kw["quats"], kw["opacities"], kw["colors"])
        cams = Cameras.from_w2c(kw["viewmats"], kw["Ks"], kw["width"], kw["height"])
        out = api.render(scene, cams, sh_degree=kw["sh_degree"], background=kw["backgrounds"], backend="torch",
                         near_plane=kw["near_plane"], far_plane=kw["far_plane"])
        return torch.cat([out.rgb, out.depth], -1), out.alpha, {}

    monkeypatch.setattr(gsplat, "rasterization", fake_rasterization)
    # Pretend gsplat's compiled extension loaded (importing the real one here would try to build it).
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", types.SimpleNamespace(_C=object()))
    g, cams = _scene(degree=2), _cams(3, 24, 20)
    bg = torch.tensor([0.1, 0.5, 0.9])
    via_gsplat = render(g, cams, sh_degree=1, background=bg, near_plane=0.5, far_plane=50.0)
    ours = render(g, cams, sh_degree=1, background=bg, near_plane=0.5, far_plane=50.0, backend="torch")
    assert via_gsplat.backend == "gsplat"
    assert seen["render_mode"] == "RGB+ED" and seen["rasterize_mode"] == "classic" and seen["eps2d"] == 0.3
    assert seen["backgrounds"].shape == (3, 3) and seen["sh_degree"] == 1
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(via_gsplat, name), getattr(ours, name), rtol=0, atol=0)


# ---------------------------------------------------------------------- point clouds
def test_point_cloud_renders_point_colours_where_the_points_are():
    w, h, f = 32, 24, 30.0
    cams = Cameras(torch.eye(4)[None], torch.tensor([[[f, 0, 16.0], [0, f, 12.0], [0, 0, 1]]]), w, h)
    pixels = torch.tensor([[4, 3], [20, 6], [10, 18], [27, 20]])  # (x, y) integer pixel indices
    z = torch.tensor([2.0, 3.0, 2.5, 4.0])
    centres = pixels + 0.5
    points = torch.stack([(centres[:, 0] - 16.0) * z / f, (centres[:, 1] - 12.0) * z / f, z], -1)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    bg = torch.tensor([0.2, 0.2, 0.2])
    out = render_point_cloud(PointCloud(points, colors), cams, radius=0.1, background=bg)
    seen = out.rgb[0, pixels[:, 1], pixels[:, 0]]
    torch.testing.assert_close(seen, 0.999 * colors + 0.001 * bg, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth[0, pixels[:, 1], pixels[:, 0], 0], z, rtol=1e-5, atol=0)
    assert torch.equal(out.rgb[0, 0, w - 1], bg) and out.alpha[0, 0, w - 1, 0] == 0  # far from every point
    with pytest.raises(ValueError, match="radius must be > 0"):
        render_point_cloud(PointCloud(points, colors), cams, radius=0.0)


# ---------------------------------------------------------------------- CUDA: gsplat vs ours
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gsplat_and_torch_rasterisers_agree_on_cuda():
    pytest.importorskip("gsplat")
    g = _scene(n=3000, degree=3, seed=5, device="cuda")
    cams = _cams(4, 96, 72, device="cuda")
    bg = torch.tensor([0.2, 0.4, 0.6], device="cuda")
    params = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh)]
    outs, grads = {}, {}
    for backend in ("gsplat", "torch"):
        p = [t.detach().clone().requires_grad_(True) for t in params]
        out = render(Gaussians(*p, validate=False), cams, background=bg, backend=backend)
        if backend == "gsplat" and out.backend != "gsplat":
            pytest.skip(f"gsplat kernels unavailable here: {api._GSPLAT.failure}")
        assert out.backend == backend
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        outs[backend], grads[backend] = out, [t.grad for t in p]
    a, b = outs["gsplat"], outs["torch"]
    assert (b.alpha > 0.99).any()
    # gsplat uses fast-math exp on the GPU; the tolerance covers that and rare 1/255-threshold flips.
    assert (a.rgb - b.rgb).abs().max() <= 1e-3
    assert (a.alpha - b.alpha).abs().max() <= 1e-3
    solid = b.alpha > 0.05
    torch.testing.assert_close(a.depth[solid], b.depth[solid], rtol=1e-3, atol=1e-3)
    for name, ga, gb in zip(("means", "scales", "rotations", "opacities", "sh"), grads["gsplat"], grads["torch"]):
        cos = torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))
