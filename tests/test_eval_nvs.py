"""training/eval_nvs.py + training/eval_data.py: view selection, 8 -> 9 padding, target-pose mapping, data reader
errors and a tiny end-to-end run."""

import json
import math

import numpy as np
import pytest
import torch

from training import eval_nvs
from training.eval_data import (
    align_similarity,
    apply_similarity,
    crop_resize_intrinsics,
    default_views,
    find_sequences,
    load_views,
    pad_to_4k1,
    read_index,
    read_sequence,
    write_synthetic_sequences,
)
from vist3a.cameras import Cameras, look_at
from vist3a.gaussians import Gaussians
from vist3a.rotations import matrix_to_quat, quat_multiply

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k")
    write_synthetic_sequences(root, sequences=2, frames=16, size=64, width=80)
    return root


def _random_similarity(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return 0.37, q, torch.randn(3, generator=g, dtype=torch.float64)


def _gt_cameras(n=12, collinear=False):
    up = torch.tensor([0, -1.0, 0], dtype=torch.float64)
    if collinear:  # a straight dolly looking ahead, as often on RealEstate10K
        eye = torch.stack([torch.linspace(-1, 1, n), torch.zeros(n), torch.full((n,), -3.0)], -1).double()
        return look_at(eye, eye + torch.tensor([0.1, 0.0, 3.0], dtype=torch.float64), up)
    ang = torch.linspace(-0.6, 0.6, n, dtype=torch.float64)
    eye = torch.stack([3 * torch.sin(ang), torch.full_like(ang, -0.5), -3 * torch.cos(ang)], -1)
    return look_at(eye, torch.zeros(3, dtype=torch.float64), up)


def test_pad_to_4k1():
    assert pad_to_4k1(list(range(8))) == [0, 1, 2, 3, 4, 5, 6, 7, 7]
    assert pad_to_4k1([3, 5, 9, 12, 20, 21, 30, 40, 41, 50, 60, 61])[-2:] == [61, 61]
    assert len(pad_to_4k1(list(range(12)))) == 13
    assert pad_to_4k1(list(range(9))) == list(range(9))
    assert pad_to_4k1([4]) == [4]
    with pytest.raises(ValueError):
        pad_to_4k1([])


def test_default_views():
    ctx, tgt = default_views(40)
    assert len(ctx) == 8 and len(tgt) == 4 and ctx[0] == 0 and ctx[-1] == 39
    assert not set(ctx) & set(tgt) and all(ctx[0] < t < ctx[-1] for t in tgt)
    assert tgt == sorted(tgt)
    with pytest.raises(ValueError, match="cannot give 8 context"):
        default_views(10)


@pytest.mark.parametrize("collinear", [False, True])
def test_similarity_copy_is_mapped_back_exactly(collinear):
    gt = _gt_cameras(12, collinear)
    s, r, t = _random_similarity(1)
    pred = apply_similarity(gt, s, r, t)  # a "prediction" in another frame: rotated, scaled, shifted
    s2, r2, t2 = align_similarity(gt[:8], pred[:8])
    assert s2 == pytest.approx(s, rel=1e-10)
    assert torch.allclose(r2, r, atol=1e-10) and torch.allclose(t2, t, atol=1e-10)
    K = torch.tensor([[50.0, 0, 28], [0, 50, 28], [0, 0, 1]], dtype=torch.float64).expand(12, 3, 3)
    gt_cams, pred_cams = Cameras(gt, K, 56, 56), Cameras(pred, K, 56, 56)
    mapped, info = eval_nvs.map_targets(pred_cams[:8], gt_cams[:8], gt_cams[8:])
    assert torch.allclose(mapped.c2w.double(), pred[8:], atol=1e-5)
    assert info["scale"] == pytest.approx(s, rel=1e-8) and info["context_center_residual"] < 1e-8
    assert torch.equal(mapped.K, K[8:].float())
    pk = K[:8].clone()
    pk[:, 0, 0] = torch.linspace(40, 60, 8, dtype=torch.float64)
    mapped, _ = eval_nvs.map_targets(Cameras(pred[:8], pk, 56, 56), gt_cams[:8], gt_cams[8:], "predicted")
    assert torch.allclose(mapped.K[:, 0, 0], torch.full((4,), 50.0)) and torch.allclose(mapped.K[:, 1, 1],
                                                                                         torch.full((4,), 50.0))
    with pytest.raises(ValueError, match="intrinsics must be"):
        eval_nvs.map_targets(pred_cams[:8], gt_cams[:8], gt_cams[8:], "mean")


def test_mapped_targets_render_the_same_images():
    """A scene predicted in a similarity-transformed frame renders at the mapped target cameras exactly like the
    ground-truth scene at the ground-truth target cameras."""
    g = torch.Generator().manual_seed(0)
    n = 40
    scene = Gaussians(means=torch.randn(n, 3, generator=g) * 0.6, scales=torch.rand(n, 3, generator=g) * 0.1 + 0.05,
                      rotations=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                      opacities=torch.full((n,), 0.7), sh=torch.randn(n, 1, 3, generator=g))
    s, r, t = _random_similarity(2)
    rq = matrix_to_quat(r.float())
    moved = Gaussians(means=(s * scene.means.double() @ r.T + t).float(), scales=scene.scales * s,
                      rotations=quat_multiply(rq.expand(n, 4), scene.rotations), opacities=scene.opacities,
                      sh=scene.sh)
    gt = _gt_cameras(12)
    K = torch.tensor([[40.0, 0, 24], [0, 40, 24], [0, 0, 1]], dtype=torch.float64).expand(12, 3, 3)
    gt_cams = Cameras(gt, K, 48, 48)
    pred_ctx = Cameras(apply_similarity(gt[:8], s, r, t), K[:8], 48, 48)
    mapped, _ = eval_nvs.map_targets(pred_ctx, gt_cams[:8], gt_cams[8:])
    a = eval_nvs.render_views(scene, gt_cams[8:].to(dtype=torch.float32))
    b = eval_nvs.render_views(moved, mapped)
    assert a.shape == (4, 3, 48, 48) and a.std() > 0.01
    assert torch.allclose(a, b, atol=2e-3)


def test_crop_resize_intrinsics_and_reader(seq_root, tmp_path):
    seq = read_sequence(seq_root / "seq_000")
    assert len(seq) == 16 and seq.sizes[0] == (80, 64)
    K = crop_resize_intrinsics(seq.K[0], 80, 64, 64, 56)
    # 80x64 -> shorter side 64 (no scaling), crop 8 px left/right, then x 56/64
    assert torch.allclose(K, torch.tensor([[72 * 0.875, 0, 32 * 0.875], [0, 72 * 0.875, 32 * 0.875], [0, 0, 1]],
                                          dtype=torch.float64))
    video, model, cams = load_views(seq, [0, 5, 5], 64, 56)
    assert video.shape == (3, 3, 64, 64) and model.shape == (3, 3, 56, 56) and len(cams) == 3
    assert torch.equal(video[1], video[2])
    # normalised intrinsics read to the same pixel values
    norm = tmp_path / "norm"
    write_synthetic_sequences(norm, sequences=1, frames=12, size=64, width=80, normalized=True)
    assert torch.allclose(read_sequence(norm / "seq_000").K, read_sequence(seq_root / "seq_000").K[:12])


def test_reader_errors(seq_root, tmp_path):
    with pytest.raises(ValueError, match="no sequences under"):
        find_sequences(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        find_sequences(tmp_path / "missing")
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="cameras.json is missing"):
        read_sequence(bad)
    (bad / "cameras.json").write_text(json.dumps({"frames": [{"image": "images/0.png", "c2w": [[1, 0, 0, 0]] * 4,
                                                             "fx": 1, "fy": 1, "cx": 0, "cy": 0}]}))
    with pytest.raises(ValueError, match="does not exist"):
        read_sequence(bad)
    meta = json.loads((seq_root / "seq_000" / "cameras.json").read_text())
    meta["frames"][0]["c2w"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "images").symlink_to(seq_root / "seq_000" / "images")
    (copy / "cameras.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="finite 4x4"):
        read_sequence(copy)
    meta["frames"][0]["c2w"] = [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    (copy / "cameras.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="orthonormal"):
        read_sequence(copy)
    (tmp_path / "index.json").write_text(json.dumps({"seq_000": {"context": [0, 1]}}))
    with pytest.raises(ValueError, match="'context' and 'target' lists"):
        read_index(tmp_path / "index.json")
    with pytest.raises(ValueError, match="out of range"):
        load_views(read_sequence(seq_root / "seq_000"), [0, 99], 64, 56)


def test_end_to_end_tiny(seq_root, tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"seq_000": {"context": [0, 2, 4, 6, 9, 11, 13, 15], "target": [1, 5, 10, 14]},
                                 "seq_001": None}))
    out = tmp_path / "out"
    rc = eval_nvs.main(["--preset", "tiny", "--data", str(seq_root), "--output", str(out), "--quiet", "--protocol",
                        "sim3"])
    assert rc == 0
    report = json.loads((out / "nvs_results.json").read_text())
    assert {"settings", "overall", "sequences", "notes"} <= set(report)
    assert [r["sequence"] for r in report["sequences"]] == ["seq_000", "seq_001"]
    for r in report["sequences"]:
        assert len(r["padded_context"]) == 9 and r["padded_context"][-1] == r["padded_context"][-2]
        assert set(r["views"]) >= {"psnr", "ssim"} and len(r["views"]["psnr"]) == 4
        for k, vals in r["views"].items():
            assert r["metrics"][k] == pytest.approx(sum(vals) / len(vals))
    o = report["overall"]
    assert o["sequences"] == 2 and o["views"] == 8
    for k in ("psnr", "ssim"):
        assert o[k] == pytest.approx(sum(r["metrics"][k] for r in report["sequences"]) / 2)
    if o["lpips"] is None:
        assert any("LPIPS skipped" in n for n in report["notes"])
    assert "| **mean** | 8 |" in (out / "nvs_summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["nvs_results.json", "nvs_summary.md"]

    # an index file selects sequences and views
    out2 = tmp_path / "out2"
    assert eval_nvs.main(["--preset", "tiny", "--data", str(seq_root), "--index", str(index), "--output", str(out2),
                          "--quiet", "--no-lpips", "--protocol", "sim3"]) == 0
    report = json.loads((out2 / "nvs_results.json").read_text())
    assert [r["sequence"] for r in report["sequences"]] == ["seq_000"]
    assert report["sequences"][0]["target"] == [1, 5, 10, 14]
    assert math.isfinite(report["overall"]["psnr"])


def test_cli_errors_and_interrupt(seq_root, tmp_path, monkeypatch):
    assert eval_nvs.main(["--preset", "tiny", "--output", str(tmp_path / "o")]) == 2  # neither --data nor --synthetic
    assert eval_nvs.main(["--preset", "tiny", "--data", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "nvs_results.json").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_nvs, "evaluate_sequence", interrupted)
    out = tmp_path / "int"
    assert eval_nvs.main(["--preset", "tiny", "--data", str(seq_root), "--output", str(out), "--quiet",
                          "--protocol", "sim3"]) == 130
    assert not out.exists() or not any(out.iterdir())


# ============================================================================================ official protocol
def test_official_resize_is_the_released_formula_with_its_width_height_swap():
    from PIL import Image

    from training.eval_data import official_resize

    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(20, 40, 3, generator=g) * 255).to(torch.uint8).numpy())  # 40 wide, 20 high
    vid, model = official_resize(img, 16, 14)
    lz = Image.Resampling.LANCZOS
    # released: scale 16/20; (H, W) = size = (40, 20) -> resize to (width 16, height 32), crop rows 8..24
    want = img.resize((16, 32), resample=lz).crop((0, 8, 16, 24))
    to_t = lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255  # noqa: E731
    assert torch.equal(vid, to_t(want))
    assert torch.equal(model, to_t(want.resize((14, 14), resample=lz)))
    vid_a, _ = official_resize(img, 16, 14, aspect=True)  # keeps the aspect: (32 x 16), crop columns 8..24
    assert torch.equal(vid_a, to_t(img.resize((32, 16), resample=lz).crop((8, 0, 24, 16))))


def test_quantize_8bit_truncates_like_save_image():
    x = torch.tensor([-0.2, 0.0, 0.5, 0.9999, 1.0, 1.7, 3 / 255])
    want = torch.tensor([0, 0, 127, 254, 255, 255, int(torch.tensor(3 / 255) * 255)]).float() / 255
    assert torch.equal(eval_nvs.quantize_8bit(x), want)


def test_official_target_cameras_rescale_translation_and_denormalise_intrinsics():
    ctx1 = torch.eye(4).repeat(9, 1, 1)
    ctx1[:, :3, 3] = torch.arange(27.0).view(9, 3) / 10 + 0.1
    joint = torch.eye(4).repeat(13, 1, 1)
    joint[:9, :3, 3] = ctx1[:, :3, 3] / 2  # pass 2 sees the scene at half the scale
    joint[9:, :3, 3] = torch.tensor([[1.0, 2.0, 3.0]] * 4)
    k = torch.tensor([[1.1, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).repeat(13, 1, 1)
    cams, scale = eval_nvs.official_target_cameras(ctx1, joint, k, 9, 448, 448)
    assert scale == pytest.approx(2.0) and len(cams) == 4
    torch.testing.assert_close(cams.c2w[:, :3, 3], torch.tensor([[2.0, 4.0, 6.0]] * 4))
    torch.testing.assert_close(cams.K[0], torch.tensor([[1.1 * 448, 0, 224], [0, 1.2 * 448, 224], [0, 0, 1.0]]))
    assert eval_nvs.official_split(12) == ([0, 1, 2, 3, 4, 5, 6, 7], [11, 10, 9, 8])


def _official_layout(seq_root, tmp_path):
    """The released RE10K test export (ROOT/<seq>/annotations.json, filepath relative to ROOT) of the synthetic
    sequences, and an index map with 12 ids per sequence."""
    root = tmp_path / "re10k"
    index = {}
    for folder in sorted(p for p in seq_root.iterdir() if p.is_dir()):
        seq = read_sequence(folder)
        (root / folder.name).mkdir(parents=True)
        annos = []
        for i, img in enumerate(seq.images):
            rel = f"{folder.name}/{i:05d}{img.suffix}"
            (root / rel).write_bytes(img.read_bytes())
            annos.append({"idx": i, "filepath": rel, "intrinsics": torch.eye(3).tolist(),
                          "extrinsics": torch.eye(4).tolist()})
        (root / folder.name / "annotations.json").write_text(json.dumps(annos))
        index[folder.name] = [0, 2, 4, 6, 9, 11, 13, 15, 1, 5, 10, 14]
    (tmp_path / "indexmap.json").write_text(json.dumps(index))
    return root, tmp_path / "indexmap.json"


def test_end_to_end_official_protocol_on_the_released_layout(seq_root, tmp_path):
    root, index = _official_layout(seq_root, tmp_path)
    out = tmp_path / "out"
    assert eval_nvs.main(["--preset", "tiny", "--data", str(root), "--index", str(index), "--output", str(out),
                          "--quiet", "--no-lpips"]) == 0
    report = json.loads((out / "nvs_results.json").read_text())
    assert report["settings"]["protocol"] == "official" and report["settings"]["background"] == [1.0, 1.0, 1.0]
    assert [r["sequence"] for r in report["sequences"]] == ["seq_000", "seq_001"]
    for r in report["sequences"]:
        assert r["target"] == [11, 10, 9, 8] and r["padded_context"] == [0, 1, 2, 3, 4, 5, 6, 7, 7]
        assert len(r["views"]["psnr"]) == 4 and math.isfinite(r["alignment"]["scale"])
        assert all(0 < v <= 1 for v in r["views"]["ssim"])
    # our folder layout with the same index map reads the same frames: identical numbers
    out2 = tmp_path / "out2"
    assert eval_nvs.main(["--preset", "tiny", "--data", str(seq_root), "--index", str(index), "--output", str(out2),
                          "--quiet", "--no-lpips"]) == 0
    again = json.loads((out2 / "nvs_results.json").read_text())
    assert again["overall"] == report["overall"]
    # no index map: a clear error before any model is built
    assert eval_nvs.main(["--preset", "tiny", "--data", str(root), "--output", str(tmp_path / "o")]) == 2
