"""Closed-form stitching-layer search: planted-conv recovery, noise level, ranking, associativity, flat memory, CKA."""

from __future__ import annotations

import math

import pytest
import torch

from vist3a.stitching.layer import StitchingLayer, to_rows
from vist3a.stitching.search import (
    LayerSearch,
    NormalEquations,
    cka_from_sums,
    layer_tokens,
    linear_cka,
    mse_from_sums,
    reduce_,
    solve_ridge,
)

CFG = "conv3d_k5x3x3_o8_s1x2x2_p2x1x1"  # released kernel / stride / padding, 8 output channels
GRID = (4, 4)  # token grid; latent 8x8 -> conv stride 2 -> 4x4
PREFIX = 5


def planted_layer(seed: int = 0) -> StitchingLayer:
    g = torch.Generator().manual_seed(seed)
    sl = StitchingLayer(CFG, dtype=torch.float64)
    with torch.no_grad():
        sl.weight.copy_(torch.randn(sl.weight.shape, generator=g, dtype=torch.float64) * 0.1)
        sl.bias.copy_(torch.randn(sl.bias.shape, generator=g, dtype=torch.float64))
    return sl


def latents(n: int, seed: int, t_lat: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, t_lat, 8, 8, generator=g, dtype=torch.float64)


def as_tokens(features: torch.Tensor, seed: int = 99) -> torch.Tensor:
    """(B, D, T, h, w) conv-layout features -> (B*T, PREFIX + h*w, D) tokens like ``capture`` (random prefix)."""
    b, d, t, h, w = features.shape
    tok = features.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, d)
    prefix = torch.randn(b * t, PREFIX, d, generator=torch.Generator().manual_seed(seed), dtype=tok.dtype) * 50
    return torch.cat([prefix, tok], dim=1)


def test_planted_conv_recovered_exactly():
    sl = planted_layer()
    lat = latents(8, seed=1)
    with torch.no_grad():
        feats = sl(lat, GRID)  # the real resize + replicate-padded conv
    search = LayerSearch(CFG, ["planted"])
    search.update(lat, {"planted": as_tokens(feats)}, grid_hw=GRID)
    res = search.solve(ridge=0.0)
    fit = res.fits["planted"]
    assert fit.weight.shape == sl.weight.shape and fit.weight.dtype == torch.float64
    assert (fit.weight - sl.weight).abs().max() < 1e-8
    assert (fit.bias - sl.bias).abs().max() < 1e-8
    assert fit.train_mse < 1e-16
    # the default (official) ridge only perturbs slightly
    res_ridge = search.solve()
    assert (res_ridge.fits["planted"].weight - sl.weight).abs().max() < 1e-3


def test_zero_padding_would_not_recover():
    """The fit must use the conv's replicate padding: with zero-padded im2col a planted conv is not exact."""
    sl = planted_layer()
    lat = latents(8, seed=1) + 3.0  # non-zero borders make the padding mode matter
    with torch.no_grad():
        feats = sl(lat, GRID)
    search = LayerSearch(CFG, ["planted"])
    x_rep = search.patches(lat, GRID)
    y = feats.permute(0, 2, 3, 4, 1).reshape(-1, 8)
    geom = StitchingLayer(CFG, device="meta")
    xr = torch.nn.functional.interpolate(lat, size=geom.input_size(3, GRID), mode="trilinear", align_corners=True)
    xz = torch.nn.functional.pad(xr, (1, 1, 1, 1, 2, 2))  # zero padding, then valid windows
    xz = xz.unfold(2, 5, 1).unfold(3, 3, 2).unfold(4, 3, 2)  # (B, C, T, h, w, 5, 3, 3)
    x_zero = xz.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, 720)
    for x, exact in ((x_rep, True), (x_zero, False)):
        acc = NormalEquations(720, {"l": 8})
        acc.update(x, {"l": y})
        w = solve_ridge(acc.xtx, acc.xty["l"], 0.0)
        err = (w[:-1].T.reshape(sl.weight.shape) - sl.weight).abs().max()
        assert (err < 1e-8) == exact


def test_noise_mse_is_noise_variance():
    sigma = 0.1
    sl = planted_layer()
    search = LayerSearch(CFG, ["planted"], cka=False)
    g = torch.Generator().manual_seed(5)
    for split, seeds in (("train", range(8)), ("heldout", range(100, 104))):
        for s in seeds:
            lat = latents(8, seed=s)
            with torch.no_grad():
                feats = sl(lat, GRID)
            feats = feats + sigma * torch.randn(feats.shape, generator=g, dtype=feats.dtype)
            search.update(lat, {"planted": as_tokens(feats)}, grid_hw=GRID, split=split)
    res = search.solve()
    fit = res.fits["planted"]
    n, p = fit.train_rows, 721
    assert n == 8 * 8 * 9 * 16
    # least squares with p parameters: E[train RSS / n] = sigma^2 (1 - p/n); held-out ~ sigma^2 (1 + p/n)
    assert fit.train_mse == pytest.approx(sigma**2 * (1 - p / n), rel=0.05)
    assert fit.heldout_mse == pytest.approx(sigma**2, rel=0.15)
    assert fit.heldout_mse > fit.train_mse


def test_planted_layer_wins_ranking():
    sl = planted_layer()
    other = planted_layer(seed=3)
    search = LayerSearch(CFG, ["decoy_noise", "decoy_nonlinear", "planted", "decoy_shifted"])
    g = torch.Generator().manual_seed(11)

    def standardise(f):
        return (f - f.mean()) / f.std()

    for split, seeds in (("train", range(6)), ("heldout", range(50, 53))):
        for s in seeds:
            lat = latents(8, seed=s)
            with torch.no_grad():
                planted = sl(lat, GRID)
                nonlin = torch.tanh(3 * other(lat, GRID)) ** 2
            feats = {
                "planted": standardise(planted + 0.05 * torch.randn(planted.shape, generator=g, dtype=planted.dtype)),
                "decoy_noise": standardise(torch.randn(planted.shape, generator=g, dtype=planted.dtype)),
                "decoy_nonlinear": standardise(nonlin),
                "decoy_shifted": standardise(planted.roll(shifts=(3, 2), dims=(2, 3))),
            }
            search.update(lat, {k: as_tokens(v) for k, v in feats.items()}, grid_hw=GRID, split=split)
    res = search.solve()
    assert res.metric == "heldout_mse"
    assert res.ranking[0] == "planted"
    assert res.fits["planted"].rank == 1
    assert [res.fits[n].rank for n in res.ranking] == [1, 2, 3, 4]
    assert res.fits["planted"].cka == max(f.cka for f in res.fits.values())
    assert list(res.fits) == ["decoy_noise", "decoy_nonlinear", "planted", "decoy_shifted"]  # candidate order


def test_fit_reproduced_by_stitching_layer_and_mse_from_sums():
    """Weights reshaped to the conv layout give, through StitchingLayer, exactly the least-squares prediction; the
    train MSE from the sums equals the directly computed one."""
    lat = latents(6, seed=2)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(6, 8, 9, 4, 4, generator=g, dtype=torch.float64)
    search = LayerSearch(CFG, ["l"])
    search.update(lat, {"l": as_tokens(feats)}, grid_hw=GRID)
    res = search.solve()
    w = solve_ridge(search.sums["train"].xtx, search.sums["train"].xty["l"], res.ridge)
    x = search.patches(lat, GRID)
    pred_ls = x @ w[:-1] + w[-1]
    sl = res.stitching_layer("l", dtype=torch.float64)
    with torch.no_grad():
        pred_conv = to_rows(sl(lat, GRID))
    assert (pred_conv - pred_ls).abs().max() < 1e-10
    y = feats.permute(0, 2, 3, 4, 1).reshape(-1, 8)
    direct = float((pred_ls - y).square().mean())
    assert res.fits["l"].train_mse == pytest.approx(direct, rel=1e-9)


def test_batches_equal_one_batch_and_merge():
    lat = latents(6, seed=4)
    feats = torch.randn(6, 8, 9, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    toks = as_tokens(feats)
    one = LayerSearch(CFG, ["a", "b"])
    one.update(lat, {"a": toks, "b": toks * 2}, grid_hw=GRID)
    many = LayerSearch(CFG, ["a", "b"])
    parts = [LayerSearch(CFG, ["a", "b"]) for _ in range(3)]
    for i, (lo, hi) in enumerate(((0, 1), (1, 4), (4, 6))):
        sub = toks[lo * 9:hi * 9]
        many.update(lat[lo:hi], {"a": sub, "b": sub * 2}, grid_hw=GRID)
        parts[i].update(lat[lo:hi], {"a": sub, "b": sub * 2}, grid_hw=GRID)
    merged = parts[0].merge_(parts[1]).merge_(parts[2])
    for other in (many, merged):
        for t1, t2 in zip(one.tensors(), other.tensors()):
            torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-9)
        assert other.samples == one.samples == {"train": 6, "heldout": 0}
    r1, r2 = one.solve(), many.solve()
    for name in ("a", "b"):
        torch.testing.assert_close(r1.fits[name].weight, r2.fits[name].weight, rtol=1e-9, atol=1e-10)
        assert r1.fits[name].train_mse == pytest.approx(r2.fits[name].train_mse, rel=1e-9)


def test_memory_flat_in_samples():
    layers = ["a", "b", "c"]
    d, dim = 720, 8
    search = LayerSearch(CFG, layers)
    expected = 8 * ((d + 1) ** 2 + len(layers) * ((d + 1) * dim + 1 + dim * dim)   # train (with CKA Grams)
                    + (d + 1) ** 2 + len(layers) * ((d + 1) * dim + 1))            # held-out
    assert search.nbytes() == expected
    sizes = []
    for s in range(4):
        lat = latents(2, seed=s)
        feats = torch.randn(2, 8, 9, 4, 4, dtype=torch.float64)
        search.update(lat, {k: as_tokens(feats) for k in layers}, grid_hw=GRID, split="train" if s % 2 else "heldout")
        sizes.append((search.nbytes(), [t.shape for t in search.tensors()]))
    assert all(s == sizes[0] for s in sizes) and sizes[0][0] == expected
    assert not hasattr(search, "features")
    no_cka = LayerSearch(CFG, layers, cka=False)
    assert no_cka.nbytes() == expected - 8 * len(layers) * dim * dim


def test_cka_sanity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y_ind = torch.randn(20000, 5, generator=g, dtype=torch.float64)
    y_rel = torch.tanh(x[:, :5]) + 0.3 * y_ind

    def from_sums(a, b):
        acc = NormalEquations(a.shape[1], {"y": b.shape[1]})
        for chunk in range(0, a.shape[0], 7000):
            acc.update(a[chunk:chunk + 7000], {"y": b[chunk:chunk + 7000]})
        return cka_from_sums(acc.xtx, acc.xty["y"], acc.yty["y"])

    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert from_sums(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x + 5.0, x) == pytest.approx(1.0, abs=1e-12)  # centring
    assert from_sums(x + 5.0, x - 3.0) == pytest.approx(1.0, abs=1e-9)
    assert from_sums(x, y_ind) < 0.01
    rel = from_sums(x, y_rel)
    assert 0.1 < rel < 0.99
    assert rel == pytest.approx(linear_cka(x, y_rel), rel=1e-9)
    assert from_sums(0.2 * x, 7.3 * y_rel) == pytest.approx(rel, rel=1e-9)  # isotropic scaling invariance
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert from_sums(x @ q, y_rel) == pytest.approx(rel, rel=1e-9)  # orthogonal invariance


def test_ridge_never_shrinks_the_bias():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, 2, generator=g, dtype=torch.float64) + torch.tensor([3.0, -2.0], dtype=torch.float64)
    acc = NormalEquations(4, {"y": 2}, cka=False)
    acc.update(x, {"y": y})
    w = solve_ridge(acc.xtx, acc.xty["y"], 1e12)
    assert w[:-1].abs().max() < 1e-6
    torch.testing.assert_close(w[-1], y.mean(0), rtol=1e-6, atol=1e-6)
    assert math.isfinite(mse_from_sums(acc.xtx, acc.xty["y"], acc.yy["y"], acc.n, w))


def test_layer_tokens_and_errors():
    t = torch.randn(4, 5 + 16, 8)
    assert torch.equal(layer_tokens(t, 16), t[:, 5:])
    assert torch.equal(layer_tokens({"tokens": t, "layers": {}}, 16), t[:, 5:])
    with pytest.raises(ValueError):
        layer_tokens(t, 40)
    search = LayerSearch(CFG, ["a"])
    lat = latents(1, seed=0)
    with pytest.raises(ValueError, match="images"):
        search.update(lat, {"a": torch.randn(5, 21, 8, dtype=torch.float64)}, grid_hw=GRID)  # 5 != 1 x 9 frames
    with pytest.raises(ValueError, match="dim"):
        search.update(lat, {"a": torch.randn(9, 21, 4, dtype=torch.float64)}, grid_hw=GRID)
    with pytest.raises(ValueError, match="split"):
        search.update(lat, {"a": torch.randn(9, 21, 8)}, grid_hw=GRID, split="test")
    with pytest.raises(ValueError, match="no training rows"):
        search.solve()
    search.update(lat, {"a": torch.randn(9, 21, 8)})  # square grid inferred from 21 = 5 + 4 x 4 tokens
    assert search.sums["train"].n == 9 * 16
    with pytest.raises(ValueError):
        LayerSearch(CFG, [])
    with pytest.raises(ValueError):
        LayerSearch(CFG, ["a", "a"])


def test_reduce_is_noop_without_process_group():
    search = LayerSearch(CFG, ["a"])
    search.update(latents(1, seed=0), {"a": torch.randn(9, 21, 8)}, grid_hw=GRID)
    before = [t.clone() for t in search.tensors()]
    reduce_(search)
    assert all(torch.equal(a, b) for a, b in zip(before, search.tensors()))


def test_without_heldout_sums():
    search = LayerSearch(CFG, ["a"], heldout=False)
    full = LayerSearch(CFG, ["a"])
    assert full.nbytes() - search.nbytes() == 8 * (721 ** 2 + 721 * 8 + 1)
    lat = latents(8, seed=0)
    search.update(lat, {"a": torch.randn(72, 21, 8, dtype=torch.float64)}, grid_hw=GRID)
    with pytest.raises(ValueError, match="split"):
        search.update(lat, {"a": torch.randn(72, 21, 8)}, grid_hw=GRID, split="heldout")
    res = search.solve()
    assert res.metric == "train_mse" and res.fits["a"].heldout_mse is None and res.fits["a"].heldout_rows == 0
    with pytest.raises(ValueError, match="held-out"):
        full.merge_(search)


# ------------------------------------------------------------------ official numerics
def _numpy_official(lat: torch.Tensor, tokens: torch.Tensor, ridge: float):
    """Independent float64 numpy version of the released search on latents (B, 16, 2, 8, 8) and tokens
    (B*5, PREFIX + 16, D): float16 cache, trilinear (align_corners) time resize 2 -> 5 frames, ZERO-padded im2col
    (k 5x3x3, stride 1x2x2, pad 2x1x1), no intercept, ridge on the full diagonal, bias = mean residual; the MSE of
    the resulting replicate-padded conv on the same rows."""
    import numpy as np

    z = lat.to(torch.float16).double().numpy()
    b, c, t_in, h, w = z.shape
    t = (t_in - 1) * 4 + 1
    pos = np.arange(t) * (t_in - 1) / (t - 1)
    lo = np.minimum(np.floor(pos).astype(int), t_in - 2)
    frac = pos - lo
    z = z[:, :, lo] * (1 - frac)[None, None, :, None, None] + z[:, :, lo + 1] * frac[None, None, :, None, None]

    def im2col(mode):
        zp = np.pad(z, ((0, 0), (0, 0), (2, 2), (1, 1), (1, 1)), mode="constant" if mode == "zeros" else "edge")
        rows = []
        for bi in range(b):
            for ti in range(t):
                for yi in range(h // 2):
                    for xi in range(w // 2):
                        rows.append(zp[bi, :, ti:ti + 5, 2 * yi:2 * yi + 3, 2 * xi:2 * xi + 3].reshape(-1))
        return np.stack(rows)

    y = tokens[:, PREFIX:].to(torch.float16).double().numpy().reshape(-1, tokens.shape[-1])
    x0 = im2col("zeros")
    wgt = np.linalg.solve(x0.T @ x0 + ridge * np.eye(x0.shape[1]), x0.T @ y)
    bias = (y - x0 @ wgt).mean(0)
    mse = ((im2col("edge") @ wgt + bias - y) ** 2).mean()
    return wgt, bias, mse


def test_official_numerics_match_an_independent_numpy_implementation():
    lat = latents(3, seed=5, t_lat=2)
    sl = planted_layer(seed=6)
    with torch.no_grad():
        feats = sl(lat, GRID)
    g = torch.Generator().manual_seed(7)
    tok_a = as_tokens(feats + 0.3 * torch.randn(feats.shape, generator=g, dtype=feats.dtype))
    tok_b = as_tokens(torch.randn(feats.shape, generator=g, dtype=feats.dtype))
    ridge = 0.5  # large enough that "ridge on the full diagonal" vs "not on the bias" shows
    search = LayerSearch(CFG, ["a", "b"], numerics="official", heldout=True)
    search.update(lat, {"a": tok_a, "b": tok_b}, grid_hw=GRID)
    # held-out data is reported but never ranks in official mode
    search.update(latents(1, seed=8, t_lat=2), {"a": tok_b[:5], "b": tok_a[:5]}, grid_hw=GRID, split="heldout")
    res = search.solve(ridge=ridge)
    assert res.metric == "train_mse" and res.info["numerics"] == "official"
    for name, tok in (("a", tok_a), ("b", tok_b)):
        wgt, bias, mse = _numpy_official(lat, tok, ridge)
        fit = res.fits[name]
        want_w = torch.from_numpy(wgt.T.reshape(fit.weight.shape))
        torch.testing.assert_close(fit.weight, want_w, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(fit.bias, torch.from_numpy(bias), rtol=1e-9, atol=1e-10)
        assert math.isclose(fit.train_mse, float(mse), rel_tol=1e-9)
        assert fit.heldout_mse is not None
    assert res.ranking == sorted(["a", "b"], key=lambda n: res.fits[n].train_mse)
    # ours differs (replicate-padded design, unregularised joint bias): the switch matters
    ours = LayerSearch(CFG, ["a"], heldout=False)
    ours.update(lat, {"a": tok_a}, grid_hw=GRID)
    assert (ours.solve(ridge=ridge).fits["a"].bias - res.fits["a"].bias).abs().max() > 1e-4
    with pytest.raises(ValueError, match="numerics"):
        LayerSearch(CFG, ["a"], numerics="paper")
