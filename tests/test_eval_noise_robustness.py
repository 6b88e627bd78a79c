"""training/eval_noise_robustness.py: the noise definition, alpha = 0 identity, the original model of the tiny
preset, and a tiny end-to-end run (JSON + readable PNGs)."""

import json
import math

import pytest
import torch
from PIL import Image

from training import eval_noise_robustness as noise
from training.eval_nvs import build_models, decode_to, encode, predict_scene

pytestmark = pytest.mark.usefixtures("single_thread")


def test_perturb_definition():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 3, 8, 8, generator=g) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1) + 0.5
    eps = torch.randn(z.shape, generator=g)
    assert noise.perturb(z, 0.0, eps) is z
    for alpha in (0.1, 0.5):
        d = noise.perturb(z, alpha, eps, "rms") - z
        ratio = d.flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)  # per sample: ~alpha with the RMS norm
        assert torch.allclose(ratio, torch.full((2,), alpha), rtol=0.05)
    rms = noise.latent_norm(z, "rms").flatten()
    fro = noise.latent_norm(z, "frobenius").flatten()
    assert torch.allclose(fro, z.flatten(1).norm(dim=1)) and torch.allclose(rms, fro / math.sqrt(z[0].numel()))
    assert torch.allclose(noise.perturb(z, 0.1, eps, "frobenius") - z, 0.1 * fro.view(2, 1, 1, 1, 1) * eps,
                          rtol=1e-4, atol=1e-4)
    # the default is the paper's literal reading (Frobenius), with its alpha range
    assert torch.equal(noise.perturb(z, 2e-4, eps), noise.perturb(z, 2e-4, eps, "frobenius"))
    assert noise.build_parser().parse_args(["--output", "x"]).norm == "frobenius"
    assert max(noise.parse_alphas(noise.DEFAULT_ALPHAS)) <= 1e-3 and 1e-4 in noise.parse_alphas(noise.DEFAULT_ALPHAS)
    with pytest.raises(ValueError, match="rms"):
        noise.latent_norm(z, "l1")
    with pytest.raises(ValueError, match="shape"):
        noise.perturb(z, 0.1, eps[:1])


def test_parse_alphas():
    assert noise.parse_alphas("0.2, 0,0.1,0.1") == [0.0, 0.1, 0.2]
    for bad in ("", "a,b", "-0.1", "nan"):
        with pytest.raises(ValueError, match="--alphas"):
            noise.parse_alphas(bad)


@pytest.fixture(scope="module")
def tiny():
    args = noise.build_parser().parse_args(["--preset", "tiny", "--synthetic", "--output", "unused"])
    vae, decoder, device = build_models(args)
    return args, vae, decoder, noise.build_original_model(args, decoder, device)


def test_tiny_original_model_is_the_uncut_base(tiny):
    _, _, decoder, original = tiny
    cut = decoder.model.state_dict()
    full = original.state_dict()
    blocks = "encoder.aggregator.patch_embed.blocks."
    k = int(decoder.cut.rsplit("_", 1)[1])
    assert len(full) > len(cut)
    for name, value in cut.items():
        if name.startswith(blocks):  # the cut model's DINO blocks are renumbered from 0 after the cut
            i, rest = name[len(blocks):].split(".", 1)
            name = f"{blocks}{int(i) + k}.{rest}"
        assert torch.equal(value, full[name]), name


def test_compare_reference_with_itself(tiny):
    from training.data import SyntheticClips
    from training.eval_nvs import render_views

    original = tiny[3]
    frames = SyntheticClips(1, views=5, vae_size=64, model_size=56)[0]["model"]
    ref = original.predict(frames[None])
    renders = render_views(ref.gaussians[0], ref.cameras[0][torch.tensor([0, 4])])
    m = noise.compare(ref, ref, renders, [0, 4])
    assert m["psnr_ref_cams"] == math.inf and m["psnr_own_cams"] == math.inf
    assert m["ssim_ref_cams"] == pytest.approx(1.0) and m["depth_abs_rel"] == 0.0
    assert m["rot_err_deg"] == pytest.approx(0.0, abs=1e-3)


def test_alpha_zero_equals_clean_stitched_decoding(tiny):
    from training.data import SyntheticClips

    _, vae, decoder, _ = tiny
    item = SyntheticClips(1, views=9, vae_size=64, model_size=56)[0]
    z = encode(vae, item["vae"], seed=3)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    clean = predict_scene(decoder, z, decode_to(vae, z, (56, 56)))
    zp = noise.perturb(z, 0.0, eps)
    noisy = predict_scene(decoder, zp, decode_to(vae, zp, (56, 56)))
    assert torch.equal(clean.gaussians[0].means, noisy.gaussians[0].means)
    assert torch.equal(clean.cameras[0].c2w, noisy.cameras[0].c2w)
    assert torch.equal(clean.depth, noisy.depth)
    zq = noise.perturb(z, 0.5, eps)
    moved = predict_scene(decoder, zq, decode_to(vae, zq, (56, 56)))
    assert not torch.equal(clean.depth, moved.depth)


def test_end_to_end_tiny(tmp_path):
    out = tmp_path / "out"
    rc = noise.main(["--preset", "tiny", "--synthetic", "--clips", "2", "--alphas", "0,0.5", "--render-views", "2",
                     "--norm", "rms", "--output", str(out), "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["noise_depth.png", "noise_psnr.png", "noise_results.json",
                                                     "noise_summary.md"]
    report = json.loads((out / "noise_results.json").read_text())
    assert report["settings"]["alphas"] == [0.0, 0.5] and report["settings"]["norm"] == "rms"
    assert len(report["clips"]) == 2
    for clip in report["clips"]:
        assert set(clip["alphas"]) == {"0", "0.5"}
        for per_method in clip["alphas"].values():
            assert set(per_method) == set(noise.METHODS)
            for m in per_method.values():
                assert set(m) == {"psnr_ref_cams", "ssim_ref_cams", "psnr_own_cams", "depth_abs_rel", "rot_err_deg"}
    for method in noise.METHODS:
        for metric, row in report["curves"][method].items():
            assert len(row) == 2
            for j, a in enumerate(("0", "0.5")):
                vals = [c["alphas"][a][method][metric] for c in report["clips"]]
                assert row[j] == pytest.approx(sum(vals) / len(vals))
    for name in ("noise_psnr.png", "noise_depth.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.size == (900, 480)


def test_cli_errors(tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert noise.main(["--preset", "tiny", "--output", str(out)]) == 2  # no data source
    assert noise.main(["--preset", "tiny", "--synthetic", "--views", "8", "--output", str(out)]) == 2
    assert noise.main(["--preset", "tiny", "--synthetic", "--alphas", "x", "--output", str(out)]) == 2
    assert not out.exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(noise, "evaluate_clip", interrupted)
    assert noise.main(["--preset", "tiny", "--synthetic", "--clips", "1", "--output", str(out), "--quiet"]) == 130
    assert not out.exists()
