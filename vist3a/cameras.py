"""`Cameras`: V pinhole cameras of one scene that share an image size.

Conventions (stated once here):

* ``c2w`` (V, 4, 4) camera-to-world, **OpenCV** axes: x right, y down, z forward (the camera looks along +z).
  World-to-camera ("view matrix", what gsplat calls ``viewmats``) is its inverse, :attr:`Cameras.w2c`.
* ``K`` (V, 3, 3) **pixel** intrinsics: fx, fy in pixels, principal point (cx, cy) in pixels, with pixel (i, j)'s
  centre at (j + 0.5, i + 0.5) (the gsplat/3DGS convention).
* ``width``, ``height``: image size in pixels.
* Normalised intrinsics (the AnySplat convention) divide row 0 by width and row 1 by height.
* VGGT's pose encoding ``absT_quaR_FoV`` (..., 9) = [t (3), quaternion **xyzw** (4), fov_h, fov_w] describes the
  world-to-camera extrinsic [R | t] and the vertical / horizontal fields of view in radians, principal point at the
  image centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .rotations import matrix_to_quat, quat_xyzw_to_matrix

__all__ = ["Cameras", "invert_rigid", "look_at", "vggt_pose_encoding_to_extrinsics"]


def invert_rigid(transforms: Tensor) -> Tensor:
    """Inverse (..., 4, 4) of rigid transforms given as (..., 4, 4) or (..., 3, 4) [R t]: [R^T -R^T t; 0 0 0 1]."""
    r = transforms[..., :3, :3]
    t = transforms[..., :3, 3:]
    rt = r.transpose(-1, -2)
    out = torch.zeros(*transforms.shape[:-2], 4, 4, dtype=transforms.dtype, device=transforms.device)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1
    return out


def vggt_pose_encoding_to_extrinsics(pose_enc: Tensor, height: int, width: int, eps: float = 0.0
                                     ) -> tuple[Tensor, Tensor]:
    """VGGT ``absT_quaR_FoV`` (..., 9) -> world-to-camera [R | t] (..., 3, 4) and pixel intrinsics (..., 3, 3).

    fx = (W/2) / (tan(fov_w/2) + eps), fy = (H/2) / (tan(fov_h/2) + eps), principal point (W/2, H/2). VGGT uses
    eps = 0; AnySplat adds eps = 1e-3 to the tangent. The quaternion (xyzw) need not be unit.
    """
    t, q, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsics = torch.cat([quat_xyzw_to_matrix(q), t[..., None]], dim=-1)
    k = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    k[..., 0, 0] = (width / 2.0) / (torch.tan(fov_w / 2.0) + eps)
    k[..., 1, 1] = (height / 2.0) / (torch.tan(fov_h / 2.0) + eps)
    k[..., 0, 2] = width / 2.0
    k[..., 1, 2] = height / 2.0
    k[..., 2, 2] = 1.0
    return extrinsics, k


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV camera-to-world (..., 4, 4) for cameras at ``eye`` (..., 3) looking at ``target`` (..., 3).

    ``up`` (..., 3) is the world direction that appears up in the image (image y points the other way).
    """
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up.expand_as(forward)), dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1
    return c2w


@dataclass(eq=False)
class Cameras:
    """V pinhole cameras (one scene); see the module docstring for conventions.

    Construction validates shapes, that each c2w is rigid with a proper rotation, and that focal lengths are positive.
    """

    c2w: Tensor
    K: Tensor
    width: int
    height: int
    validate: bool = True

    def __post_init__(self) -> None:
        self.width, self.height = int(self.width), int(self.height)
        if self.validate:
            self._check()

    def _check(self) -> None:
        if not isinstance(self.c2w, Tensor) or self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"Cameras: c2w must have shape (V, 4, 4), got {tuple(getattr(self.c2w, 'shape', ()))}")
        v = self.c2w.shape[0]
        if not isinstance(self.K, Tensor) or tuple(self.K.shape) != (v, 3, 3):
            raise ValueError(f"Cameras: K must have shape ({v}, 3, 3), got {tuple(getattr(self.K, 'shape', ()))}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Cameras: width and height must be positive, got {self.width}x{self.height}")
        if self.K.dtype != self.c2w.dtype or self.K.device != self.c2w.device:
            raise ValueError("Cameras: c2w and K must share dtype and device")
        if not self.c2w.dtype.is_floating_point:
            raise ValueError(f"Cameras: tensors must be floating point, got {self.c2w.dtype}")
        if v == 0:
            return
        if not (torch.isfinite(self.c2w).all() and torch.isfinite(self.K).all()):
            raise ValueError("Cameras: c2w or K contains NaN or infinite values")
        m = self.c2w.double()
        bottom = torch.tensor([0, 0, 0, 1], dtype=torch.float64, device=m.device)
        if not torch.allclose(m[:, 3], bottom.expand(v, 4), atol=1e-5):
            raise ValueError("Cameras: the last row of every c2w must be [0, 0, 0, 1]")
        r = m[:, :3, :3]
        eye = torch.eye(3, dtype=torch.float64, device=m.device).expand(v, 3, 3)
        # bf16/fp16 poses carry ~1e-2 rounding; accept that, reject real non-rotations.
        tol = 1e-3 if self.c2w.dtype in (torch.float32, torch.float64) else 5e-2
        if not torch.allclose(r @ r.transpose(1, 2), eye, atol=tol) or bool((torch.linalg.det(r) < 0).any()):
            raise ValueError("Cameras: the rotation part of every c2w must be orthonormal with determinant +1")
        if not bool(((self.K[:, 0, 0] > 0) & (self.K[:, 1, 1] > 0)).all()):
            raise ValueError("Cameras: focal lengths K[:, 0, 0] and K[:, 1, 1] must be positive (pixels)")

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.c2w.dtype

    @property
    def w2c(self) -> Tensor:
        """World-to-camera (V, 4, 4) (gsplat's ``viewmats``)."""
        return invert_rigid(self.c2w)

    @property
    def centers(self) -> Tensor:
        """Camera centres (V, 3) in world space."""
        return self.c2w[:, :3, 3]

    @property
    def normalized_K(self) -> Tensor:
        """Intrinsics (V, 3, 3) with row 0 divided by width and row 1 by height (AnySplat's convention)."""
        k = self.K.clone()
        k[:, 0] = k[:, 0] / self.width
        k[:, 1] = k[:, 1] / self.height
        return k

    def _replace(self, **kw) -> "Cameras":
        values = dict(c2w=self.c2w, K=self.K, width=self.width, height=self.height)
        values.update(kw)
        return Cameras(**values, validate=False)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Cameras":
        return self._replace(c2w=self.c2w.to(device=device, dtype=dtype), K=self.K.to(device=device, dtype=dtype))

    def __getitem__(self, index: int | slice | Tensor) -> "Cameras":
        """Subset of views; an int keeps a single-view Cameras."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._replace(c2w=self.c2w[index], K=self.K[index])

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras for images resized (not cropped) to ``width`` x ``height``: intrinsics scale with size."""
        if width <= 0 or height <= 0:
            raise ValueError(f"Cameras.resized: size must be positive, got {width}x{height}")
        k = self.K.clone()
        k[:, 0] = k[:, 0] * (width / self.width)
        k[:, 1] = k[:, 1] * (height / self.height)
        return self._replace(K=k, width=width, height=height)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_normalized_K(cls, c2w: Tensor, normalized_K: Tensor, width: int, height: int) -> "Cameras":
        """Cameras from c2w (V, 4, 4) and AnySplat-style normalised intrinsics (V, 3, 3)."""
        k = normalized_K.clone()
        k[:, 0] = k[:, 0] * width
        k[:, 1] = k[:, 1] * height
        return cls(c2w, k, width, height)

    @classmethod
    def from_w2c(cls, w2c: Tensor, K: Tensor, width: int, height: int) -> "Cameras":
        """Cameras from world-to-camera (V, 4, 4) or (V, 3, 4) extrinsics."""
        if w2c.shape[-2:] not in ((3, 4), (4, 4)):
            raise ValueError(f"Cameras.from_w2c: extrinsics must be (V, 3, 4) or (V, 4, 4), got {tuple(w2c.shape)}")
        return cls(invert_rigid(w2c), K, width, height)

    @classmethod
    def from_vggt_pose_encoding(cls, pose_enc: Tensor, height: int, width: int) -> "Cameras":
        """Cameras from VGGT's ``absT_quaR_FoV`` pose encoding (V, 9) for images of ``height`` x ``width``.

        [t, q_xyzw] is the world-to-camera extrinsic (q need not be unit); fx = (W/2)/tan(fov_w/2),
        fy = (H/2)/tan(fov_h/2), principal point at (W/2, H/2). Note VGGT's (height, width) argument order.
        """
        if pose_enc.ndim != 2 or pose_enc.shape[-1] != 9:
            raise ValueError(f"Cameras.from_vggt_pose_encoding: pose_enc must be (V, 9), got {tuple(pose_enc.shape)}")
        w2c, k = vggt_pose_encoding_to_extrinsics(pose_enc, height, width)
        return cls.from_w2c(w2c, k, width, height)

    def to_vggt_pose_encoding(self) -> Tensor:
        """VGGT ``absT_quaR_FoV`` (V, 9) of these cameras (principal point is not encoded)."""
        w2c = self.w2c
        q_wxyz = matrix_to_quat(w2c[:, :3, :3])
        fov_h = 2 * torch.atan((self.height / 2.0) / self.K[:, 1, 1])
        fov_w = 2 * torch.atan((self.width / 2.0) / self.K[:, 0, 0])
        return torch.cat([w2c[:, :3, 3], q_wxyz[:, [1, 2, 3, 0]], fov_h[:, None], fov_w[:, None]], dim=-1)

    @classmethod
    def orbit(
        cls,
        num_views: int,
        center: Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0),
        radius: float = 3.0,
        elevation_deg: float = 15.0,
        fov_deg: float = 50.0,
        width: int = 256,
        height: int = 256,
        up: tuple[float, float, float] = (0.0, -1.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "Cameras":
        """``num_views`` cameras on a circle around ``center`` looking at it, with a horizontal field of view
        ``fov_deg``. ``up`` is the world up direction; the default -y matches OpenCV-style scenes (y down), as
        produced by VGGT/AnySplat whose first camera is the world frame."""
        if num_views < 1:
            raise ValueError(f"Cameras.orbit: num_views must be >= 1, got {num_views}")
        c = torch.as_tensor(center, dtype=torch.float64).cpu()
        u = torch.nn.functional.normalize(torch.tensor(up, dtype=torch.float64), dim=0)
        # Two axes spanning the orbit plane, perpendicular to up.
        helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        if abs(float(u @ helper)) > 0.9:
            helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        a = torch.nn.functional.normalize(torch.linalg.cross(u, helper), dim=0)
        b = torch.linalg.cross(a, u)
        angles = torch.arange(num_views, dtype=torch.float64) * (2 * math.pi / num_views)
        el = math.radians(elevation_deg)
        eye = c + radius * (
            math.cos(el) * (torch.cos(angles)[:, None] * b + torch.sin(angles)[:, None] * a) + math.sin(el) * u
        )
        c2w = look_at(eye, c.expand_as(eye), u)
        f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        k = torch.tensor([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=torch.float64)
        return cls(c2w.to(dtype=dtype, device=device), k.expand(num_views, 3, 3).to(dtype=dtype, device=device),
                   width, height)

    @classmethod
    def orbit_like(cls, cameras: "Cameras", num_views: int, width: int | None = None, height: int | None = None,
                   fov_deg: float | None = None, full_circle: bool = False) -> "Cameras":
        """``num_views`` cameras on the orbit the given ``cameras`` lie on (e.g. the cameras a scene was decoded
        with), looking at the point they look at.

        The look-at point is the least-squares intersection of the optical axes; the orbit axis is the normal of the
        plane through the camera centres (oriented like the cameras' mean up, ``-y``; their mean up when the centres
        are nearly collinear); radius and height above the look-at point are the cameras' means. Views are spread
        evenly over the arc the cameras cover (``full_circle``: all around). Intrinsics: the mean focal length of
        ``cameras`` scaled to ``width`` x ``height`` (default their size), or a horizontal ``fov_deg``.
        """
        if num_views < 1:
            raise ValueError(f"Cameras.orbit_like: num_views must be >= 1, got {num_views}")
        c2w = cameras.c2w.double().cpu()
        centres, fwd, up_cam = c2w[:, :3, 3], c2w[:, :3, 2], -c2w[:, :3, 1]
        eye3 = torch.eye(3, dtype=torch.float64)
        proj = eye3 - fwd[:, :, None] * fwd[:, None, :]                      # (V, 3, 3)
        a, b = proj.sum(0), (proj @ centres[:, :, None]).sum(0)[:, 0]
        target = torch.linalg.lstsq(a, b).solution if len(cameras) > 1 else centres[0] + fwd[0]
        up = torch.nn.functional.normalize(up_cam.mean(0), dim=0)
        rel = centres - centres.mean(0)
        if len(cameras) >= 3:
            _, s, vh = torch.linalg.svd(rel, full_matrices=False)
            if s[1] > 1e-6 * max(float(s[0]), 1e-12):  # centres span a plane: its normal is the orbit axis
                normal = vh[-1] if float(vh[-1] @ up) >= 0 else -vh[-1]
                up = normal
        d = centres - target
        lift = d @ up
        flat = d - lift[:, None] * up
        e1 = torch.nn.functional.normalize(flat[0] if float(flat[0].norm()) > 1e-9 else
                                           torch.linalg.cross(up, eye3[int(up.abs().argmin())]), dim=0)
        e2 = torch.linalg.cross(up, e1)
        ang = torch.atan2(flat @ e2, flat @ e1)
        order = torch.argsort(ang)
        if full_circle or len(cameras) < 2:
            start, span = 0.0, 2 * math.pi
        else:  # the arc the cameras cover: the circle minus its largest empty gap
            sa = ang[order]
            gaps = torch.cat([sa[1:] - sa[:-1], (sa[:1] + 2 * math.pi) - sa[-1:]])
            g = int(gaps.argmax())
            start = float(sa[(g + 1) % len(sa)])
            span = 2 * math.pi - float(gaps[g])
        steps = torch.arange(num_views, dtype=torch.float64)
        phi = start + span * (steps / max(num_views - (0 if full_circle else 1), 1))
        radius, h = float(flat.norm(dim=-1).mean()), float(lift.mean())
        eye = target + radius * (phi.cos()[:, None] * e1 + phi.sin()[:, None] * e2) + h * up
        c2w_new = look_at(eye, target.expand_as(eye), up)
        w, hgt = int(width or cameras.width), int(height or cameras.height)
        if fov_deg is not None:
            fx = fy = (w / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        else:
            fx = float(cameras.K[:, 0, 0].double().mean()) * w / cameras.width
            fy = float(cameras.K[:, 1, 1].double().mean()) * hgt / cameras.height
        k = torch.tensor([[fx, 0, w / 2.0], [0, fy, hgt / 2.0], [0, 0, 1]], dtype=torch.float64)
        return cls(c2w_new.float(), k.float().expand(num_views, 3, 3).contiguous(), w, hgt)

    def __repr__(self) -> str:
        return f"Cameras(num={len(self)}, size={self.width}x{self.height}, dtype={self.dtype}, device={self.device})"


