"""`vist3a generate` / `vist3a reconstruct` with --preset tiny (in-process, offline, CPU)."""

import pytest
import torch
from PIL import Image

from vist3a.cli import main
from vist3a.io import load_gaussians, read_point_cloud_ply, read_splat


def test_generate_tiny_writes_only_the_chosen_files(tmp_path, monkeypatch, caplog):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["generate", "a red sports car", "--preset", "tiny", "-o", "scene.ply", "--pointmap", "points.ply",
            "--splat", "scene.splat", "--seed", "3", "--no-progress"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert "UNTRAINED" in caplog.text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["points.ply", "scene.cameras.json", "scene.ply",
                                                          "scene.splat", "work"]
    from vist3a.io.cameras_json import read_cameras_json

    cams = read_cameras_json(work / "scene.cameras.json")
    assert len(cams) == 9 and (cams.width, cams.height) == (56, 56)
    g = load_gaussians(work / "scene.ply")
    assert len(g) == 9 * 56 * 56 and g.sh_degree == 0  # published export: DC colour only
    assert len(read_point_cloud_ply(work / "points.ply")) == 9 * 56 * 56
    assert len(read_splat(work / "scene.splat")) == 9 * 56 * 56
    first = (work / "scene.ply").read_bytes()
    assert main(argv + ["--sh-degree", "0"]) == 0
    assert (work / "scene.ply").read_bytes() == first


@pytest.mark.parametrize("extra, message", [
    (["--frames", "8"], "4k + 1"),
    (["--size", "500"], "multiples of 16"),
    (["--wan", "x/y"], "drop --wan"),
    (["-o", "scene.png"], "must end in .ply or .splat"),
    (["--splat", "x.ply"], "--splat"),
    (["--pointmap", "nofolder/p.ply"], "does not exist"),
])
def test_generate_errors_are_clear(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "a car", "--preset", "tiny", "-o", "scene.ply", *extra]
    if "-o" in extra:
        argv = ["generate", "a car", "--preset", "tiny", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_empty_prompt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "  ", "--preset", "tiny", "-o", "scene.ply"]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_generate_missing_weights_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a car", "-o", "scene.ply", "--wan", "nobody/no-wan", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nobody/no-wan" in err and "--wan <folder>" in err
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_tiny_from_frames(tmp_path, monkeypatch):
    clip = tmp_path / "clip"
    clip.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        arr = (torch.rand(72, 90, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(clip / f"{i:03d}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", "clip", "--preset", "tiny", "-o", "scene.ply", "--pointmap", "points.ply"]) == 0
    assert len(load_gaussians(tmp_path / "scene.ply")) == 9 * 56 * 56
    assert len(read_point_cloud_ply(tmp_path / "points.ply")) == 9 * 56 * 56
    assert main(["reconstruct", "missing", "--preset", "tiny", "-o", "x.ply"]) == 2
    assert not (tmp_path / "x.ply").exists()


def test_ctrl_c_leaves_no_output(tmp_path, monkeypatch, capsys):
    import vist3a.pipeline.text_to_3d as t2d

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(t2d, "run_decoder", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a car", "--preset", "tiny", "-o", "scene.ply", "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_render_mp4_or_clear_error(tmp_path, monkeypatch, capsys):
    import sys

    from vist3a import Gaussians
    from vist3a.io import save_gaussians

    n = 50
    g = torch.Generator().manual_seed(0)
    scene = Gaussians(means=torch.randn(n, 3, generator=g), scales=torch.full((n, 3), 0.05),
                      rotations=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), opacities=torch.full((n,), 0.8),
                      sh=torch.rand(n, 1, 3, generator=g))
    save_gaussians(tmp_path / "s.ply", scene)
    out = tmp_path / "orbit.mp4"
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        assert main(["render", str(tmp_path / "s.ply"), "-o", str(out), "--views", "4", "--size", "32"]) == 0
        assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 4
        out.unlink()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    assert main(["render", str(tmp_path / "s.ply"), "-o", str(out), "--views", "2", "--size", "16"]) == 2
    assert "imageio-ffmpeg" in capsys.readouterr().err and not out.exists()


def test_readme_main_command_runs_tiny_generate(tmp_path, monkeypatch):
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- main-command -->", 1)[1].split("```", 2)[1].strip()
    run = block.split("&&")[-1].strip()
    words = shlex.split(run)
    assert words[:3] == ["python3", "-m", "vist3a"] and "generate" in words and "--preset" in words
    assert words[words.index("--preset") + 1] in ("tiny", "micro")
    monkeypatch.chdir(tmp_path)
    assert main(words[3:] + ["--no-progress"]) == 0
    out = Path(words[words.index("-o") + 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.stem + ".cameras.json"])


def test_tiny_preset_takes_tiny_trained_decoder_and_lora(tmp_path, monkeypatch, single_thread):
    """What the training scripts export for the tiny models (a decoder folder, a PEFT adapter folder) plugs into
    `vist3a generate --preset tiny --decoder ... --lora ...` and changes the result."""
    from peft import LoraConfig, get_peft_model

    from vist3a.pipeline.presets import tiny_decoder, tiny_wan_pipeline
    from vist3a.stitching import save_decoder

    dec = tiny_decoder(0)
    with torch.no_grad():
        dec.stitching.bias.add_(0.5)
    save_decoder(dec, tmp_path / "decoder", video_size=64)
    transformer = tiny_wan_pipeline(0).transformer
    peft = get_peft_model(transformer, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                  target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    peft.save_pretrained(str(tmp_path / "lora"))
    monkeypatch.chdir(tmp_path)
    base = ["generate", "a red sports car", "--preset", "tiny", "--no-progress", "--seed", "1"]
    assert main([*base, "-o", "plain.ply"]) == 0
    assert main([*base, "--decoder", "decoder", "-o", "dec.ply"]) == 0
    assert main([*base, "--lora", "lora", "-o", "lora.ply"]) == 0
    plain, with_dec, with_lora = (load_gaussians(tmp_path / f) for f in ("plain.ply", "dec.ply", "lora.ply"))
    assert len(plain) == len(with_dec) == len(with_lora)
    assert not torch.allclose(plain.means, with_dec.means) and not torch.allclose(plain.means, with_lora.means)
    assert main([*base, "--decoder", "missing_folder", "-o", "x.ply"]) == 2
    assert not (tmp_path / "x.ply").exists()


def test_no_cameras_writes_only_the_scene(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a car", "--preset", "tiny", "-o", "s.ply", "--no-cameras", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]


def test_render_orbits_along_the_decoded_cameras(tmp_path, monkeypatch, caplog):
    """`render` picks up scene.cameras.json: its views lie on the decoding cameras' orbit (the first view is the
    first decoded camera), and --cameras none / a bad file behave as documented."""
    from vist3a import Cameras, Gaussians
    from vist3a.io import save_gaussians
    from vist3a.io.cameras_json import read_cameras_json, write_cameras_json

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    n = 500
    g = Gaussians(torch.randn(n, 3) * 0.3, torch.full((n, 3), 0.05), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                  torch.full((n,), 0.9), torch.rand(n, 1, 3))
    save_gaussians(tmp_path / "scene.ply", g)
    cams = Cameras.orbit(8, radius=3.0, elevation_deg=20, width=32, height=32)[0:4]
    write_cameras_json(tmp_path / "scene.cameras.json", cams)
    back = read_cameras_json(tmp_path / "scene.cameras.json")
    torch.testing.assert_close(back.c2w, cams.c2w)
    orbit = Cameras.orbit_like(back, 4)
    torch.testing.assert_close(orbit.centers, cams.centers, atol=1e-4, rtol=0)
    with caplog.at_level("INFO"):
        assert main(["render", "scene.ply", "-o", "a.png", "--views", "4", "--size", "32"]) == 0
    assert "orbit along the cameras" in caplog.text
    assert main(["render", "scene.ply", "-o", "b.png", "--views", "4", "--size", "32", "--cameras", "none"]) == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    (tmp_path / "bad.json").write_text('{"format": "vist3a.cameras", "width": 0, "height": 1, "frames": []}')
    assert main(["render", "scene.ply", "-o", "c.png", "--cameras", "bad.json"]) == 2
    assert not (tmp_path / "c.png").exists()
