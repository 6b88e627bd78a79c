"""`render`: differentiable RGB / alpha / depth images of a Gaussian scene (gsplat ``rasterization()`` style).

Conventions (stated once; see :mod:`vist3a.gaussians` and :mod:`vist3a.cameras` for the inputs):

* cameras are OpenCV pinholes, world-to-camera = ``cameras.w2c``, pixel intrinsics ``cameras.K``, pixel (i, j) has
  its centre at (j + 0.5, i + 0.5);
* splatting is gsplat's "classic" 3DGS (EWA projection, 0.3 px low-pass without compensation, opacity-aware boxes,
  alpha = min(0.999, o exp(-sigma)), alpha < 1/255 skipped, front-to-back blending stopped before T <= 1e-4); see
  :mod:`vist3a.render.projection` and :mod:`vist3a.render.rasterizer` for the exact rules;
* colours come from the SH coefficients viewed along ``mean - camera centre``:
  ``max(SH(d) . sh + 0.5, 0)`` (:func:`vist3a.sh.eval_sh`);
* depth is gsplat's "ED" expected depth, ``sum_i w_i z_i / alpha`` (0 where alpha is 0), z = camera-space depth.

Backends: ``"gsplat"`` calls ``gsplat.rasterization`` (CUDA only; gsplat compiles its kernels on first use, and if
that fails a warning is logged once and the PyTorch rasteriser is used instead for the rest of the process);
``"torch"`` uses our pure-PyTorch tiled rasteriser on any device; ``"auto"`` picks gsplat for float32 CUDA tensors and
the PyTorch rasteriser otherwise. This package compiles nothing itself, and rendering works without a CUDA toolkit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..pointcloud import PointCloud
from ..sh import eval_sh
from .projection import EPS2D, project_gaussians
from .rasterizer import DEFAULT_CHUNK_ELEMENTS, TILE_SIZE, rasterize_tiles
from .threads import render_threads

__all__ = ["RenderOutput", "render", "render_point_cloud", "render_with"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "gsplat", "torch"]
_BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Images of V views, H x W pixels.

    Attributes:
        rgb: (V, H, W, 3) colour, background blended in.
        alpha: (V, H, W, 1) accumulated opacity, 1 - final transmittance.
        depth: (V, H, W, 1) expected camera-space depth sum(w_i z_i) / alpha; 0 where alpha is 0.
        backend: ``"gsplat"`` or ``"torch"``, the rasteriser that produced the images.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    backend: str


class _GsplatState:
    """Process-wide memory of whether gsplat's kernels work, so a failed setup is neither retried nor re-logged."""

    def __init__(self) -> None:
        self.failure: str | None = None  # why gsplat cannot be used; None while it has not failed
        self.worked = False  # gsplat rendered successfully at least once


_GSPLAT = _GsplatState()


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backend: Backend = "auto",
    tile_size: int = TILE_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    threads: int | None = None,
) -> RenderOutput:
    """Render ``gaussians`` from every camera in ``cameras`` (conventions in the module docstring).

    Args:
        gaussians: scene of N Gaussians: means (N, 3), scales (N, 3), rotations (N, 4) wxyz, opacities (N,),
            sh (N, K, 3). Outputs are differentiable w.r.t. all five.
        cameras: V cameras sharing one image size H x W (``cameras.height`` x ``cameras.width``); converted to the
            Gaussians' dtype, and must be on the same device.
        sh_degree: SH degree to evaluate, 0 .. ``gaussians.sh_degree`` (default: all the scene holds).
        background: (3,) or (V, 3) colour behind the splats; default black.
        near_plane, far_plane: splats whose centre has camera-space z outside [near, far] are dropped; 0 < near < far.
        backend: ``"auto"``, ``"gsplat"`` (CUDA only) or ``"torch"``; see the module docstring.
        tile_size: tile edge in pixels of the PyTorch rasteriser (gsplat always uses 16). It does not change the
            images (outside a splat's pixel box its alpha is below 1/255 and skipped anyway); 8 is up to ~2x
            faster on CPU for small splats.
        chunk_elements: memory budget of the PyTorch rasteriser, the number of pixel x splat pairs evaluated at once
            (each costs a few float temporaries). With autograd, when a view needs more than 8 budgets, chunks
            are recomputed in backward (activation checkpointing) so memory stays near one budget.
        threads: torch intra-op threads of the PyTorch rasteriser on the CPU for this call (torch's setting is
            restored afterwards; not thread-safe against other Python threads changing it meanwhile). None: the
            environment variable ``VIST3A_RENDER_THREADS`` (an int, ``auto`` or ``torch``), default ``auto`` =
            ``torch.get_num_threads()`` minus the cores other processes keep busy (at least 1), because OpenMP
            threads sharing a core with another busy process slow the whole render down many times over
            (:mod:`vist3a.render.threads`). The images do not depend on it beyond float rounding.

    Returns:
        :class:`RenderOutput` with rgb (V, H, W, 3), alpha (V, H, W, 1) and depth (V, H, W, 1) in the Gaussians'
        dtype (float32 for half-precision input, which is rendered in float32).

    Raises:
        TypeError: ``gaussians`` / ``cameras`` of the wrong type.
        ValueError: wrong shapes, no cameras, Gaussians and cameras on different devices, an
            unknown backend, ``"gsplat"`` for CPU or non-float32 tensors, or an out-of-range ``sh_degree``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"render: backend must be one of {_BACKENDS}, got {backend!r}")
    if chunk_elements < 1:
        raise ValueError(f"render: chunk_elements must be >= 1, got {chunk_elements}")
    if tile_size < 1:
        raise ValueError(f"render: tile_size must be >= 1, got {tile_size}")
    gaussians, cameras, sh_degree, background = _prepare(gaussians, cameras, sh_degree, background, near_plane,
                                                         far_plane)
    on_cuda = _is_cuda(gaussians.device)
    if backend == "gsplat":
        if not on_cuda:
            raise ValueError(
                "render: backend='gsplat' needs CUDA tensors (gsplat only has CUDA kernels), but the Gaussians are on "
                f"{gaussians.device}; use backend='torch' or 'auto', or move the scene to a GPU"
            )
        if gaussians.dtype != torch.float32:
            raise ValueError(f"render: backend='gsplat' needs float32 tensors, got {gaussians.dtype}")
    use_gsplat = backend == "gsplat" or (backend == "auto" and on_cuda and gaussians.dtype == torch.float32)
    if use_gsplat and len(gaussians) > 0 and _GSPLAT.failure is None:
        try:
            out = _render_gsplat(gaussians, cameras, sh_degree, background, near_plane, far_plane)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # any setup failure (no nvcc, compile error, missing _C) falls back
            if _GSPLAT.worked:
                raise  # gsplat works in this process, so this is a real error, not a missing toolkit
            _GSPLAT.failure = f"{type(err).__name__}: {str(err).strip()[:500]}"
            logger.warning(
                "gsplat could not render (%s). gsplat compiles its CUDA kernels on first use and needs the CUDA "
                "toolkit (nvcc) for that; falling back to the pure-PyTorch rasteriser on %s for the rest of this "
                "process (same results, slower).",
                _GSPLAT.failure,
                gaussians.device,
            )
        else:
            _GSPLAT.worked = True
            return out
    if gaussians.device.type != "cpu":
        return _render_prepared(rasterize_tiles, gaussians, cameras, sh_degree, background, near_plane, far_plane,
                                tile_size=tile_size, chunk_elements=chunk_elements)
    n_threads, previous = render_threads(threads), torch.get_num_threads()
    if n_threads != previous:
        torch.set_num_threads(n_threads)
    try:
        return _render_prepared(rasterize_tiles, gaussians, cameras, sh_degree, background, near_plane, far_plane,
                                tile_size=tile_size, chunk_elements=chunk_elements)
    finally:
        if n_threads != previous:
            torch.set_num_threads(previous)


def render_point_cloud(
    point_cloud: PointCloud,
    cameras: Cameras,
    radius: float,
    *,
    opacity: float = 1.0,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render each point as an isotropic splat of standard deviation ``radius`` (world units) in its colour.

    Args:
        point_cloud: N points (N, 3) with colours (N, 3) in [0, 1].
        cameras: V cameras, as for :func:`render`.
        radius: splat standard deviation in world units (> 0).
        opacity: splat opacity in [0, 1].
        background, near_plane, far_plane, backend: as for :func:`render`.

    Returns:
        :class:`RenderOutput` as for :func:`render`.
    """
    if not isinstance(point_cloud, PointCloud):
        raise TypeError(f"render_point_cloud: expected a PointCloud, got {type(point_cloud).__name__}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"render_point_cloud: opacity must lie in [0, 1], got {opacity}")
    gaussians = point_cloud.to_gaussians(radius, opacity=opacity)
    return render(gaussians, cameras, background=background, near_plane=near_plane, far_plane=far_plane,
                  backend=backend)


def render_with(
    rasterizer: Callable[..., tuple[Tensor, Tensor]],
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    **rasterizer_kwargs,
) -> RenderOutput:
    """:func:`render` with an explicit per-camera PyTorch rasteriser (the tiled one, or the dense reference).

    ``rasterizer(means2d, conics, opacities, features, depths, radii, visible, width, height, background,
    **rasterizer_kwargs)`` gets one camera's (N, ...) tensors and returns (image (H, W, F), transmittance (H, W)).
    """
    gaussians, cameras, sh_degree, background = _prepare(gaussians, cameras, sh_degree, background, near_plane,
                                                         far_plane)
    return _render_prepared(rasterizer, gaussians, cameras, sh_degree, background, near_plane, far_plane,
                            **rasterizer_kwargs)


# ---------------------------------------------------------------------- internals
def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _prepare(
    gaussians: Gaussians,
    cameras: Cameras,
    sh_degree: int | None,
    background: Tensor | None,
    near_plane: float,
    far_plane: float,
) -> tuple[Gaussians, Cameras, int, Tensor]:
    """Validate the inputs; return Gaussians in a render dtype, cameras in that dtype, the SH degree, and the
    background as (V, 3)."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"render: gaussians must be a vist3a Gaussians, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"render: cameras must be a vist3a Cameras, got {type(cameras).__name__}")
    if len(cameras) == 0:
        raise ValueError("render: cameras is empty (V = 0); pass at least one camera")
    if gaussians.device != cameras.device:
        raise ValueError(
            f"render: the Gaussians are on {gaussians.device} but the cameras on {cameras.device}; "
            "move both to one device"
        )
    if not 0 < near_plane < far_plane:
        raise ValueError(f"render: need 0 < near_plane < far_plane, got {near_plane} and {far_plane}")
    if gaussians.dtype not in (torch.float32, torch.float64):
        gaussians = gaussians.to(dtype=torch.float32)
    cameras = cameras.to(dtype=gaussians.dtype)
    if sh_degree is None:
        sh_degree = gaussians.sh_degree
    if not isinstance(sh_degree, int) or not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(
            f"render: sh_degree must be an int in 0..{gaussians.sh_degree} (the degree the Gaussians hold), "
            f"got {sh_degree!r}"
        )
    v = len(cameras)
    if background is None:
        background = gaussians.means.new_zeros(v, 3)
    else:
        if not isinstance(background, Tensor):
            background = torch.as_tensor(background, device=gaussians.device)
        if background.device != gaussians.device:
            raise ValueError(
                f"render: background is on {background.device} but the Gaussians on {gaussians.device}"
            )
        if tuple(background.shape) == (3,):
            background = background.expand(v, 3)
        elif tuple(background.shape) != (v, 3):
            raise ValueError(f"render: background must have shape (3,) or ({v}, 3), got {tuple(background.shape)}")
        background = background.to(dtype=gaussians.dtype)
    return gaussians, cameras, sh_degree, background


def _render_prepared(
    rasterizer: Callable[..., tuple[Tensor, Tensor]],
    gaussians: Gaussians,
    cameras: Cameras,
    sh_degree: int,
    background: Tensor,
    near_plane: float,
    far_plane: float,
    **rasterizer_kwargs,
) -> RenderOutput:
    """Project and rasterise camera by camera (memory stays at one camera's worth) with ``rasterizer``."""
    width, height = cameras.width, cameras.height
    w2c, centers = cameras.w2c, cameras.centers
    bg = torch.cat([background, background.new_zeros(len(cameras), 1)], dim=-1)  # depth has no background
    images, trans = [], []
    for v in range(len(cameras)):
        proj = project_gaussians(
            gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities, w2c[v : v + 1],
            cameras.K[v : v + 1], width, height, near_plane=near_plane, far_plane=far_plane, eps2d=EPS2D,
        )
        colors = eval_sh(sh_degree, gaussians.sh, gaussians.means - centers[v])  # (N, 3)
        features = torch.cat([colors, proj.depths[0, :, None]], dim=-1)  # (N, 4): RGB + depth
        image, t = rasterizer(
            proj.means2d[0], proj.conics[0], gaussians.opacities, features, proj.depths[0], proj.radii[0],
            proj.visible[0], width, height, bg[v], **rasterizer_kwargs,
        )
        images.append(image)
        trans.append(t)
    image = torch.stack(images)
    alpha = 1.0 - torch.stack(trans)[..., None]
    depth = image[..., 3:4] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=image[..., :3], alpha=alpha, depth=depth, backend="torch")


def _render_gsplat(
    gaussians: Gaussians,
    cameras: Cameras,
    sh_degree: int,
    background: Tensor,
    near_plane: float,
    far_plane: float,
) -> RenderOutput:
    """The same render through ``gsplat.rasterization`` (classic mode, RGB + expected depth)."""
    import gsplat  # local import: optional dependency, and only CUDA needs it
    from gsplat.cuda._backend import _C  # triggers gsplat's JIT build of its CUDA kernels on first use

    if _C is None:
        raise RuntimeError(
            "gsplat's CUDA extension is unavailable (no prebuilt gsplat.csrc module and no CUDA toolkit to compile it)"
        )
    colors, alphas, _meta = gsplat.rasterization(
        means=gaussians.means,
        quats=gaussians.rotations,
        scales=gaussians.scales,
        opacities=gaussians.opacities,
        colors=gaussians.sh,
        viewmats=cameras.w2c,
        Ks=cameras.K,
        width=cameras.width,
        height=cameras.height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=EPS2D,
        sh_degree=sh_degree,
        tile_size=TILE_SIZE,
        backgrounds=background,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    return RenderOutput(rgb=colors[..., :3], alpha=alphas, depth=colors[..., 3:4], backend="gsplat")
