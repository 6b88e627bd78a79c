"""`vist3a convert` and .spz wherever the command line takes .ply / .splat (info, render)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vist3a import Gaussians, PointCloud
from vist3a.cli import main
from vist3a.io import read_gaussians_ply, read_spz, read_spz_header, read_splat, write_gaussians_ply
from vist3a.io import write_point_cloud_ply, write_spz
from vist3a.rotations import normalize_quat
from vist3a.sh import rgb_to_sh_dc


def red_blob(n=400, degree=3):
    g = torch.Generator().manual_seed(0)
    sh = torch.zeros(n, (degree + 1) ** 2, 3)
    sh[:, 0] = rgb_to_sh_dc(torch.tensor([1.0, 0.0, 0.0]))
    sh[:, 1:] = torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.05
    return Gaussians(torch.randn(n, 3, generator=g) * 0.3, torch.full((n, 3), 0.05),
                     normalize_quat(torch.randn(n, 4, generator=g)), torch.full((n,), 0.9), sh)


def test_convert_between_ply_spz_and_splat(tmp_path, capsys):
    scene = red_blob()
    write_gaussians_ply(tmp_path / "a.ply", scene)
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "a.spz")]) == 0
    spz = read_spz(tmp_path / "a.spz")
    assert spz.sh_degree == 3 and (spz.means - scene.means).abs().max() < 2**-12
    assert (tmp_path / "a.spz").stat().st_size * 4 < (tmp_path / "a.ply").stat().st_size
    assert main(["convert", str(tmp_path / "a.spz"), str(tmp_path / "b.ply")]) == 0
    assert torch.equal(read_gaussians_ply(tmp_path / "b.ply").means, spz.means)
    assert main(["convert", str(tmp_path / "a.spz"), str(tmp_path / "c.splat")]) == 0
    assert len(read_splat(tmp_path / "c.splat")) == len(scene)
    assert main(["convert", str(tmp_path / "a.ply"), str(tmp_path / "d.spz"), "--sh-degree", "1",
                 "--spz-version", "2", "--spz-frame", "rub"]) == 0
    header = read_spz_header(tmp_path / "d.spz")
    assert (header.version, header.sh_degree) == (2, 1)
    assert torch.allclose(read_spz(tmp_path / "d.spz").means[:, 1], -scene.means[:, 1], atol=2**-12)
    assert main(["info", str(tmp_path / "d.spz")]) == 0
    out = capsys.readouterr().out
    assert "format:      .spz version 2, 12 fractional bits" in out and "sh degree:   1" in out


def test_convert_point_clouds_and_errors(tmp_path, capsys):
    write_point_cloud_ply(tmp_path / "p.ply", PointCloud(torch.rand(30, 3), torch.rand(30, 3)))
    assert main(["convert", str(tmp_path / "p.ply"), str(tmp_path / "q.ply")]) == 0
    assert main(["convert", str(tmp_path / "p.ply"), str(tmp_path / "q.spz")]) == 2
    assert "converts to a point-cloud .ply only" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "p.ply"), str(tmp_path / "q.obj")]) == 2
    assert "must end in .ply or .splat or .spz" in capsys.readouterr().err
    assert not (tmp_path / "q.spz").exists() and not (tmp_path / "q.obj").exists()


def test_render_spz(tmp_path):
    write_spz(tmp_path / "scene.spz", red_blob())
    out = tmp_path / "orbit.png"
    assert main(["render", str(tmp_path / "scene.spz"), "-o", str(out), "--views", "1", "--size", "64"]) == 0
    view = np.asarray(Image.open(out)).astype(int)
    assert view[28:36, 28:36].mean((0, 1))[0] > 200 and view[:4, :4].min() > 240


@pytest.mark.parametrize("suffix", [".spz"])
def test_generate_accepts_spz_output(tmp_path, suffix, single_thread):
    out = tmp_path / f"scene{suffix}"
    assert main(["generate", "a red sports car", "--preset", "tiny", "-o", str(out), "--sh-degree", "-1"]) == 0
    assert read_spz_header(out).count > 0
