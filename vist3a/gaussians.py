"""`Gaussians`: one 3D Gaussian splat scene.

Conventions (the only place they are stated; everything in the package follows them):

* ``means``     (N, 3)    world-space centres.
* ``scales``    (N, 3)    standard deviations along the local axes, **linear** (> 0). Files store log(scale).
* ``rotations`` (N, 4)    unit quaternions, **wxyz** (scalar first), local -> world.
* ``opacities`` (N,)      in [0, 1]. Files store logit(opacity).
* ``sh``        (N, K, 3) spherical-harmonic colour coefficients, K = (degree+1)^2, degree 0..4, in the 3DGS
  convention of :mod:`vist3a.sh` (colour = max(SH(d) . sh + 0.5, 0), index 0 is the DC term).

The covariance of Gaussian i is ``R_i diag(scales_i)^2 R_i^T``. Tensors share one device and one floating dtype.
A batch of scenes is a ``list[Gaussians]``; :func:`pack` / :func:`unpack` convert to one concatenated scene with
per-item counts, and :func:`to_padded` / :func:`from_padded` to padded (B, N_max, ...) tensors with counts (the layout
of ComfyUI core's splat type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .rotations import matrix_to_quat, normalize_quat, quat_multiply
from .sh import num_sh_bases, rotate_sh, sh_degree_from_bases

__all__ = ["Gaussians", "pack", "unpack", "to_padded", "from_padded"]

_FIELDS = ("means", "scales", "rotations", "opacities", "sh")
_UNIT_QUAT_TOL = 1e-3


@dataclass(eq=False)
class Gaussians:
    """One scene of N 3D Gaussians; see the module docstring for shapes and conventions.

    Construction validates shapes, dtype/device agreement, finiteness and ranges, raising ``ValueError`` naming the
    field. Pass ``validate=False`` only for tensors produced by trusted code on a hot path.
    """

    means: Tensor
    scales: Tensor
    rotations: Tensor
    opacities: Tensor
    sh: Tensor
    validate: bool = True

    def __post_init__(self) -> None:
        if self.validate:
            self._check()

    # ------------------------------------------------------------------ validation
    def _check(self) -> None:
        for name in _FIELDS:
            if not isinstance(getattr(self, name), Tensor):
                raise ValueError(f"Gaussians: {name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {
            "means": (n, 3),
            "scales": (n, 3),
            "rotations": (n, 4),
            "opacities": (n,),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if n < 0 or tuple(t.shape) != shape:
                want = "(N, " + ", ".join(str(s) for s in shape[1:]) + ")" if len(shape) > 1 else "(N,)"
                raise ValueError(f"Gaussians: {name} must have shape {want}, got {tuple(t.shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"Gaussians: sh must have shape (N, K, 3) with N={n}, got {tuple(self.sh.shape)}")
        try:
            sh_degree_from_bases(self.sh.shape[1])
        except ValueError as err:
            raise ValueError(f"Gaussians: sh has {err}") from None
        dtype, device = self.means.dtype, self.means.device
        if not dtype.is_floating_point:
            raise ValueError(f"Gaussians: tensors must be floating point, got {dtype}")
        for name in _FIELDS:
            t = getattr(self, name)
            if t.dtype != dtype or t.device != device:
                raise ValueError(
                    f"Gaussians: {name} is {t.dtype} on {t.device} but means is {dtype} on {device}; "
                    "convert all fields to one dtype and device"
                )
        if n == 0:
            return
        for name in _FIELDS:
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"Gaussians: {name} contains NaN or infinite values")
        if not bool((self.scales > 0).all()):
            raise ValueError("Gaussians: scales must be > 0 (they are linear standard deviations, not log-scales)")
        if not bool(((self.opacities >= 0) & (self.opacities <= 1)).all()):
            raise ValueError("Gaussians: opacities must lie in [0, 1] (they are probabilities, not logits)")
        norms = self.rotations.norm(dim=-1)
        if not bool(((norms - 1).abs() <= _UNIT_QUAT_TOL).all()):
            raise ValueError(
                "Gaussians: rotations must be unit quaternions (wxyz); normalise them first "
                "(vist3a.rotations.normalize_quat)"
            )

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def colors(self) -> Tensor:
        """Base (view-independent) colours (N, 3) in [0, 1] from the DC coefficients."""
        from .sh import sh_dc_to_rgb

        return sh_dc_to_rgb(self.sh[:, 0, :]).clamp(0.0, 1.0)

    def _replace(self, **fields: Tensor) -> "Gaussians":
        values = {name: fields.get(name, getattr(self, name)) for name in _FIELDS}
        return Gaussians(**values, validate=False)

    # ------------------------------------------------------------------ conversions
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        """The same Gaussians on ``device`` and/or as floating ``dtype``."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"Gaussians.to: dtype must be floating point, got {dtype}")
        return self._replace(**{n: getattr(self, n).to(device=device, dtype=dtype) for n in _FIELDS})

    def detach(self) -> "Gaussians":
        return self._replace(**{n: getattr(self, n).detach() for n in _FIELDS})

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> "Gaussians":
        """Subset by slice, boolean mask (N,), or integer indices; an int keeps a length-1 scene."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, Tensor) and index.dtype == torch.bool and index.shape != (len(self),):
            raise ValueError(f"Gaussians: boolean mask must have shape ({len(self)},), got {tuple(index.shape)}")
        return self._replace(**{n: getattr(self, n)[index] for n in _FIELDS})

    @staticmethod
    def cat(items: Sequence["Gaussians"]) -> "Gaussians":
        """One scene holding all Gaussians of ``items`` (their SH degrees must agree; see :meth:`with_sh_degree`)."""
        if not items:
            raise ValueError("Gaussians.cat: need at least one Gaussians")
        degrees = {g.sh_degree for g in items}
        if len(degrees) != 1:
            raise ValueError(
                f"Gaussians.cat: SH degrees differ ({sorted(degrees)}); call with_sh_degree() on each first"
            )
        first = items[0]
        return Gaussians(
            **{n: torch.cat([getattr(g, n).to(first.means) for g in items], dim=0) for n in _FIELDS},
            validate=False,
        )

    # ------------------------------------------------------------------ scene operations
    def prune(self, min_opacity: float) -> "Gaussians":
        """Keep the Gaussians whose opacity is >= ``min_opacity``."""
        return self[self.opacities >= min_opacity]

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Reduce (drop higher bands) or raise (zero-filled bands) the SH degree."""
        k = num_sh_bases(degree)
        have = self.sh.shape[1]
        if k <= have:
            sh = self.sh[:, :k]
        else:
            sh = torch.cat([self.sh, self.sh.new_zeros(len(self), k - have, 3)], dim=1)
        return self._replace(sh=sh)

    def bounds(self, quantile: float | None = None) -> tuple[Tensor, Tensor]:
        """Axis-aligned bounds (min (3,), max (3,)) of the means.

        With ``quantile`` q in (0, 0.5), the bounds are the q and 1-q quantiles per axis, robust to outliers.
        """
        if len(self) == 0:
            raise ValueError("Gaussians.bounds: the scene is empty")
        if quantile is None:
            return self.means.amin(dim=0), self.means.amax(dim=0)
        if not 0 < quantile < 0.5:
            raise ValueError(f"Gaussians.bounds: quantile must be in (0, 0.5), got {quantile}")
        q = torch.tensor([quantile, 1 - quantile], dtype=self.dtype, device=self.device)
        lo_hi = torch.quantile(self.means, q, dim=0)
        return lo_hi[0], lo_hi[1]

    def transform(
        self,
        rotation: Tensor | None = None,
        translation: Tensor | None = None,
        scale: float = 1.0,
    ) -> "Gaussians":
        """Apply the similarity x' = scale * R @ x + t to the scene.

        Means move, scales multiply by ``scale``, orientations compose with R, and SH coefficients of degree >= 1 are
        rotated exactly (per-band rotation matrices), so view-dependent colour turns with the scene.

        Args:
            rotation: (3, 3) proper rotation matrix (det +1); identity if None.
            translation: (3,); zero if None.
            scale: positive uniform scale factor.
        """
        if not scale > 0:
            raise ValueError(f"Gaussians.transform: scale must be > 0, got {scale}")
        means, rotations, sh = self.means, self.rotations, self.sh
        if rotation is not None:
            r = torch.as_tensor(rotation).to(self.means)
            if r.shape != (3, 3):
                raise ValueError(f"Gaussians.transform: rotation must be (3, 3), got {tuple(r.shape)}")
            r64 = r.double()
            eye = torch.eye(3, dtype=torch.float64, device=r.device)
            if not torch.allclose(r64 @ r64.T, eye, atol=1e-4) or torch.linalg.det(r64) < 0:
                raise ValueError("Gaussians.transform: rotation must be orthonormal with determinant +1")
            means = means @ r.T
            rotations = normalize_quat(quat_multiply(matrix_to_quat(r64).to(r)[None], rotations))
            if sh.shape[1] > 1:
                sh = rotate_sh(sh, r64)
        means = means * scale
        if translation is not None:
            t = torch.as_tensor(translation).to(self.means)
            if t.shape != (3,):
                raise ValueError(f"Gaussians.transform: translation must be (3,), got {tuple(t.shape)}")
            means = means + t
        return self._replace(means=means, rotations=rotations, sh=sh, scales=self.scales * scale)

    def __repr__(self) -> str:
        return (
            f"Gaussians(num={len(self)}, sh_degree={self.sh_degree}, dtype={self.dtype}, device={self.device})"
        )


# ---------------------------------------------------------------------- batches
def pack(items: Sequence[Gaussians]) -> tuple[Gaussians, list[int]]:
    """Concatenate a batch into one scene plus per-item counts (inverse: :func:`unpack`)."""
    return Gaussians.cat(items), [len(g) for g in items]


def unpack(gaussians: Gaussians, counts: Sequence[int]) -> list[Gaussians]:
    """Split a packed scene back into a batch by per-item ``counts``."""
    if sum(counts) != len(gaussians) or any(c < 0 for c in counts):
        raise ValueError(f"unpack: counts {list(counts)} do not add up to {len(gaussians)} Gaussians")
    out, start = [], 0
    for c in counts:
        out.append(gaussians[start : start + c])
        start += c
    return out


def to_padded(items: Sequence[Gaussians]) -> dict[str, Tensor]:
    """Padded batch tensors: means/scales (B, Nmax, 3), rotations (B, Nmax, 4), opacities (B, Nmax, 1),
    sh (B, Nmax, K, 3), counts (B,) int64. Padding rows are zeros with identity rotations and zero opacity."""
    packed, counts = pack(items)
    b, n_max = len(items), max(counts)
    out = {}
    for name in _FIELDS:
        src = getattr(packed, name)
        if name == "opacities":
            src = src[:, None]
        buf = src.new_zeros((b, n_max) + tuple(src.shape[1:]))
        if name == "rotations":
            buf[..., 0] = 1.0
        start = 0
        for i, c in enumerate(counts):
            buf[i, :c] = src[start : start + c]
            start += c
        out[name] = buf
    out["counts"] = torch.tensor(counts, dtype=torch.int64, device=packed.device)
    return out


def from_padded(
    means: Tensor,
    scales: Tensor,
    rotations: Tensor,
    opacities: Tensor,
    sh: Tensor,
    counts: Tensor | Sequence[int] | None = None,
) -> list[Gaussians]:
    """Batch from padded tensors as produced by :func:`to_padded`; opacities may be (B, N) or (B, N, 1).
    Without ``counts`` every row is used."""
    b, n = means.shape[:2]
    counts = [n] * b if counts is None else [int(c) for c in counts]
    if len(counts) != b or any(not 0 <= c <= n for c in counts):
        raise ValueError(f"from_padded: counts {counts} do not fit a batch of {b} x {n}")
    if opacities.ndim == 3:
        opacities = opacities[..., 0]
    return [
        Gaussians(means[i, :c], scales[i, :c], rotations[i, :c], opacities[i, :c], sh[i, :c])
        for i, c in enumerate(counts)
    ]
