"""Cameras: conventions, conversions and VGGT's pose encoding against hand-computed cases."""

import math

import pytest
import torch

from vist3a import Cameras
from vist3a.cameras import invert_rigid, look_at
from vist3a.rotations import normalize_quat, quat_to_matrix


def identity_cams(v=1, f=100.0, w=200, h=100):
    k = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]).expand(v, 3, 3).clone()
    return Cameras(torch.eye(4).expand(v, 4, 4).clone(), k, w, h)


def project(cams, points):
    """Pixel coordinates (V, N, 2) of world points (N, 3) under the OpenCV convention."""
    pc = (cams.w2c[:, None, :3, :3] @ points[None, :, :, None])[..., 0] + cams.w2c[:, None, :3, 3]
    uv = (cams.K[:, None] @ pc[..., None])[..., 0]
    return uv[..., :2] / uv[..., 2:]


def test_opencv_axes_x_right_y_down_z_forward():
    cams = identity_cams()
    uv = project(cams, torch.tensor([[0.0, 0, 5], [1.0, 0, 5], [0.0, 1, 5]]))[0]
    assert torch.allclose(uv[0], torch.tensor([100.0, 50.0]))  # on the axis: image centre
    assert uv[1, 0] > 100 and uv[2, 1] > 50  # +x goes right, +y goes down


def test_w2c_inverts_c2w():
    q = normalize_quat(torch.randn(5, 4, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    c2w[:, :3, :3] = quat_to_matrix(q)
    c2w[:, :3, 3] = torch.randn(5, 3, dtype=torch.float64)
    k = torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]], dtype=torch.float64).expand(5, 3, 3)
    cams = Cameras(c2w, k, 64, 64)
    assert torch.allclose(cams.w2c @ c2w, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-12)
    assert torch.allclose(invert_rigid(cams.w2c), c2w)


def test_normalized_intrinsics_round_trip():
    cams = identity_cams(2, f=120.0, w=320, h=240)
    nk = cams.normalized_K
    assert torch.allclose(nk[0], torch.tensor([[120 / 320, 0, 0.5], [0, 120 / 240, 0.5], [0, 0, 1]]))
    back = Cameras.from_normalized_K(cams.c2w, nk, 320, 240)
    assert torch.allclose(back.K, cams.K)


def test_resized_scales_intrinsics():
    cams = identity_cams(1, f=100.0, w=200, h=100).resized(100, 50)
    assert torch.allclose(cams.K[0], torch.tensor([[50.0, 0, 50], [0, 50, 25], [0, 0, 1]]))


def test_vggt_pose_encoding_known_case():
    """Identity rotation (xyzw = 0,0,0,1), translation t, 90-degree FoVs: f = size/2, camera centre = -t."""
    t = torch.tensor([0.5, -1.0, 2.0])
    enc = torch.cat([t, torch.tensor([0.0, 0, 0, 1]), torch.tensor([math.pi / 2, math.pi / 2])])[None]
    cams = Cameras.from_vggt_pose_encoding(enc, height=100, width=200)
    assert torch.allclose(cams.K[0], torch.tensor([[100.0, 0, 100], [0, 50, 50], [0, 0, 1]]), atol=1e-5)
    assert torch.allclose(cams.w2c[0, :3, 3], t) and torch.allclose(cams.centers[0], -t)


def test_vggt_pose_encoding_rotation_about_y():
    """xyzw = (0, sin 45, 0, cos 45) is +90 degrees about y: world x maps to camera -z."""
    s = math.sqrt(0.5)
    enc = torch.tensor([[0.0, 0, 0, 0, s, 0, s, 1.0, 1.0]])
    w2c = Cameras.from_vggt_pose_encoding(enc, 64, 64).w2c[0]
    assert torch.allclose(w2c[:3, :3] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 0, -1]), atol=1e-6)
    # Non-unit quaternions are normalised, as VGGT's quat_to_mat does.
    w2c_scaled = Cameras.from_vggt_pose_encoding(enc * torch.tensor([1, 1, 1, 3, 3, 3, 3, 1, 1.0]), 64, 64).w2c[0]
    assert torch.allclose(w2c_scaled, w2c, atol=1e-6)


def test_vggt_pose_encoding_round_trip():
    q = normalize_quat(torch.randn(6, 4, dtype=torch.float64))
    q = torch.where(q[:, 3:] < 0, -q, q)  # xyzw with w >= 0
    enc = torch.cat([torch.randn(6, 3, dtype=torch.float64), q, torch.rand(6, 2, dtype=torch.float64) + 0.5], -1)
    cams = Cameras.from_vggt_pose_encoding(enc, 120, 160)
    assert torch.allclose(cams.to_vggt_pose_encoding(), enc, atol=1e-10)


def test_look_at_and_orbit_face_the_centre():
    cams = Cameras.orbit(6, center=(1.0, 2.0, 3.0), radius=4.0, elevation_deg=30.0, width=64, height=48)
    assert len(cams) == 6 and (cams.width, cams.height) == (64, 48)
    assert torch.allclose((cams.centers - torch.tensor([1.0, 2, 3])).norm(dim=-1), torch.full((6,), 4.0), atol=1e-5)
    uv = project(cams, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0]).expand(6, 2), atol=1e-4)
    c2w = look_at(torch.tensor([0.0, 0, -5]), torch.zeros(3), torch.tensor([0.0, -1, 0]))
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 1, 0]))  # image down = world +y when up is -y


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(c2w=torch.eye(3)[None]), r"c2w must have shape \(V, 4, 4\)"),
        (dict(K=torch.eye(3).expand(2, 3, 3)), r"K must have shape \(1, 3, 3\)"),
        (dict(c2w=torch.diag(torch.tensor([1.0, 1, -1, 1]))[None]), "determinant"),
        (dict(K=torch.diag(torch.tensor([-1.0, 1, 1]))[None]), "focal lengths"),
        (dict(width=0), "width and height must be positive"),
    ],
)
def test_validation(kwargs, message):
    args = dict(c2w=torch.eye(4)[None], K=torch.eye(3)[None], width=8, height=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Cameras(**args)
