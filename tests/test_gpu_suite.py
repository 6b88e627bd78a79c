"""bench/gpu_suite.py --tiny runs on the CPU (so the one-shot GPU command never rots) and writes its JSON and
markdown reports with every stage of every configuration, the rasteriser and the two training steps."""

import json
import math

from conftest import REPO_ROOT


def test_gpu_suite_tiny_runs_and_reports(tmp_path, single_thread, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import gpu_suite

    assert gpu_suite.main(["--tiny", "--device", "cpu", "--skip", "fast_variants", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["tiny"] and report["settings"]["frames"] == 5
    runs = report["pipeline"]["runs"]
    assert set(runs) == {"released", "default", "fast"}
    for name, rs in runs.items():
        r = rs[0]
        for stage in (*gpu_suite.STAGES, "end_to_end"):
            assert r[stage] > 0, (name, stage)
        assert sum(r[s] for s in gpu_suite.STAGES) <= r["end_to_end"] * 1.01
    q = report["pipeline"]["fast_quality_vs_default"]
    assert 0 < q["latent_rel"] < 1 and math.isfinite(q["frames_psnr_db"])
    assert q["default_vs_released_latent_rel"] < 1e-6  # the pack's default samples what the released call samples
    assert report["rasteriser"]["times"]["torch"]
    d = report["drtune_step"]  # one DRTune step of training.align_drtune at the tiny size
    assert (d["size"], d["frames"], d["rollout_steps"]) == (64, 5, 2) and d["tiny"] and not d["out_of_memory"]
    assert d["seconds"] > 0 and math.isfinite(d["loss"]) and d["grad_steps"]
    (f,) = report["finetune_step"]  # one stitched-decoder finetuning step of training.train_stitched_decoder
    assert f["views"] == 5 and f["batch"] == 1 and len(f["times"]) == 1 and f["clips_per_s"] > 0
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| released |" in md and "| fast |" in md and "ratio vs released" in md
    assert "| DRTune step | 64x64, 5 frames (tiny) |" in md and "| stitched-decoder finetune step | 5 views" in md
    assert not list(tmp_path.glob("*.ply"))  # scratch scenes removed


def test_gpu_suite_refuses_full_size_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import gpu_suite
    import torch

    if torch.cuda.is_available():
        return
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "python bench/gpu_suite.py --tiny" in capsys.readouterr().err
