"""Folder-of-frames reader, frame sampling, resize + centre crop, synthetic scenes, clear errors."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from training.data import (
    FolderClips,
    SyntheticClips,
    check_resolutions,
    find_scenes,
    load_clip,
    sample_frame_indices,
    shard_indices,
    split_scenes,
    synthetic_scene_frames,
    write_synthetic_scenes,
)


def write_frames(folder, n, size=(80, 60), ext=".png", start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        arr = torch.full((size[1], size[0], 3), i % 256, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"frame_{i}{ext}")


def test_layouts_and_natural_order(tmp_path):
    write_frames(tmp_path / "flat_scene", 12)                      # ROOT/<scene>/*.png
    write_frames(tmp_path / "1K" / "dl3dv_scene" / "images_4", 5, ext=".jpg")  # ROOT/<group>/<scene>/images_4
    write_frames(tmp_path / "1K" / "dl3dv_scene" / "images_8", 3)  # ignored: images_4 preferred
    (tmp_path / "empty").mkdir()
    scenes = {s.name: s for s in find_scenes(tmp_path)}
    assert set(scenes) == {"flat_scene", "1K/dl3dv_scene"}
    assert [p.name for p in scenes["flat_scene"].frames][:4] == ["frame_0.png", "frame_1.png", "frame_2.png",
                                                                  "frame_3.png"]
    assert scenes["flat_scene"].frames[-1].name == "frame_11.png"  # natural order: 11 after 2
    assert len(scenes["1K/dl3dv_scene"]) == 5 and scenes["1K/dl3dv_scene"].frames[0].parent.name == "images_4"
    only8 = find_scenes(tmp_path / "1K", image_dir="images_8")
    assert len(only8) == 1 and len(only8[0]) == 3
    single = find_scenes(tmp_path / "flat_scene")  # the root itself is a scene
    assert len(single) == 1 and len(single[0]) == 12


def test_missing_and_empty_folders_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_scenes(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_scenes(tmp_path / "file.txt")
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="no scenes found"):
        find_scenes(tmp_path)


def test_too_few_frames_raise_or_skip(tmp_path):
    write_frames(tmp_path / "short", 4)
    write_frames(tmp_path / "long", 12)
    with pytest.raises(ValueError, match="fewer than 9 frames: short \\(4\\)"):
        FolderClips(tmp_path, 2, views=9, window=12, vae_size=32, model_size=28)
    ds = FolderClips(tmp_path, 2, views=9, window=12, vae_size=32, model_size=28, skip_short=True)
    assert [s.name for s in ds.scenes] == ["long"]
    with pytest.raises(ValueError, match="too few frames"):
        sample_frame_indices(4, 9, 12, random.Random(0))
    with pytest.raises(ValueError, match="window"):
        sample_frame_indices(40, 9, 5, random.Random(0))


def test_frame_sampling_properties():
    rng = random.Random(0)
    lengths = set()
    for _ in range(300):
        idx = sample_frame_indices(60, 13, 50, rng)
        assert len(idx) == 13 and idx == sorted(idx) and len(set(idx)) == 13
        assert 0 <= idx[0] and idx[-1] < 60
        assert idx[-1] - idx[0] < 50  # inside one window
        lengths.add(idx[-1] - idx[0])
    assert len(lengths) > 10  # the window length varies
    assert sample_frame_indices(13, 13, 50, rng) == list(range(13))  # exactly enough frames: all of them
    a = [sample_frame_indices(100, 5, 20, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]


def test_load_clip_resizes_and_centre_crops(tmp_path):
    # a 120x60 landscape frame: left third red, middle green, right third blue -> centre crop keeps green
    arr = torch.zeros(60, 120, 3, dtype=torch.uint8)
    arr[:, :40, 0] = 255
    arr[:, 40:80, 1] = 255
    arr[:, 80:, 2] = 255
    Image.fromarray(arr.numpy()).save(tmp_path / "f.png")
    vae, model = load_clip([tmp_path / "f.png"] * 2, vae_size=32, model_size=28)
    assert vae.shape == (2, 3, 32, 32) and model.shape == (2, 3, 28, 28)
    assert vae.dtype == torch.float32 and 0 <= float(vae.min()) and float(vae.max()) <= 1
    centre = vae[0, :, 8:24, 12:20].mean(dim=(1, 2))
    assert centre[1] > 0.95 and centre[0] < 0.05 and centre[2] < 0.05
    # the 3D-model frame is the same crop at another size
    torch.testing.assert_close(model.mean(dim=(2, 3)), vae.mean(dim=(2, 3)), atol=0.03, rtol=0)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_clip([tmp_path / "bad.png"], 32, 28)


def test_folder_clips_items_are_deterministic(tmp_path):
    write_synthetic_scenes(tmp_path, scenes=3, frames=20, size=48, layout="dl3dv", seed=1)
    ds = FolderClips(tmp_path, 5, views=9, window=15, vae_size=64, model_size=56, seed=3)
    item = ds[2]
    assert item["vae"].shape == (9, 3, 64, 64) and item["model"].shape == (9, 3, 56, 56)
    assert item["scene"].startswith("1K/scene_") and len(item["indices"]) == 9
    again = FolderClips(tmp_path, 5, views=9, window=15, vae_size=64, model_size=56, seed=3)[2]
    assert again["indices"] == item["indices"] and torch.equal(again["vae"], item["vae"])
    other = FolderClips(tmp_path, 5, views=9, window=15, vae_size=64, model_size=56, seed=4)
    assert any(other[i]["indices"] != ds[i]["indices"] or other[i]["scene"] != ds[i]["scene"] for i in range(5))
    assert len({ds[i]["scene"] for i in range(3)}) == 3  # cycles over all scenes
    with pytest.raises(IndexError):
        ds[5]


def test_split_and_shard():
    from training.data import Scene

    scenes = [Scene(f"s{i}", []) for i in range(20)]
    tr, ho = split_scenes(scenes, 0.1)
    assert [s.name for s in ho] == ["s18", "s19"] and len(tr) == 18
    one = [Scene("only", [])]
    assert split_scenes(one) == (one, one)
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError):
        shard_indices(7, 3, 3)


def test_resolution_relation():
    assert check_resolutions(512, 448) == 32  # 512 / 16 == 448 / 14
    assert check_resolutions(64, 56) == 4
    with pytest.raises(ValueError, match="do not line up"):
        check_resolutions(512, 518)


def test_synthetic_clips():
    frames = synthetic_scene_frames(0, 5, 32)
    assert frames.shape == (5, 3, 32, 32) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert (frames[0] - frames[-1]).abs().mean() > 1e-3  # the camera moves
    ds = SyntheticClips(4, views=9, vae_size=64, model_size=56, seed=0)
    item = ds[1]
    assert item["vae"].shape == (9, 3, 64, 64) and item["model"].shape == (9, 3, 56, 56)
    assert torch.equal(ds[1]["vae"], item["vae"])
    assert not torch.equal(SyntheticClips(4, views=9, seed=1)[1]["vae"], item["vae"])
