"""The micro world: deterministic scenes, captions that match them, held-out colour x shape pairs, shards on disk
(resumable, refusing to mix worlds) and the clip reader the training scripts share."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from training.micro import world as W
from training.micro.shards import MicroClips, MicroScenes, generate_world, is_world, read_manifest


def _phrases(caption: str) -> list[tuple[str, str, str]]:
    pat = r"\b(?:a|an) (small|large) (" + "|".join(W.COLOURS) + r") (" + "|".join(W.SHAPES) + r")\b"
    return re.findall(pat, caption)


def test_scene_is_deterministic_in_split_index_seed():
    a, b = W.sample_scene("train", 17, seed=3), W.sample_scene("train", 17, seed=3)
    assert a.to_json() == b.to_json()
    assert W.sample_scene("train", 18, seed=3).to_json() != a.to_json()
    assert W.sample_scene("train", 17, seed=4).to_json() != a.to_json()
    assert W.sample_scene("test", 17, seed=3).to_json() != a.to_json()
    ga, gb = W.scene_gaussians(a), W.scene_gaussians(b)
    for f in ("means", "scales", "rotations", "opacities", "sh"):
        assert torch.equal(getattr(ga, f), getattr(gb, f))
    assert W.SceneSpec.from_json(a.to_json()).to_json() == a.to_json()


@pytest.mark.parametrize("split", ["train", "test", "novel"])
def test_captions_match_scenes(split):
    counts = {1: 0, 2: 0, 3: 0}
    for i in range(150):
        spec = W.sample_scene(split, i)
        cap = spec.caption
        phrases = _phrases(cap)
        assert len(phrases) == len(spec.objects), cap
        assert sorted(phrases) == sorted((o.size, o.colour, o.shape) for o in spec.objects), cap
        assert cap.endswith(f"on {spec.ground} under {'an' if spec.sky[0] in 'aeiou' else 'a'} {spec.sky} sky")
        counts[len(spec.objects)] += 1
        combos = {(o.colour, o.shape) for o in spec.objects}
        held = combos & set(W.HELDOUT_COMBOS)
        assert bool(held) == (split == "novel"), (split, cap)
        assert len(combos) == len(spec.objects)  # distinct (colour, shape) pairs: every phrase names one object
        assert set(cap.split()) <= set(W.vocabulary()) | {w + "," for w in W.vocabulary()}
    assert all(counts[n] > 20 for n in counts), counts


def _image_x(spec, obj) -> float:
    """Pixel column of the object's centre in the first frame."""
    cam = W.orbit_cameras(spec)[0]
    p = torch.tensor([obj.x, obj.y, W.SIZES[obj.size]], dtype=torch.float32)
    pc = cam.w2c[0, :3, :3] @ p + cam.w2c[0, :3, 3]
    return float(cam.K[0, 0, 0] * pc[0] / pc[2] + cam.K[0, 0, 2])


def _depth(spec, obj) -> float:
    cam = W.orbit_cameras(spec)[0]
    p = torch.tensor([obj.x, obj.y, 0.0])
    return float((cam.w2c[0, :3, :3] @ p + cam.w2c[0, :3, 3])[2])


def test_spatial_words_follow_the_first_frame():
    checked = {"left": 0, "right": 0, "front": 0, "behind": 0, "three": 0}
    for i in range(300):
        spec = W.sample_scene("train", i)
        objs = spec.objects
        if len(objs) == 2:
            rel = W.relation(objs[0], objs[1], spec.azimuth)
            assert rel in spec.caption
            if rel == "to the left of":
                assert _image_x(spec, objs[0]) < _image_x(spec, objs[1])
                checked["left"] += 1
            elif rel == "to the right of":
                assert _image_x(spec, objs[0]) > _image_x(spec, objs[1])
                checked["right"] += 1
            elif rel == "in front of":
                assert _depth(spec, objs[0]) < _depth(spec, objs[1])
                checked["front"] += 1
            else:
                assert _depth(spec, objs[0]) > _depth(spec, objs[1])
                checked["behind"] += 1
        elif len(objs) == 3:
            order = [p[2] for p in _phrases(spec.caption)]
            xs = {o.shape + o.colour: _image_x(spec, o) for o in objs}
            named = [f"{s}{c}" for _, c, s in _phrases(spec.caption)]
            assert [xs[n] for n in named] == sorted(xs[n] for n in named), (spec.caption, order)
            checked["three"] += 1
    assert all(v >= 5 for v in checked.values()), checked


def test_objects_do_not_overlap_and_stay_near_the_centre():
    for i in range(100):
        objs = W.sample_scene("train", i).objects
        for a in objs:
            assert math.hypot(a.x, a.y) <= W.PLACEMENT_RADIUS + 1e-9
        for k, a in enumerate(objs):
            for b in objs[k + 1:]:
                assert math.hypot(a.x - b.x, a.y - b.y) > W.SIZES[a.size] + W.SIZES[b.size]


def test_cameras_orbit_at_constant_distance_and_look_at_the_scene():
    spec = W.sample_scene("test", 5)
    cams = W.orbit_cameras(spec)
    target = torch.tensor(W.LOOK_AT)
    dist = (cams.centers - target).norm(dim=-1)
    assert torch.allclose(dist, torch.full_like(dist, spec.radius), atol=1e-4)
    fwd = cams.c2w[:, :3, 2]
    to_target = torch.nn.functional.normalize(target - cams.centers, dim=-1)
    assert torch.allclose(fwd, to_target, atol=1e-4)
    az = torch.atan2(cams.centers[:, 1], cams.centers[:, 0])
    steps = torch.remainder(az.diff(), 2 * math.pi)
    assert torch.allclose(steps, torch.full_like(steps, spec.sweep / (W.CLIP_FRAMES - 1)), atol=1e-4)  # CCW, even
    assert (cams.centers[:, 2] > 0.5).all()


def test_render_has_finite_depth_everywhere(single_thread):
    spec = W.sample_scene("train", 2)
    out = W.render_scene(spec)
    v = W.CLIP_FRAMES + W.TARGET_VIEWS
    assert out["frames"].shape == (v, 64, 64, 3) and out["frames"].dtype == torch.uint8
    assert out["depth"].shape == (v, 56, 56)
    assert out["depth"].min() > 0.5 and torch.isfinite(out["depth"]).all()  # the sky dome covers every pixel
    # objects are in view: the centre of the first frame is not sky-coloured
    sky = torch.tensor(W.SKIES[spec.sky][0]) * 255
    centre = out["frames"][0, 24:40, 24:40].float().reshape(-1, 3)
    assert (centre - sky).abs().sum(-1).mean() > 30


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro") / "world"
    torch.set_num_threads(1)
    generate_world(root, {"train": 3, "test": 2, "novel": 1}, seed=0, shard_size=2, workers=1, progress=False)
    return root


def test_world_shards_round_trip(tiny_world):
    assert is_world(tiny_world)
    m = read_manifest(tiny_world)
    assert m.counts == {"train": 3, "test": 2, "novel": 1} and m.num_shards("train") == 2
    scenes = MicroScenes(tiny_world, "test")
    item = scenes[1]
    spec = W.sample_scene("test", 1, 0)
    assert item["caption"] == spec.caption and item["spec"].to_json() == spec.to_json()
    assert item["frames"].shape == (13, 3, 64, 64) and 0 <= item["frames"].min() and item["frames"].max() <= 1
    ref = W.render_scene(spec)
    assert (item["frames"] * 255 - ref["frames"].permute(0, 3, 1, 2).float()).abs().max() <= 1
    assert torch.allclose(item["c2w"], ref["c2w"])
    cams = MicroScenes.cameras(item, size=56)
    assert cams.width == 56 and torch.allclose(cams.K[0, 0, 0], ref["K"][0, 0] * 56 / 64)
    clips = MicroClips(tiny_world, "train", 5, views=9)
    c = clips[4]
    assert c["vae"].shape == (9, 3, 64, 64) and c["model"].shape == (9, 3, 56, 56)
    with pytest.raises(ValueError, match="use --views 9"):
        MicroClips(tiny_world, "train", views=13)


def test_world_resumes_and_refuses_another_world(tiny_world):
    shard0 = tiny_world / "train" / "shard_00000.safetensors"
    shard1 = tiny_world / "train" / "shard_00001.safetensors"
    before = shard0.stat().st_mtime_ns
    shard1.unlink()
    (tiny_world / "test" / "shard_00000.safetensors").write_bytes(b"truncated")
    generate_world(tiny_world, {"train": 3, "test": 2, "novel": 1}, seed=0, shard_size=2, workers=1,
                   progress=False)
    assert shard0.stat().st_mtime_ns == before  # finished shards are kept
    assert shard1.is_file() and MicroScenes(tiny_world, "test")[0]["frames"].shape[0] == 13  # redone
    timing = json.loads((tiny_world / "timing.json").read_text())
    assert "train/1" in timing["shards"] and timing["wall"] > 0
    with pytest.raises(ValueError, match="different micro world"):
        generate_world(tiny_world, {"train": 4, "test": 2, "novel": 1}, seed=0, shard_size=2, workers=1,
                       progress=False)
    with pytest.raises(FileNotFoundError, match="not a micro world"):
        MicroScenes(tiny_world.parent / "nothing")
