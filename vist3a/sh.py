"""Real spherical harmonics in the 3D Gaussian Splatting convention (degrees 0..4).

Convention (the one INRIA 3DGS, gsplat and every splat viewer use):

* coefficients are stored per Gaussian as ``sh`` (N, K, 3) with K = (degree+1)^2, index k = l^2 + l + m;
* the colour seen from unit direction d (from the camera centre towards the Gaussian) is
  ``rgb(d) = max(sum_k basis_k(d) * sh[k] + 0.5, 0)``;
* so the degree-0 ("DC") coefficient and a base colour relate by ``rgb = SH_C0 * dc + 0.5``.

The basis below is the real SH basis with the signs gsplat and 3DGS use (e.g. degree 1 is ``(-C1 y, C1 z, -C1 x)``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "SH_C0",
    "MAX_SH_DEGREE",
    "num_sh_bases",
    "sh_degree_from_bases",
    "sh_basis",
    "eval_sh",
    "rgb_to_sh_dc",
    "sh_dc_to_rgb",
    "sh_rotation_matrices",
    "rotate_sh",
]

SH_C0 = 0.28209479177387814
MAX_SH_DEGREE = 4

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
_C4 = (
    2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892, 0.10578554691520431,
    -0.6690465435572892, 0.47308734787878004, -1.7701307697799304, 0.6258357354491761,
)


def num_sh_bases(degree: int) -> int:
    """K = (degree+1)^2 coefficients for an SH degree in 0..4."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(num_bases: int) -> int:
    """The SH degree whose coefficient count is ``num_bases``; ValueError if it is not (d+1)^2 for d in 0..4."""
    degree = math.isqrt(max(num_bases, 0)) - 1
    if degree < 0 or (degree + 1) ** 2 != num_bases or degree > MAX_SH_DEGREE:
        raise ValueError(
            f"{num_bases} SH coefficients per channel is not (degree+1)^2 for a degree in 0..{MAX_SH_DEGREE}"
            " (valid counts: 1, 4, 9, 16, 25)"
        )
    return degree


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values (..., (degree+1)^2) at unit directions ``dirs`` (..., 3)."""
    num_sh_bases(degree)
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            _C2[0] * xy,
            _C2[1] * yz,
            _C2[2] * (2 * zz - xx - yy),
            _C2[3] * xz,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        out += [
            _C4[0] * xy * (xx - yy),
            _C4[1] * yz * (3 * xx - yy),
            _C4[2] * xy * (7 * zz - 1),
            _C4[3] * yz * (7 * zz - 3),
            _C4[4] * (zz * (35 * zz - 30) + 3),
            _C4[5] * xz * (7 * zz - 3),
            _C4[6] * (xx - yy) * (7 * zz - 1),
            _C4[7] * xz * (xx - 3 * yy),
            _C4[8] * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Colour (..., 3) = max(SH(dirs) . sh + 0.5, 0), using the first (degree+1)^2 coefficients.

    Args:
        degree: SH degree to evaluate (<= the degree ``sh`` holds).
        sh: coefficients (..., K, 3).
        dirs: viewing directions (..., 3), camera centre -> Gaussian; normalised here.
    """
    k = num_sh_bases(degree)
    if sh.shape[-2] < k:
        raise ValueError(f"eval_sh: degree {degree} needs {k} coefficients, the input holds {sh.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(degree, dirs)  # (..., k)
    return ((basis[..., None] * sh[..., :k, :]).sum(dim=-2) + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """DC coefficient (..., 3) that shows colour ``rgb`` (..., 3) from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """Base colour (..., 3) of the DC coefficient (..., 3) (not clamped)."""
    return dc * SH_C0 + 0.5


@functools.lru_cache(maxsize=1)
def _sample_dirs() -> Tensor:
    """64 fixed, well-spread unit directions (Fibonacci sphere), float64."""
    n = 64
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)


def sh_rotation_matrices(rotation: Tensor, degree: int) -> list[Tensor]:
    """Per-band matrices that rotate SH coefficients with the scene.

    For a scene rotated by ``rotation`` (3, 3) (x' = R x), band l's coefficients become ``M_l @ c_l`` so that the new
    function satisfies f'(R d) = f(d). Each M_l (2l+1, 2l+1) is the exact solution of Y_l(d) M_l = Y_l(R^T d) over
    64 spread directions (a band is closed under rotation), computed in float64.
    """
    r = rotation.detach().to(torch.float64).cpu()
    dirs = _sample_dirs()
    full = sh_basis(degree, dirs)
    rotated = sh_basis(degree, dirs @ r)  # rows: (R^T d)^T = d^T R
    mats = []
    for l in range(1, degree + 1):
        lo, hi = l * l, (l + 1) ** 2
        mats.append(torch.linalg.lstsq(full[:, lo:hi], rotated[:, lo:hi]).solution)
    return mats


def rotate_sh(sh: Tensor, rotation: Tensor) -> Tensor:
    """SH coefficients (N, K, 3) of Gaussians after rotating the scene by ``rotation`` (3, 3); DC is unchanged."""
    degree = sh_degree_from_bases(sh.shape[-2])
    out = [sh[..., :1, :]]
    for l, mat in enumerate(sh_rotation_matrices(rotation, degree), start=1):
        band = sh[..., l * l : (l + 1) ** 2, :]  # (N, 2l+1, 3)
        out.append(torch.einsum("ij,njc->nic", mat.to(sh), band))
    return torch.cat(out, dim=-2)
