"""The Gaussians container: validation, subsetting, batching, SH degree changes and similarity transforms."""

import math

import pytest
import torch

from vist3a import Gaussians
from vist3a.gaussians import from_padded, pack, to_padded, unpack
from vist3a.rotations import normalize_quat, quat_to_matrix
from vist3a.sh import eval_sh


def make(n=20, degree=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g, dtype=dtype),
        scales=torch.rand(n, 3, generator=g, dtype=dtype) * 0.1 + 0.01,
        rotations=normalize_quat(torch.randn(n, 4, generator=g, dtype=dtype)),
        opacities=torch.rand(n, generator=g, dtype=dtype),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3,
    )


def fields(g):
    return g.means, g.scales, g.rotations, g.opacities, g.sh


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", torch.zeros(5, 2), "means must have shape (N, 3)"),
        ("scales", -torch.ones(5, 3), "scales must be > 0"),
        ("opacities", torch.full((5,), 1.5), "opacities must lie in [0, 1]"),
        ("rotations", torch.ones(5, 4), "unit quaternions"),
        ("sh", torch.zeros(5, 5, 3), "SH coefficients"),
        ("sh", torch.zeros(5, 36, 3), "SH coefficients"),
        ("means", torch.tensor([[math.nan, 0, 0]] * 5), "NaN or infinite"),
        ("opacities", torch.zeros(4), "opacities must have shape"),
    ],
)
def test_validation_names_the_problem(field, value, message):
    good = dict(zip(("means", "scales", "rotations", "opacities", "sh"), fields(make(5, 1))))
    good[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        Gaussians(**good)


def test_mixed_dtypes_rejected():
    g = make(4, 0)
    with pytest.raises(ValueError, match="one dtype and device"):
        Gaussians(g.means.double(), g.scales, g.rotations, g.opacities, g.sh)


def test_indexing_masking_and_prune():
    g = make(10, 1)
    assert len(g[2:5]) == 3
    assert torch.equal(g[torch.tensor([3, 1])].means, g.means[[3, 1]])
    assert len(g[0]) == 1 and len(g[-1]) == 1 and torch.equal(g[-1].means, g.means[-1:])
    pruned = g.prune(0.5)
    assert torch.equal(pruned.opacities, g.opacities[g.opacities >= 0.5])
    assert bool((pruned.opacities >= 0.5).all())
    with pytest.raises(ValueError, match="boolean mask"):
        g[torch.ones(3, dtype=torch.bool)]


def test_to_changes_dtype_and_keeps_values():
    g = make(6, 1)
    d = g.to(dtype=torch.float64)
    assert d.dtype == torch.float64 and d.sh.dtype == torch.float64
    assert torch.allclose(d.means.float(), g.means)
    with pytest.raises(ValueError, match="floating point"):
        g.to(dtype=torch.int32)


def test_cat_pack_unpack_and_padded_round_trip():
    a, b = make(3, 2, seed=1), make(5, 2, seed=2)
    packed, counts = pack([a, b])
    assert counts == [3, 5] and len(packed) == 8
    back = unpack(packed, counts)
    for orig, got in zip([a, b], back):
        for x, y in zip(fields(orig), fields(got)):
            assert torch.equal(x, y)
    padded = to_padded([a, b])
    assert padded["means"].shape == (2, 5, 3) and padded["opacities"].shape == (2, 5, 1)
    assert padded["sh"].shape == (2, 5, 9, 3) and padded["counts"].tolist() == [3, 5]
    assert torch.equal(padded["rotations"][0, 3:], torch.tensor([[1.0, 0, 0, 0]] * 2))
    again = from_padded(**padded)
    assert [len(g) for g in again] == [3, 5]
    assert torch.equal(again[0].sh, a.sh) and torch.equal(again[1].means, b.means)
    with pytest.raises(ValueError, match="SH degrees differ"):
        Gaussians.cat([make(2, 1), make(2, 2)])
    with pytest.raises(ValueError, match="do not add up"):
        unpack(packed, [3, 4])


def test_sh_degree_reduction_and_raise():
    g = make(4, 3)
    low = g.with_sh_degree(1)
    assert low.sh_degree == 1 and torch.equal(low.sh, g.sh[:, :4])
    high = low.with_sh_degree(4)
    assert high.sh_degree == 4 and torch.equal(high.sh[:, :4], low.sh) and not high.sh[:, 4:].any()


def test_bounds_and_robust_bounds():
    g = make(1000, 0)
    lo, hi = g.bounds()
    assert torch.equal(lo, g.means.min(0).values) and torch.equal(hi, g.means.max(0).values)
    qlo, qhi = g.bounds(quantile=0.05)
    assert bool((qlo > lo).all()) and bool((qhi < hi).all())


def random_rotation(seed):
    return quat_to_matrix(normalize_quat(torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)))


def test_similarity_transform_moves_means_scales_and_covariances():
    g = make(50, 0, dtype=torch.float64)
    r, t, s = random_rotation(3), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 2.5
    out = g.transform(r, t, s)
    assert torch.allclose(out.means, s * g.means @ r.T + t)
    assert torch.allclose(out.scales, s * g.scales)

    def cov(x):
        rm = quat_to_matrix(x.rotations)
        return rm @ torch.diag_embed(x.scales**2) @ rm.transpose(1, 2)

    assert torch.allclose(cov(out), s * s * r @ cov(g) @ r.T, atol=1e-12)
    assert torch.allclose(out.rotations.norm(dim=-1), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_transform_rotates_view_dependent_colour(degree):
    """A viewer at R*p sees the rotated scene exactly as a viewer at p saw the original."""
    g = make(30, degree, dtype=torch.float64)
    r = random_rotation(7)
    out = g.transform(r)
    viewer = torch.tensor([0.3, -4.0, 2.0], dtype=torch.float64)
    before = eval_sh(degree, g.sh, g.means - viewer)
    after = eval_sh(degree, out.sh, out.means - viewer @ r.T)
    assert torch.allclose(before, after, atol=1e-10)
    assert not torch.allclose(out.sh[:, 1:], g.sh[:, 1:])  # the coefficients really changed


def test_transform_rejects_bad_input():
    g = make(3, 0)
    with pytest.raises(ValueError, match="determinant"):
        g.transform(torch.diag(torch.tensor([1.0, 1.0, -1.0])))
    with pytest.raises(ValueError, match="scale must be > 0"):
        g.transform(scale=0.0)
