"""training/metrics.py: PSNR, SSIM (against an independent float64 reference), LPIPS v0.1 structure and loading."""

import logging

import numpy as np
import pytest
import torch

from training import metrics
from training.metrics import LPIPS, load_lpips, psnr, ssim

pytestmark = pytest.mark.usefixtures("single_thread")


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sample: bool = False) -> float:
    """Wang et al. 2004 with a full 2D 11x11 Gaussian window (sigma 1.5), valid positions only, float64 numpy,
    mean over channels (scikit-image gaussian_weights=True, use_sample_covariance=``sample``: the (co)variances
    times 121 / 120)."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ca, cb in zip(a, b):
        pa = np.lib.stride_tricks.sliding_window_view(ca, (11, 11))
        pb = np.lib.stride_tricks.sliding_window_view(cb, (11, 11))
        mu_a = np.einsum("ijkl,kl->ij", pa, w)
        mu_b = np.einsum("ijkl,kl->ij", pb, w)
        va = np.einsum("ijkl,kl->ij", pa**2, w) - mu_a**2
        vb = np.einsum("ijkl,kl->ij", pb**2, w) - mu_b**2
        cov = np.einsum("ijkl,kl->ij", pa * pb, w) - mu_a * mu_b
        if sample:
            va, vb, cov = va * 121 / 120, vb * 121 / 120, cov * 121 / 120
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def test_psnr_known_values():
    t = torch.rand(2, 3, 16, 16) * 0.8
    p = t + 0.1
    assert torch.allclose(psnr(p, t), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(psnr(p * 255, t * 255, data_range=255.0), torch.full((2,), 20.0), atol=1e-3)
    assert torch.isinf(psnr(t, t)).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(t, t[:, :2])


def test_ssim_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 30, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(2, 3, 24, 30, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(a, b)
    assert got.shape == (2,)
    for i in range(2):
        assert got[i].item() == pytest.approx(_ssim_reference(a[i].numpy(), b[i].numpy()), abs=1e-10)
    got32 = ssim(a.float(), b.float())
    assert torch.allclose(got32.double(), got, atol=1e-5)


def test_ssim_sample_covariance_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 20, 26, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.randn(2, 3, 20, 26, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(a, b, sample_covariance=True)
    for i in range(2):
        want = _ssim_reference(a[i].numpy(), b[i].numpy(), sample=True)
        assert got[i].item() == pytest.approx(want, abs=1e-10)
        assert abs(want - _ssim_reference(a[i].numpy(), b[i].numpy())) > 1e-6  # the setting shows


def test_ssim_official_settings_match_scikit_image():
    """AnySplat's compute_ssim: structural_similarity(win_size=11, gaussian_weights=True, channel_axis=0,
    data_range=1.0), scikit-image's default use_sample_covariance=True."""
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 32, 40, generator=g, dtype=torch.float64)
    b = (a + 0.25 * torch.randn(2, 3, 32, 40, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(a, b, sample_covariance=True)
    for i in range(2):
        want = metrics.structural_similarity(a[i].numpy(), b[i].numpy(), win_size=11, gaussian_weights=True,
                                             channel_axis=0, data_range=1.0)
        assert got[i].item() == pytest.approx(want, abs=1e-10)


def test_ssim_properties():
    a = torch.rand(1, 3, 16, 16)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    # constant images: only the luminance term remains
    c1, c2 = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), c1), torch.full((1, 3, 16, 16), c2)
    k = 0.01**2
    expected = (2 * c1 * c2 + k) / (c1**2 + c2**2 + k)
    x64, y64 = torch.full((1, 3, 16, 16), c1, dtype=torch.float64), torch.full((1, 3, 16, 16), c2, dtype=torch.float64)
    assert ssim(x64, y64).item() == pytest.approx(expected, rel=1e-12)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-4)  # float32 rounding in the variances
    assert ssim(a, x).item() < ssim(a, a).item()
    assert torch.allclose(ssim(a, x), ssim(x, a))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_metrics_gradients_flow():
    t = torch.rand(1, 3, 16, 16)
    p = torch.rand(1, 3, 16, 16, requires_grad=True)
    (ssim(p, t).sum() + psnr(p, t).sum()).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    return LPIPS("alex")


def test_lpips_random_weights_properties(alex):
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert torch.equal(alex(x, x), torch.zeros(2))
    d = alex(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, alex(y, x), rtol=1e-5, atol=1e-7)
    p = x.clone().requires_grad_(True)
    alex(p, y).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert not any(q.requires_grad for q in alex.parameters())
    alex.train()
    assert not alex.training  # always evaluated in eval mode (dropout off)


def test_lpips_matches_independent_formula(alex):
    """Taps after torchvision's ReLUs 1, 4, 7, 9, 11; scaling layer; unit-normalise; 1x1 lin; spatial mean."""
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h, out = (2 * img - 1 - shift) / scale, []
        for i, layer in enumerate(alex.net.features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h)
        return out

    total = 0.0
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        w = getattr(alex, f"lin{k}").model[1].weight.view(1, -1, 1, 1)
        total = total + ((nx - ny) ** 2 * w).sum(1).mean()
    assert alex(x, y).item() == pytest.approx(total.item(), rel=1e-5)


def test_lpips_key_names(alex):
    keys = list(alex.state_dict())
    assert keys[:2] == ["net.features.0.weight", "net.features.0.bias"]
    assert "net.features.10.weight" in keys
    assert [k for k in keys if k.startswith("lin")] == [f"lin{i}.model.1.weight" for i in range(5)]
    vgg = LPIPS("vgg")
    assert "net.features.28.weight" in vgg.state_dict()
    assert vgg.state_dict()["lin4.model.1.weight"].shape == (1, 512, 1, 1)
    with pytest.raises(ValueError, match="unknown backbone"):
        LPIPS("squeeze")


def _save_files(model: LPIPS, folder, backbone_name="alexnet-owt-7be5be79.pth", linear_name="alex.pth",
                fmt="pth"):
    sd = model.state_dict()
    backbone = {k[len("net."):]: v.clone() for k, v in sd.items() if k.startswith("net.features.")}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision checkpoints carry the classifier too
    linear = {k: v.clone() for k, v in sd.items() if k.startswith("lin")}
    bpath, lpath = folder / backbone_name, folder / linear_name
    if fmt == "pth":
        torch.save(backbone, bpath)
        torch.save(linear, lpath)
    else:
        from safetensors.torch import save_file

        save_file(backbone, str(bpath))
        save_file(linear, str(lpath))
    return bpath, lpath


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_lpips_from_files_round_trip(alex, tmp_path, fmt):
    ext = ".pth" if fmt == "pth" else ".safetensors"
    bpath, lpath = _save_files(alex, tmp_path, "backbone" + ext, "linear" + ext, fmt)
    loaded = LPIPS.from_files(bpath, lpath, net="alex")
    for k, v in alex.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x, y), alex(x, y))


def test_lpips_wrong_keys_clear_error(alex, tmp_path):
    bpath, lpath = _save_files(alex, tmp_path)
    torch.save({"lin0.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys.*lin0.model.1.weight"):
        LPIPS.from_files(bpath, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="backbone file"):
        LPIPS.from_files(bpath, lpath, net="vgg")  # alexnet weights for the VGG backbone
    with pytest.raises(FileNotFoundError):
        LPIPS.from_files(tmp_path / "nope.pth", lpath)


def test_load_lpips_missing_files_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(metrics, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="training.metrics"):
        assert load_lpips("alex") is None
        assert load_lpips("alex") is None
    warnings = [r for r in caplog.records if "LPIPS" in r.getMessage()]
    assert len(warnings) == 1
    assert "alexnet-owt-7be5be79.pth" in warnings[0].getMessage() and "alex.pth" in warnings[0].getMessage()


def test_load_lpips_finds_local_files(alex, tmp_path, monkeypatch):
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    _save_files(alex, ckpt, linear_name="lpips_v0.1_alex.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    model = load_lpips("alex", device="cpu")
    assert isinstance(model, LPIPS)
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x, y), alex(x, y))


def test_load_lpips_official_prefers_the_lpips_package_then_ours(monkeypatch, alex):
    import sys
    import types

    from training import metrics

    calls = []

    class FakeLPIPS(torch.nn.Module):  # the lpips package's class: LPIPS(net=...)(x, y, normalize=True) -> (B,1,1,1)
        def __init__(self, net, verbose=False):
            super().__init__()
            calls.append(net)
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, y, normalize=False):
            assert normalize
            return ((x - y).abs().mean(dim=(1, 2, 3)) * self.w).view(-1, 1, 1, 1)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    fn, source = metrics.load_lpips_official("vgg")
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert source == "lpips package" and calls == ["vgg"] and fn.device == torch.device("cpu")
    torch.testing.assert_close(fn(x, y), (x - y).abs().mean(dim=(1, 2, 3)))

    def broken(net, verbose=False):  # e.g. its torchvision backbone cannot be fetched offline
        raise RuntimeError("no torchvision weights")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=broken))
    monkeypatch.setattr(metrics, "load_lpips", lambda net, device=None: alex)
    fn, source = metrics.load_lpips_official("alex")
    assert source == "vist3a"
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)  # AlexNet needs more than 16 px
    torch.testing.assert_close(fn(x, y), alex(x, y, normalize=True))
    monkeypatch.setattr(metrics, "load_lpips", lambda net, device=None: None)
    fn, source = metrics.load_lpips_official("vgg")
    assert fn is None and "not found" in source
