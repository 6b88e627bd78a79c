"""End-to-end smoke test of ``python -m training.find_stitching_layer --tiny --synthetic`` and its outputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from training import find_stitching_layer as fsl
from vist3a.stitching.layer import StitchingLayer, to_rows
from vist3a.stitching.search import LayerSearch, solve_ridge

LAYERS = ["enc_blocks_1", "enc_blocks_2", "enc_blocks_3"]
ARGS = ["--tiny", "--synthetic", "--samples", "6", "--heldout", "2", "--batch-size", "2", "--quiet", "--numerics",
        "ours"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls") / "out"
    assert fsl.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_outputs_only_in_out_folder(run_dir):
    names = sorted(p.name for p in run_dir.parent.rglob("*") if p.is_file())
    expected = sorted(["ranking.json", "ranking.csv", "layer_mse.png"]
                      + [f"stitching_layer_{n}.safetensors" for n in LAYERS])
    assert names == expected  # nothing else, no temporary files, nothing outside out/


def test_ranking_json_and_csv(run_dir):
    doc = json.loads((run_dir / "ranking.json").read_text())
    assert doc["config"] == "conv3d_k5x3x3_o64_s1x2x2_p2x1x1" and doc["ranked_by"] == "heldout_mse"
    assert [r["rank"] for r in doc["ranking"]] == [1, 2, 3]
    assert sorted(r["layer"] for r in doc["ranking"]) == LAYERS
    assert doc["best_layer"] == doc["ranking"][0]["layer"]
    held = [r["heldout_mse"] for r in doc["ranking"]]
    assert held == sorted(held) and all(r["train_mse"] > 0 and 0 < r["cka"] <= 1 for r in doc["ranking"])
    assert doc["train_samples"] == 6 and doc["heldout_samples"] == 2
    rows = list(csv.DictReader((run_dir / "ranking.csv").open()))
    assert [r["layer"] for r in rows] == [r["layer"] for r in doc["ranking"]]
    assert list(rows[0]) == ["rank", "layer", "train_mse", "heldout_mse", "cka"]
    assert float(rows[0]["heldout_mse"]) == pytest.approx(held[0], rel=1e-8)


def test_official_numerics_are_the_default_and_rank_by_training_mse(tmp_path):
    out = tmp_path / "official"
    args = [a for a in ARGS if a not in ("--numerics", "ours")]
    assert fsl.main([*args, "--layers", "enc_blocks_1,enc_blocks_2", "--out", str(out)]) == 0
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["numerics"] == "official" and doc["ranked_by"] == "train_mse"
    train = [r["train_mse"] for r in doc["ranking"]]
    assert train == sorted(train) and all(r["heldout_mse"] is not None for r in doc["ranking"])


def test_png_is_valid(run_dir):
    with Image.open(run_dir / "layer_mse.png") as im:
        im.verify()
    with Image.open(run_dir / "layer_mse.png") as im:
        assert im.format == "PNG" and im.size == (900, 480)
        assert len(im.convert("RGB").getcolors(maxcolors=100000)) > 3  # something was drawn


def test_saved_layer_reproduces_fitted_prediction(run_dir):
    """A StitchingLayer loaded from the safetensors gives the least-squares prediction of a fresh fit on the same
    data (recomputed here), and the file carries its config."""
    path = run_dir / "stitching_layer_enc_blocks_2.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["config"] == "conv3d_k5x3x3_o64_s1x2x2_p2x1x1" and meta["layer"] == "enc_blocks_2"
    sl = StitchingLayer(meta["config"], in_channels=int(meta["in_channels"]))
    sl.load_state_dict(load_file(str(path)))

    args = fsl.build_parser().parse_args([*ARGS, "--out", "unused"])
    result = fsl.run(args)  # same seeds -> same data and fit, in memory
    fit = result.fits["enc_blocks_2"]
    torch.testing.assert_close(sl.weight.detach(), fit.weight.float())
    torch.testing.assert_close(sl.bias.detach(), fit.bias.float())
    # prediction through the conv == X @ W + b of the float64 fit, on a new latent
    lat = torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    search = LayerSearch(result.config, ["x"])
    x = search.patches(lat, (4, 4))
    w = torch.cat([fit.weight.flatten(1).T, fit.bias[None]], 0)
    with torch.no_grad():
        pred = to_rows(sl(lat, (4, 4))).double()
    torch.testing.assert_close(pred, x @ w[:-1] + w[-1], rtol=1e-4, atol=1e-4)
    assert solve_ridge  # the public solver is importable alongside


def test_interrupt_leaves_no_files(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = LayerSearch.update

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(LayerSearch, "update", interrupted)
    out = tmp_path / "out"
    assert fsl.main([*ARGS, "--out", str(out)]) == 130
    assert not out.exists() or not any(out.iterdir())


def test_cli_errors(tmp_path):
    assert fsl.main(["--tiny", "--out", str(tmp_path / "o"), "--quiet"]) == 2  # neither --data nor --synthetic
    assert fsl.main(["--tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert fsl.main([*ARGS, "--config", "conv3d_k5x3x3_o32_s1x2x2_p2x1x1", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_parse_layers():
    avail = [f"enc_blocks_{k}" for k in range(1, 25)] + [f"agg_blocks_{k}" for k in range(1, 25)]
    assert fsl.parse_layers("enc_blocks_1..24", avail) == avail[:24]
    assert fsl.parse_layers("enc_blocks_2..4,agg_blocks_1", avail) == ["enc_blocks_2", "enc_blocks_3",
                                                                        "enc_blocks_4", "agg_blocks_1"]
    assert fsl.parse_layers("enc", avail) == avail[:24] and fsl.parse_layers("all", avail) == avail
    with pytest.raises(ValueError, match="unknown layer"):
        fsl.parse_layers("enc_blocks_25", avail)


def test_folder_data_one_capture_per_batch(tmp_path, monkeypatch):
    """--data with a DL3DV-style folder; the 3D model runs ONE capture per batch covering all candidate layers."""
    from training.data import write_synthetic_scenes
    from vist3a.models import AnySplat

    write_synthetic_scenes(tmp_path / "data", scenes=3, frames=14, size=72, layout="dl3dv")
    calls = []
    original = AnySplat.capture

    def counting(self, images, names, run_heads=False):
        calls.append((tuple(images.shape), tuple(names)))
        return original(self, images, names, run_heads=run_heads)

    monkeypatch.setattr(AnySplat, "capture", counting)
    out = tmp_path / "out"
    rc = fsl.main(["--tiny", "--data", str(tmp_path / "data"), "--samples", "4", "--heldout", "2", "--batch-size",
                   "2", "--window", "12", "--out", str(out), "--quiet"])
    assert rc == 0
    assert len(calls) == 3  # 2 train batches + 1 held-out batch
    assert all(shape == (2, 9, 3, 56, 56) and names == tuple(LAYERS) for shape, names in calls)
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["split"] == "2 train / 1 held-out scenes" and doc["data"].endswith("data")
