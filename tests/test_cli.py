"""The `vist3a` command: info and render on real files."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vist3a import Gaussians, PointCloud
from vist3a.cli import main
from vist3a.io import write_gaussians_ply, write_point_cloud_ply, write_splat
from vist3a.rotations import normalize_quat
from vist3a.sh import rgb_to_sh_dc


def red_blob(n=400, degree=1):
    g = torch.Generator().manual_seed(0)
    sh = torch.zeros(n, (degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh_dc(torch.tensor([1.0, 0.0, 0.0]))
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 0.3,
        scales=torch.full((n, 3), 0.05),
        rotations=normalize_quat(torch.randn(n, 4, generator=g)),
        opacities=torch.full((n,), 0.9),
        sh=sh,
    )


def test_info_reports_count_degree_and_bounds(tmp_path, capsys):
    g = red_blob()
    write_gaussians_ply(tmp_path / "scene.ply", g)
    assert main(["info", str(tmp_path / "scene.ply")]) == 0
    out = capsys.readouterr().out
    assert "gaussian splats" in out and "count:       400" in out and "sh degree:   1" in out
    assert f"{g.means[:, 0].min().item():.4g}" in out

    write_point_cloud_ply(tmp_path / "points.ply", PointCloud(torch.zeros(5, 3), torch.ones(5, 3)))
    assert main(["info", str(tmp_path / "points.ply")]) == 0
    assert "point cloud" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["scene.ply", "scene.splat"])
def test_render_writes_an_orbit_grid_showing_the_scene(tmp_path, name):
    path = tmp_path / name
    (write_gaussians_ply if name.endswith(".ply") else write_splat)(path, red_blob())
    out = tmp_path / "orbit.png"
    assert main(["render", str(path), "-o", str(out), "--views", "4", "--size", "64"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (128, 128, 3)  # 2x2 grid of 64x64 views
    for r in range(2):
        for c in range(2):
            view = img[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64].astype(int)
            centre, corner = view[28:36, 28:36].mean((0, 1)), view[:4, :4].mean((0, 1))
            assert centre[0] > 200 and centre[1] < 80  # the red blob sits in the middle of every view
            assert corner.min() > 240  # white background around it


def test_errors_are_reported_without_traceback(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    run = subprocess.run([sys.executable, "-m", "vist3a", "info", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and "not a PLY file" in run.stderr and "Traceback" not in run.stderr
    write_gaussians_ply(tmp_path / "ok.ply", red_blob(10))
    assert main(["render", str(tmp_path / "ok.ply"), "-o", str(tmp_path / "out.jpg")]) == 2
    assert not (tmp_path / "out.jpg").exists()
