"""Checkpoints on tiny models: published-format import (structure, merge, errors) and our folder format."""

import json

import pytest
import torch
from _models_helpers import (
    TINY_STITCHING,
    build_crc32,
    published_checkpoint,
    published_structure,
    tiny_stitched,
)

from vist3a.models import AnySplat, AnySplatConfig, CheckpointMismatchError
from vist3a.stitching import (
    add_lora,
    load_decoder,
    load_published_stitched,
    save_decoder,
)
from vist3a.stitching.lora import loralib_delta, loralib_target_modules


def _published(tmp_path, cut="enc_blocks_2", r=4, dtypes=True, edit=None):
    ref, _ = tiny_stitched(cut=cut)
    ckpt = published_checkpoint(published_structure(ref, r=r), dtypes=dtypes)
    if edit is not None:
        edit(ckpt)
    path = tmp_path / "anysplat_stitched.pth"
    torch.save(ckpt, path)
    return path, ckpt


def _tiny_base():
    return build_crc32(AnySplat, AnySplatConfig.tiny())


def _inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.rand(1, 5, 3, 28, 28, generator=g)


def test_published_import_merges_lora_and_sets_biases_tokens_stitching(tmp_path):
    path, ckpt = _published(tmp_path)
    assert ckpt["cls_token"].dtype == torch.bfloat16  # the official dtypes (bf16 tokens / non-head biases)
    dec = load_published_stitched(path, base=_tiny_base(), stitching=TINY_STITCHING)
    base = _tiny_base()
    base_mods = dict(base.named_modules())
    lora = ckpt["lora"]
    for name, mod in loralib_target_modules(dec.model).items():
        orig = name.replace("patch_embed.blocks.0.", "patch_embed.blocks.2.")  # re-indexed DINO block
        want = base_mods[orig].weight + loralib_delta(mod.weight.shape, lora[f"{name}.lora_A"],
                                                      lora[f"{name}.lora_B"], 32 / 4)
        torch.testing.assert_close(mod.weight, want, rtol=1e-6, atol=1e-6)
        if mod.bias is not None:
            torch.testing.assert_close(mod.bias, lora[f"{name}.bias"].float(), rtol=0, atol=0)
    pe = dec.model.aggregator.patch_embed
    torch.testing.assert_close(pe.cls_token, ckpt["cls_token"].float(), rtol=0, atol=0)
    torch.testing.assert_close(pe.register_tokens, ckpt["register_tokens"].float(), rtol=0, atol=0)
    torch.testing.assert_close(dec.stitching.weight, ckpt["stitching_layer"]["weight"], rtol=0, atol=0)
    # non-LoRA parameters (norms, LayerScale) of re-indexed block 0 come from original block 2
    torch.testing.assert_close(pe.blocks[0].norm1.weight, base.aggregator.patch_embed.blocks[2].norm1.weight)
    assert dec.lora_info == {"r": 4, "alpha": 32.0, "merged": True, "format": "loralib"}
    assert not dec.training
    lat, frames = _inputs()
    assert torch.isfinite(dec(lat, frames)["depth"]).all()


def test_published_wrong_cut_says_which_cut_it_looks_like(tmp_path):
    path, _ = _published(tmp_path, cut="enc_blocks_1")
    with pytest.raises(CheckpointMismatchError) as info:
        load_published_stitched(path, base=_tiny_base(), stitching=TINY_STITCHING)
    assert "trained at cut 'enc_blocks_1', not 'enc_blocks_2'" in str(info.value)
    assert "pass cut='enc_blocks_1'" in str(info.value)
    dec = load_published_stitched(path, base=_tiny_base(), cut="enc_blocks_1", stitching=TINY_STITCHING)
    assert dec.cut == "enc_blocks_1"


def _drop(ckpt):
    del ckpt["lora"]["encoder.camera_head.trunk.0.attn.qkv.lora_A"]
    del ckpt["lora"]["encoder.depth_head.projects.0.bias"]
    ckpt["lora"]["encoder.depth_head.resize_layers.0.lora_A"] = torch.zeros(4, 4)  # ConvTranspose2d: no LoRA


def _reshape(ckpt):
    ckpt["lora"]["encoder.aggregator.frame_blocks.0.attn.proj.lora_B"] = torch.zeros(64, 5)


@pytest.mark.parametrize("edit, fragments", [
    (_drop, ["missing keys (2): encoder.camera_head.trunk.0.attn.qkv.lora_A, encoder.depth_head.projects.0.bias",
             "unexpected keys (1): encoder.depth_head.resize_layers.0.lora_A"]),
    (_reshape, [("mis-shaped keys (1): encoder.aggregator.frame_blocks.0.attn.proj.lora_B: checkpoint (64, 5) vs "
                 "expected (64, 4)")]),
    (lambda c: c.pop("register_tokens"), ["missing top-level entries: register_tokens"]),
    (lambda c: c["stitching_layer"].pop("bias"), ["missing key stitching_layer.bias"]),
    (lambda c: c.__setitem__("cls_token", torch.zeros(1, 2, 64)), ["cls_token: checkpoint (1, 2, 64) vs expected"]),
])
def test_published_structure_errors_name_keys(tmp_path, edit, fragments):
    path, _ = _published(tmp_path, edit=edit)
    with pytest.raises(CheckpointMismatchError) as info:
        load_published_stitched(path, base=_tiny_base(), stitching=TINY_STITCHING)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "What to do" in str(info.value)


def test_published_wrong_stitching_config(tmp_path):
    path, _ = _published(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"stitching_layer.weight: checkpoint \(64, 16, 5, 3, 3\) vs "
                                                      r"expected \(64, 16, 3, 3, 3\)"):
        load_published_stitched(path, base=_tiny_base(), stitching="conv3d_k3_o64_s1x2x2_p1")


def test_published_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"encoder.aggregator.camera_token": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError, match="use load_decoder or vist3a.models.from_pretrained"):
        load_published_stitched(path, base=_tiny_base())


def test_published_hub_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(OSError) as info:
        load_published_stitched("anysplat_stitched_21_frame_extended.pth", base=_tiny_base())
    msg = str(info.value)
    assert "load_published_stitched: could not get 'HJGO/VIST3A'" in msg
    assert "hf download HJGO/VIST3A" in msg and "huggingface-cli" not in msg
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a file of HJGO/VIST3A"):
        load_published_stitched(str(tmp_path / "missing" / "x.pth"), base=_tiny_base())


# --------------------------------------------------------------------------------------------------- our format
@pytest.mark.parametrize("kind", ["anysplat", "vggt"])
def test_save_load_round_trip_identical_outputs(tmp_path, kind):
    dec, _ = tiny_stitched(kind)
    lat, frames = _inputs()
    save_decoder(dec, tmp_path / "dec")
    assert {p.name for p in (tmp_path / "dec").iterdir()} == {"decoder_config.json", "model.safetensors"}
    cfg = json.loads((tmp_path / "dec" / "decoder_config.json").read_text())
    assert cfg["format"] == "vist3a-stitched-decoder" and cfg["format_version"] == 1
    assert cfg["cut"] == "enc_blocks_2" and cfg["stitching"] == TINY_STITCHING and cfg["base_model"]["type"] == kind
    assert cfg["latent_convention"].startswith("raw Wan latent = z*std + mean") and cfg["dtype"] == "float32"
    for source in (tmp_path / "dec", tmp_path / "dec" / "model.safetensors"):
        loaded = load_decoder(source)
        assert not loaded.training and loaded.kind == kind and loaded.cut == dec.cut
        with torch.no_grad():
            a, b = dec(lat, frames), loaded(lat, frames)
        for key in ("pose_enc", "depth", "depth_conf"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    half = load_decoder(tmp_path / "dec", dtype=torch.bfloat16)
    assert half.stitching.weight.dtype == torch.bfloat16


def test_save_merges_unmerged_peft_lora(tmp_path):
    dec, _ = tiny_stitched()
    add_lora(dec, r=2, alpha=4)
    with torch.no_grad():
        for n, p in dec.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    lat, frames = _inputs()
    with torch.no_grad():
        want = dec(lat, frames)["pose_enc"]
    save_decoder(dec, tmp_path / "dec")
    cfg = json.loads((tmp_path / "dec" / "decoder_config.json").read_text())
    assert cfg["lora"]["r"] == 2 and cfg["lora"]["alpha"] == 4 and cfg["lora"]["merged"] is True
    loaded = load_decoder(tmp_path / "dec")
    with torch.no_grad():
        torch.testing.assert_close(loaded(lat, frames)["pose_enc"], want, rtol=1e-4, atol=1e-5)


def test_failing_save_keeps_old_files(tmp_path, monkeypatch):
    import safetensors.torch

    dec, _ = tiny_stitched()
    folder = tmp_path / "dec"
    save_decoder(dec, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with torch.no_grad():
        dec.stitching.bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_decoder(dec, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files left either


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        load_decoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="decoder_config.json is missing"):
        load_decoder(tmp_path / "empty")
    dec, _ = tiny_stitched()
    save_decoder(dec, tmp_path / "dec")
    cfg_file = tmp_path / "dec" / "decoder_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "cut": "enc_blocks_1"}))
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_decoder(tmp_path / "dec")
    cfg_file.write_text(json.dumps({**cfg, "format": "something"}))
    with pytest.raises(ValueError, match="not a stitched-decoder config"):
        load_decoder(tmp_path / "dec")
    cfg_file.write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="Update vist3a"):
        load_decoder(tmp_path / "dec")


# ------------------------------------------------------------------------------------------ "lora" weights variant
def _lora_decoder(tmp_path):
    import copy

    from vist3a.models.loading import save_pretrained
    from vist3a.stitching import StitchedDecoder, StitchingLayer
    from vist3a.stitching.lora import add_lora, lora_target_names

    torch.manual_seed(0)
    base = AnySplat(AnySplatConfig.tiny()).eval()
    save_pretrained(base, tmp_path / "anysplat")
    dec = StitchedDecoder(copy.deepcopy(base), "enc_blocks_2", StitchingLayer("conv3d_k5x3x3_o64_s1x2x2_p2x1x1"))
    torch.nn.init.normal_(dec.stitching.weight, std=0.02)
    add_lora(dec, r=4, alpha=2, target_modules=lora_target_names(dec.model))
    with torch.no_grad():  # stand-in for finetuning: move every trainable tensor
        for p in dec.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return dec.eval()


def test_lora_variant_stores_only_the_finetuned_tensors_and_loads_identically(tmp_path, single_thread):
    from vist3a.stitching import load_decoder, save_decoder

    dec = _lora_decoder(tmp_path)
    save_decoder(dec, tmp_path / "full", video_size=64)
    save_decoder(dec, tmp_path / "lora", video_size=64, base_source="../anysplat")
    cfg = json.loads((tmp_path / "lora" / "decoder_config.json").read_text())
    assert cfg["weights"] == "lora" and cfg["format_version"] == 2 and cfg["lora"]["r"] == 4
    assert len(cfg["base_model"]["sha256"]) == 64 and cfg["base_model"]["source"] == "../anysplat"
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert (tmp_path / "lora" / "model.safetensors").stat().st_size < full_size / 3
    a, b = load_decoder(tmp_path / "lora"), load_decoder(tmp_path / "full")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    lat, frames = torch.randn(1, 16, 3, 8, 8), torch.rand(1, 9, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(a(lat, frames)["depth"], b(lat, frames)["depth"])


def test_lora_variant_refuses_another_or_missing_base(tmp_path, single_thread):
    from vist3a.models.loading import save_pretrained
    from vist3a.stitching import load_decoder, save_decoder
    from vist3a.stitching.lora import merge_lora

    dec = _lora_decoder(tmp_path)
    save_decoder(dec, tmp_path / "lora", video_size=64, base_source="../anysplat")
    torch.manual_seed(1)
    save_pretrained(AnySplat(AnySplatConfig.tiny()), tmp_path / "anysplat")  # another base in the same place
    with pytest.raises(ValueError, match="SHA-256"):
        load_decoder(tmp_path / "lora")
    (tmp_path / "anysplat" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="keep the decoder folder next to its base"):
        load_decoder(tmp_path / "lora")
    with pytest.raises(ValueError, match="no unmerged LoRA"):
        save_decoder(merge_lora(dec), tmp_path / "x", base_source="../anysplat")


# ------------------------------------------------------------------ hub-config variants (distill / voxelize)
def _distill_entries(r=4):
    """LoRA entries the official add_lora gives the training-only distillation copies of a ``distill: true``
    base (uncut aggregator, camera head, depth head), in the published layout."""
    from _models_helpers import crc32_tensor

    from vist3a.stitching.lora import loralib_shapes

    full = _tiny_base()
    out = {}
    for part in ("aggregator", "camera_head", "depth_head"):
        for name, mod in loralib_target_modules(getattr(full.encoder, part)).items():
            key = f"encoder.distill_{part}.{name}"
            a, b = loralib_shapes(mod, r)
            out[f"{key}.lora_A"] = crc32_tensor(f"{key}.lora_A", a)
            out[f"{key}.lora_B"] = crc32_tensor(f"{key}.lora_B", b)
            if mod.bias is not None:
                out[f"{key}.bias"] = crc32_tensor(f"{key}.bias", tuple(mod.bias.shape))
    return out


def test_published_import_accepts_distill_true_checkpoints(tmp_path, caplog):
    extra = _distill_entries()
    modules = {k.rsplit(".", 1)[0] for k in extra}
    assert len(modules) > 20 and any(".patch_embed.patch_embed." in k for k in extra)  # uncut copy: conv embed too
    plain, _ = _published(tmp_path)
    (tmp_path / "d").mkdir()
    distill, _ = _published(tmp_path / "d", edit=lambda c: c["lora"].update(extra))
    a = load_published_stitched(plain, base=_tiny_base(), stitching=TINY_STITCHING)
    with caplog.at_level("INFO", logger="vist3a.stitching.checkpoint"):
        b = load_published_stitched(distill, base=_tiny_base(), stitching=TINY_STITCHING)
    assert f"dropped {len(extra)} entries ({len(modules)} LoRA modules)" in caplog.text
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and not any("distill" in k for k in sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    # a stray key outside the distillation copies is still refused
    (tmp_path / "e").mkdir()
    bad, _ = _published(tmp_path / "e", edit=lambda c: c["lora"].update({"encoder.distilled.x.lora_A": torch.zeros(1)}))
    with pytest.raises(CheckpointMismatchError, match="encoder.distilled.x.lora_A"):
        load_published_stitched(bad, base=_tiny_base(), stitching=TINY_STITCHING)


def _voxel_base(voxelize=True):
    cfg = AnySplatConfig.tiny()
    cfg.voxelize, cfg.voxel_size = voxelize, 0.05
    return build_crc32(AnySplat, cfg)


@pytest.mark.parametrize("distill", [False, True])
def test_published_import_follows_the_base_voxelize_unless_per_pixel(tmp_path, distill):
    path, _ = _published(tmp_path, edit=(lambda c: c["lora"].update(_distill_entries())) if distill else None)
    lat, frames = _inputs()
    n_pixels = frames.shape[1] * frames.shape[-2] * frames.shape[-1]
    fused = load_published_stitched(path, base=_voxel_base(), stitching=TINY_STITCHING)
    per_pixel = load_published_stitched(path, base=_voxel_base(), stitching=TINY_STITCHING, per_pixel=True)
    assert fused.model.config.voxelize and not per_pixel.model.config.voxelize
    with torch.no_grad():
        n_fused = fused(lat, frames)["gaussians"][0].means.shape[0]
        out = per_pixel(lat, frames)
    assert 0 < n_fused < n_pixels
    assert out["gaussians"][0].means.shape[0] == n_pixels
    # the voxelised Gaussians are the fusion of exactly these per-pixel ones
    from vist3a.models import voxel_fuse

    feats = out["anchor_feats"][0].permute(0, 2, 3, 1).reshape(n_pixels, -1)
    pts, _ = voxel_fuse(out["world_points"][0].reshape(-1, 3), feats, out["gs_conf"][0], 0.05)
    with torch.no_grad():
        torch.testing.assert_close(fused(lat, frames)["gaussians"][0].means, pts, rtol=1e-5, atol=1e-6)


def test_our_format_keeps_the_base_voxelize_and_per_pixel_overrides(tmp_path):
    from vist3a.stitching import StitchedDecoder, StitchingLayer

    dec = StitchedDecoder(_voxel_base(), "enc_blocks_2", StitchingLayer(TINY_STITCHING)).eval()
    save_decoder(dec, tmp_path / "dec")
    assert load_decoder(tmp_path / "dec").model.config.voxelize
    assert not load_decoder(tmp_path / "dec", per_pixel=True).model.config.voxelize
