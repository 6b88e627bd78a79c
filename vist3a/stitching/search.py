"""Closed-form stitching-layer search: which cut layer of the 3D model is best predicted, linearly, from the video
latent, and the ridge-regression initialisation of the stitching conv for every candidate layer.

Model. For a fixed :class:`~vist3a.stitching.config.StitchingConfig` the stitching layer is affine in the im2col
patches of the resized latent: a row ``x`` (length d = in * prod(kernel), 720 for the released layer) predicts the
token ``y`` (length D, 1024) at the same (frame, row, col) as ``y = W^T x + b``. Rows come from
:meth:`StitchingLayer.unfold` (the SAME replicate padding as the conv; the official search zero-padded), targets are
the layer's patch tokens with the prefix (cls + register, or camera + register) tokens stripped, in the row order
(B, T, h, w) of :func:`~vist3a.stitching.layer.to_rows`.

Streaming normal equations (float64). Per data split we keep, with the augmented row ``a = [x, 1]`` (so the bias is
fitted jointly, in the same solve)::

    A   = sum a a^T          (d+1, d+1)   shared by every layer: X depends on the latent only
    B_l = sum a y_l^T        (d+1, D)     per layer (its last row is sum y_l)
    G_l = sum y_l y_l^T      (D, D)       per layer, train split only, for CKA (cka=False drops it)
    q_l = sum |y_l|^2        scalar       per layer (trace of G_l; enough for the MSE)

and the held-out split keeps ``A``, ``B_l`` and ``q_l`` again. Memory is (d+1)^2 + layers * ((d+1) D + D^2) float64
for the train split plus (d+1)^2 + layers * (d+1) D for the held-out one (released config, 24 layers, d = 720,
D = 1024: 331 MiB + 139 MiB; :meth:`LayerSearch.nbytes`), independent of the number of samples: no feature is stored.
``X^T X`` is shared by all layers because the patches depend on the latent only. Every statistic is a sum, hence
batch-associative and reducible across processes with one all_reduce.

Solve (ridge). ``(A + lambda * diag(1, ..., 1, 0)) w = B_l``: lambda (default 1e-4, the official value) on the weight
part only, never on the bias; lambda is absolute (added to the *summed* normal equations, like the official script),
so its relative effect shrinks as samples accumulate. Cholesky in float64, falling back to an LU solve.

Metrics, all from the sums (no second pass over data):

* MSE per element: ``(q - 2 <w, B> + <w, A w>) / (n D)``; train MSE from the train sums, held-out MSE by plugging the
  train solution into the held-out sums.
* Linear CKA between the patch rows x (without the ones column) and the tokens y, cross-covariance form
  ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, centring from the sums:
  ``Xc^T Yc = sum x y^T - (sum x)(sum y)^T / n`` (and likewise for the two Grams).

Ranking: smallest held-out MSE first (train MSE when no held-out data was seen).

``numerics="official"`` (:data:`NUMERICS`) reproduces the released ``find_layer_for_stitching.py`` instead:

* the design is the im2col of the ZERO-padded latent (the conv itself pads with replicate: a known inconsistency of
  the released code), without an intercept column: ``X^T X`` (d, d) and ``X^T Y`` (d, D) in float64;
* ``W = solve(X^T X + lambda I, X^T Y)`` with ``torch.linalg.solve`` (lambda = 1e-4 on the FULL diagonal, d = 720);
* the bias is the mean residual ``(sum y - (sum x)^T W) / n`` (the official second pass, here from the sums);
* latents and tokens are rounded to float16 first (the official feature cache stores them as float16);
* the MSE is the one of the resulting conv (replicate padding, bias) on the TRAINING rows, and the ranking sorts by
  it (a held-out MSE is still reported when held-out data was given).

These extra sums (``X0^T X0``, ``X0^T Y_l``, ``sum x0``) sit beside the usual ones (the replicate-padded augmented
sums give the conv's MSE), so the official mode needs d^2 + layers d D more float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import StitchingConfig
from .layer import StitchingLayer, resize_latent

__all__ = [
    "DEFAULT_RIDGE",
    "NUMERICS",
    "LayerFit",
    "LayerSearch",
    "NormalEquations",
    "SearchResult",
    "cka_from_sums",
    "layer_tokens",
    "linear_cka",
    "mse_from_sums",
    "reduce_",
    "solve_ridge",
]

logger = logging.getLogger(__name__)

DEFAULT_RIDGE = 1e-4
SPLITS = ("train", "heldout")
#: "ours": replicate-padded design with a jointly solved (unregularised) bias, held-out ranking; "official": the
#: released search's numerics (module docstring)
NUMERICS = ("ours", "official")


# ============================================================================================ math on the sums
def solve_ridge(xtx: Tensor, xty: Tensor, ridge: float = DEFAULT_RIDGE) -> Tensor:
    """Solve ``(xtx + ridge * diag(1, ..., 1, 0)) w = xty`` in float64 for the augmented (last column = ones) design.

    ``xtx`` (d+1, d+1), ``xty`` (d+1, D) -> ``w`` (d+1, D): rows 0..d-1 the weights, row d the bias.
    """
    a = xtx.to(torch.float64).clone()
    idx = torch.arange(a.shape[0] - 1, device=a.device)
    a[idx, idx] += float(ridge)
    b = xty.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    logger.warning("solve_ridge: normal matrix not positive definite (Cholesky failed at %d); using an LU solve "
                   "(increase the ridge or the number of samples)", int(info))
    return torch.linalg.solve(a, b)


def solve_official(xtx: Tensor, xty: Tensor, sum_x: Tensor, sum_y: Tensor, n: float, ridge: float = DEFAULT_RIDGE
                   ) -> Tensor:
    """The released search's solve: ``W = solve(xtx + ridge I, xty)`` (no intercept, ridge on the whole diagonal,
    ``torch.linalg.solve`` in float64), then the bias = mean residual ``(sum_y - sum_x W) / n``. ``xtx`` (d, d),
    ``xty`` (d, D), ``sum_x`` (d,), ``sum_y`` (D,) -> the augmented ``w`` (d+1, D) (last row the bias)."""
    a = xtx.to(torch.float64).clone()
    a.diagonal().add_(float(ridge))
    w = torch.linalg.solve(a, xty.to(torch.float64))
    bias = (sum_y.to(torch.float64) - sum_x.to(torch.float64) @ w) / n
    return torch.cat([w, bias[None]], dim=0)


def mse_from_sums(xtx: Tensor, xty: Tensor, yy: Tensor | float, n: float, w: Tensor) -> float:
    """Mean squared error per element of the prediction ``a w`` from the sums: ``(q - 2<w,B> + <w,Aw>) / (n D)``."""
    if n <= 0:
        return float("nan")
    sse = float(yy) - 2.0 * float((w * xty).sum()) + float((w * (xtx @ w)).sum())
    return max(sse, 0.0) / (n * w.shape[1])


def cka_from_sums(xtx: Tensor, xty: Tensor, yty: Tensor) -> float:
    """Linear CKA between x (the non-ones columns of the augmented design) and y, from uncentred sums.

    ``xtx`` (d+1, d+1) augmented (``xtx[-1, -1]`` = n, ``xtx[-1, :-1]`` = sum x), ``xty`` (d+1, D) (last row sum y),
    ``yty`` (D, D). Returns ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``; nan for constant data.
    """
    n = float(xtx[-1, -1])
    if n <= 0:
        return float("nan")
    sx, sy = xtx[-1, :-1], xty[-1]
    cxx = xtx[:-1, :-1] - torch.outer(sx, sx) / n
    cxy = xty[:-1] - torch.outer(sx, sy) / n
    cyy = yty - torch.outer(sy, sy) / n
    den = float(torch.linalg.matrix_norm(cxx)) * float(torch.linalg.matrix_norm(cyy))
    return float(cxy.square().sum()) / den if den > 0 else float("nan")


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two row-aligned feature matrices (n, d), (n, D), computed directly (float64); a reference for
    :func:`cka_from_sums`."""
    x = x.to(torch.float64).reshape(x.shape[0], -1)
    y = y.to(torch.float64).reshape(y.shape[0], -1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    den = float(torch.linalg.matrix_norm(x.T @ x)) * float(torch.linalg.matrix_norm(y.T @ y))
    return float((x.T @ y).square().sum()) / den if den > 0 else float("nan")


# ============================================================================================ accumulators
class NormalEquations:
    """Streaming sums for one data split: the shared ``xtx`` and, per layer, ``xty``, ``yy`` (and ``yty`` if
    ``cka``). See the module docstring. All tensors are float64 on ``device``."""

    def __init__(self, d: int, dims: Mapping[str, int], *, cka: bool = True, device: torch.device | str = "cpu"
                 ) -> None:
        kw = {"dtype": torch.float64, "device": torch.device(device)}
        self.d = int(d)
        self.dims = dict(dims)
        self.cka = bool(cka)
        self.xtx = torch.zeros(self.d + 1, self.d + 1, **kw)
        self.xty = {name: torch.zeros(self.d + 1, dim, **kw) for name, dim in self.dims.items()}
        self.yy = {name: torch.zeros((), **kw) for name in self.dims}
        self.yty = {name: torch.zeros(dim, dim, **kw) for name, dim in self.dims.items()} if self.cka else {}

    @property
    def n(self) -> float:
        """Rows accumulated so far."""
        return float(self.xtx[-1, -1])

    def tensors(self) -> list[Tensor]:
        """Every accumulator tensor, in a fixed order (the same on every process)."""
        out = [self.xtx]
        for name in self.dims:
            out += [self.xty[name], self.yy[name]]
            if self.cka:
                out.append(self.yty[name])
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def update(self, x: Tensor, ys: Mapping[str, Tensor]) -> None:
        """Add rows: ``x`` (n, d) patches and, per layer, ``ys[name]`` (n, D) targets (any float dtype)."""
        x = x.to(device=self.xtx.device, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"NormalEquations.update: x must be (n, {self.d}), got {tuple(x.shape)}")
        missing = sorted(set(self.dims) - set(ys))
        if missing:
            raise ValueError(f"NormalEquations.update: no targets for layers {missing}")
        n, d = x.shape
        for name, dim in self.dims.items():
            if tuple(ys[name].shape) != (n, dim):
                raise ValueError(f"NormalEquations.update: targets of {name!r} must be ({n}, {dim}) to match the "
                                 f"patches, got {tuple(ys[name].shape)}")
        # augmented a = [x, 1] without materialising it: the ones column contributes the sums and the count
        sx = x.sum(0)
        self.xtx[:d, :d].addmm_(x.T, x)
        self.xtx[:d, d] += sx
        self.xtx[d, :d] += sx
        self.xtx[d, d] += n
        for name in self.dims:
            y = ys[name].to(device=x.device, dtype=torch.float64)
            self.xty[name][:d].addmm_(x.T, y)
            self.xty[name][d] += y.sum(0)
            self.yy[name] += y.square().sum()
            if self.cka:
                self.yty[name].addmm_(y.T, y)

    def merge_(self, other: NormalEquations) -> NormalEquations:
        """Add another accumulator's sums into this one (same d, layers and options)."""
        if other.d != self.d or other.dims != self.dims or other.cka != self.cka:
            raise ValueError("NormalEquations.merge_: accumulators differ in size, layers or options")
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine += theirs.to(mine.device)
        return self


# ============================================================================================ results
@dataclass
class LayerFit:
    """The ridge solution and metrics for one candidate layer."""

    layer: str
    weight: Tensor  # (out, in, *kernel) float64, the conv's layout
    bias: Tensor    # (out,) float64
    train_mse: float
    heldout_mse: float | None
    cka: float | None
    train_rows: int
    heldout_rows: int
    rank: int = 0

    def row(self) -> dict[str, Any]:
        return {"layer": self.layer, "rank": self.rank, "train_mse": self.train_mse, "heldout_mse": self.heldout_mse,
                "cka": self.cka, "train_rows": self.train_rows, "heldout_rows": self.heldout_rows}


@dataclass
class SearchResult:
    """Fits for every candidate layer (in the candidates' order) and the ranking (best first)."""

    config: StitchingConfig
    fits: dict[str, LayerFit]
    ranking: list[str]
    ridge: float
    metric: str  # "heldout_mse" or "train_mse": what the ranking sorts by
    info: dict[str, Any] = field(default_factory=dict)
    temporal_factor: int = 4

    @property
    def best(self) -> LayerFit:
        return self.fits[self.ranking[0]]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_string(), "ridge": self.ridge, "ranked_by": self.metric,
                "best_layer": self.ranking[0] if self.ranking else None,
                "ranking": [self.fits[name].row() for name in self.ranking], **self.info}

    def stitching_layer(self, layer: str, *, dtype: torch.dtype = torch.float32) -> StitchingLayer:
        """A :class:`StitchingLayer` loaded with the fitted weights of ``layer``."""
        fit = self.fits[layer]
        sl = StitchingLayer(self.config, in_channels=self.config.in_channels, temporal_factor=self.temporal_factor,
                            dtype=dtype)
        with torch.no_grad():
            sl.weight.copy_(fit.weight.to(dtype))
            sl.bias.copy_(fit.bias.to(dtype))
        return sl


# ============================================================================================ token extraction
def layer_tokens(activation: Any, num_patches: int) -> Tensor:
    """Patch tokens (B*S, N, C) of a captured cut-point activation: ``enc_blocks_k`` tensors (cls + register prefix)
    or ``agg_blocks_k`` dicts (camera + register prefix); the leading prefix tokens are dropped."""
    tokens = activation["tokens"] if isinstance(activation, Mapping) else activation
    if tokens.dim() != 3 or tokens.shape[1] < num_patches:
        raise ValueError(f"layer_tokens: expected (B*S, prefix + {num_patches}, C) tokens, got "
                         f"{tuple(tokens.shape)}")
    return tokens[:, tokens.shape[1] - num_patches:]


# ============================================================================================ the search
class LayerSearch:
    """Streaming closed-form search over candidate layers for one stitching config.

    Usage::

        search = LayerSearch("conv3d_k5x3x3_o1024_s1x2x2_p2x1x1", [f"enc_blocks_{k}" for k in range(1, 25)])
        for clip, images in batches:                      # ONE 3D-model forward per batch for all layers
            latent = vae.encode(clip)                     # raw latent (B, 16, T_lat, h, w)
            acts = model.capture(images, layers)          # {layer: (B*S, prefix + N, C)}
            search.update(latent, acts, split="train")    # or split="heldout"
        reduce_(search)                                   # no-op without a process group
        result = search.solve()

    Args:
        config: stitching config (string or :class:`StitchingConfig`); its ``out_channels`` must equal the feature
            dimension of every layer.
        layers: candidate layer names (kept in this order in the result).
        in_channels: latent channels (16).
        temporal_factor: video frames per latent frame step (4).
        cka: also accumulate the (D, D) Gram per layer for CKA (train split).
        heldout: keep held-out sums (``False`` saves (d+1)^2 + layers (d+1) D floats when there is no held-out data;
            then ``update(..., split="heldout")`` raises).
        device: where the float64 sums live (the model's device is fine: GPU float64 matmuls).
    """

    def __init__(self, config: StitchingConfig | str, layers: Sequence[str], *, in_channels: int = 16,
                 temporal_factor: int = 4, cka: bool = True, heldout: bool = True,
                 device: torch.device | str = "cpu", numerics: str = "ours") -> None:
        if not layers:
            raise ValueError("LayerSearch: no candidate layers")
        if numerics not in NUMERICS:
            raise ValueError(f"LayerSearch: numerics must be one of {NUMERICS}, got {numerics!r}")
        self.numerics = numerics
        if len(set(layers)) != len(layers):
            raise ValueError(f"LayerSearch: duplicate layer names in {list(layers)}")
        self.config = StitchingConfig.parse(config, in_channels=in_channels)
        self.layers = list(layers)
        self.temporal_factor = int(temporal_factor)
        self.device = torch.device(device)
        # geometry helper only (resize sizes + im2col); its parameters are never used
        self._geom = StitchingLayer(self.config, in_channels=in_channels, temporal_factor=temporal_factor,
                                    device="meta")
        dims = {name: self.config.out_channels for name in self.layers}
        self.d = self.config.fan_in
        self.sums = {"train": NormalEquations(self.d, dims, cka=cka, device=self.device)}
        if heldout:
            self.sums["heldout"] = NormalEquations(self.d, dims, cka=False, device=self.device)
        self.samples = {"train": 0, "heldout": 0}
        # official numerics: zero-padded, intercept-free train sums (module docstring)
        self.zero: dict[str, Tensor] | None = None
        if numerics == "official":
            kw = {"dtype": torch.float64, "device": self.device}
            self.zero = {"xtx": torch.zeros(self.d, self.d, **kw), "sx": torch.zeros(self.d, **kw),
                         **{f"xty:{name}": torch.zeros(self.d, dim, **kw) for name, dim in dims.items()}}

    # ---------------------------------------------------------------------------------------- data in
    def patches(self, latent: Tensor, grid_hw: tuple[int, int], padding_mode: str = "replicate") -> Tensor:
        """im2col rows (B*T*h*w, d) in float64 of the latent resized for the token grid ``grid_hw``."""
        self._geom.check_latent(latent)
        size = self._geom.input_size(latent.shape[2], grid_hw, tuple(latent.shape[-2:]))
        x = resize_latent(latent.to(device=self.device, dtype=torch.float64), size)
        return self._geom.unfold(x, padding_mode)

    def targets(self, activation: Any, batch: int, frames: int, grid_hw: tuple[int, int]) -> Tensor:
        """Token rows (B*T*h*w, D) of one layer's activation, ordered like :meth:`patches`."""
        gh, gw = grid_hw
        tokens = layer_tokens(activation, gh * gw)
        if tokens.shape[0] != batch * frames:
            raise ValueError(f"LayerSearch: activation has {tokens.shape[0]} images but the latent gives "
                             f"{batch} clips x {frames} frames (the 3D model must see the same {frames} frames)")
        if tokens.shape[-1] != self.config.out_channels:
            raise ValueError(f"LayerSearch: tokens have dim {tokens.shape[-1]} but the stitching config "
                             f"{self.config.to_string()} outputs {self.config.out_channels} channels")
        return tokens.reshape(batch * frames * gh * gw, -1)

    @torch.no_grad()
    def update(self, latent: Tensor, activations: Mapping[str, Any], grid_hw: tuple[int, int] | None = None,
               split: str = "train") -> None:
        """Accumulate one batch: raw latent (B, C, T_lat, h, w) and ``{layer: activation}`` from ONE
        ``model.capture(images (B, T, 3, H, W), layers)``. ``grid_hw`` (token grid, H/14, W/14) defaults to a
        square grid inferred from the token count."""
        if split not in self.sums:
            raise ValueError(f"LayerSearch.update: split must be one of {tuple(self.sums)}, got {split!r}")
        b = latent.shape[0]
        frames = (latent.shape[2] - 1) * self.temporal_factor + 1
        if grid_hw is None:
            grid_hw = self._square_grid(activations[self.layers[0]])
        if self.numerics == "official":  # the released feature cache stores latents and tokens as float16
            latent = latent.to(torch.float16)
        x = self.patches(latent, grid_hw)
        ys = {name: self.targets(activations[name], b, frames, grid_hw) for name in self.layers}
        if self.numerics == "official":
            ys = {name: y.to(torch.float16) for name, y in ys.items()}
        if x.shape[0] != b * frames * grid_hw[0] * grid_hw[1]:
            raise ValueError(f"LayerSearch: the stitching conv gives {x.shape[0]} rows for latent "
                             f"{tuple(latent.shape)}, expected {b * frames * grid_hw[0] * grid_hw[1]}")
        self.sums[split].update(x, ys)
        if self.zero is not None and split == "train":
            self._update_zero(self.patches(latent, grid_hw, "zeros"), ys)
        self.samples[split] += b

    def _update_zero(self, x0: Tensor, ys: Mapping[str, Tensor]) -> None:
        z = self.zero
        z["xtx"].addmm_(x0.T, x0)
        z["sx"] += x0.sum(0)
        for name in self.layers:
            z[f"xty:{name}"].addmm_(x0.T, ys[name].to(device=x0.device, dtype=torch.float64))

    @staticmethod
    def _square_grid(activation: Any) -> tuple[int, int]:
        """Square token grid from the token count, trying 5 prefix tokens (cls/camera + 4 registers), then 1, 0."""
        tokens = activation["tokens"] if isinstance(activation, Mapping) else activation
        for p in (5, 1, 0):
            if tokens.shape[1] <= p:
                continue
            side = math.isqrt(tokens.shape[1] - p)
            if side * side == tokens.shape[1] - p:
                return side, side
        raise ValueError(f"LayerSearch.update: cannot infer a square token grid from {tokens.shape[1]} tokens; "
                         f"pass grid_hw")

    def update_rows(self, x: Tensor, ys: Mapping[str, Tensor], split: str = "train", samples: int = 0,
                    x_zero: Tensor | None = None) -> None:
        """Low-level: accumulate precomputed patch rows ``x`` (n, d) and targets ``ys[layer]`` (n, D); official
        numerics also need the zero-padded rows ``x_zero`` of the train split."""
        if split not in self.sums:
            raise ValueError(f"LayerSearch.update_rows: split must be one of {tuple(self.sums)}, got {split!r}")
        if self.zero is not None and split == "train":
            if x_zero is None:
                raise ValueError("LayerSearch.update_rows: numerics='official' needs x_zero (zero-padded rows)")
            self._update_zero(x_zero.to(device=self.device, dtype=torch.float64), ys)
        self.sums[split].update(x, ys)
        self.samples[split] += samples

    # ---------------------------------------------------------------------------------------- bookkeeping
    def tensors(self) -> list[Tensor]:
        """Every accumulator tensor (train then held-out), for :func:`reduce_`."""
        out = [t for split in SPLITS if split in self.sums for t in self.sums[split].tensors()]
        return out + (list(self.zero.values()) if self.zero is not None else [])

    def nbytes(self) -> int:
        """Bytes held by the accumulators (independent of the number of samples)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def merge_(self, other: LayerSearch) -> LayerSearch:
        if set(self.sums) != set(other.sums):
            raise ValueError("LayerSearch.merge_: one search keeps held-out sums, the other does not")
        if self.numerics != other.numerics:
            raise ValueError("LayerSearch.merge_: the searches use different numerics")
        for split in self.sums:
            self.sums[split].merge_(other.sums[split])
            self.samples[split] += other.samples[split]
        if self.zero is not None:
            for k in self.zero:
                self.zero[k] += other.zero[k].to(self.zero[k].device)
        return self

    # ---------------------------------------------------------------------------------------- solve
    @torch.no_grad()
    def solve(self, ridge: float = DEFAULT_RIDGE) -> SearchResult:
        """Ridge solution, train / held-out MSE and CKA per layer, and the ranking (best first)."""
        train, held = self.sums["train"], self.sums.get("heldout")
        if train.n <= 0:
            raise ValueError("LayerSearch.solve: no training rows accumulated")
        cfg = self.config
        if train.n < self.d + 1:
            logger.warning("LayerSearch.solve: %d training rows for %d parameters per output: the fit is "
                           "underdetermined (ridge-regularised); train MSE is optimistic, rank by held-out MSE",
                           int(train.n), self.d + 1)
        fits: dict[str, LayerFit] = {}
        for name in self.layers:
            if self.zero is not None:
                w = solve_official(self.zero["xtx"], self.zero[f"xty:{name}"], self.zero["sx"], train.xty[name][-1],
                                   train.n, ridge)
            else:
                w = solve_ridge(train.xtx, train.xty[name], ridge)
            train_mse = mse_from_sums(train.xtx, train.xty[name], train.yy[name], train.n, w)
            held_mse = (mse_from_sums(held.xtx, held.xty[name], held.yy[name], held.n, w)
                        if held is not None and held.n > 0 else None)
            cka = cka_from_sums(train.xtx, train.xty[name], train.yty[name]) if train.cka else None
            weight = w[:-1].T.reshape(cfg.weight_shape).contiguous()
            fits[name] = LayerFit(name, weight.cpu(), w[-1].contiguous().cpu(), train_mse, held_mse, cka,
                                  int(train.n), int(held.n) if held is not None else 0)
        metric = ("heldout_mse" if held is not None and held.n > 0 and self.numerics != "official"
                  else "train_mse")

        def key(name: str) -> tuple[float, int]:
            v = getattr(fits[name], metric)
            return (v if v is not None and math.isfinite(v) else math.inf, self.layers.index(name))

        ranking = sorted(self.layers, key=key)
        for i, name in enumerate(ranking, 1):
            fits[name].rank = i
        info = {"train_samples": self.samples["train"], "heldout_samples": self.samples["heldout"],
                "accumulator_bytes": self.nbytes(), "numerics": self.numerics}
        return SearchResult(cfg, fits, ranking, float(ridge), metric, info, self.temporal_factor)


# ============================================================================================ distributed
def reduce_(accumulators: LayerSearch | NormalEquations | Iterable[Tensor], group=None) -> None:
    """Sum the accumulators over all processes in place (``torch.distributed.all_reduce``); a no-op when no process
    group is initialised. Works with gloo (CPU tensors) and NCCL (CUDA tensors): the tensors are reduced where they
    live. Every process must call it with accumulators of identical layout. Sample counters of a
    :class:`LayerSearch` are reduced too."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if isinstance(accumulators, (LayerSearch, NormalEquations)):
        tensors = accumulators.tensors()
    else:
        tensors = list(accumulators)
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    if isinstance(accumulators, LayerSearch):
        dev = accumulators.device
        counts = torch.tensor([accumulators.samples[s] for s in SPLITS], dtype=torch.float64, device=dev)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        for s, v in zip(SPLITS, counts.tolist()):
            accumulators.samples[s] = round(v)
