"""Fuzz corpus, checkpoints: malicious pickles that would create a file if executed, truncated and mislabelled
archives, damaged safetensors, wrong keys / shapes / configs -- through the library loaders and through the CLI.

Contract: one clear message naming the file (never a hint to turn weights_only off, not even in the exception chain),
the payload never ran, nothing partial written, an earlier output untouched. Problems visible without loading a
weight (headers, configs, key names and shapes) are refused before any model is built.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch
from _contract import (
    SENTINEL,
    assert_clear_cli,
    assert_clear_value_error,
    assert_unchanged,
    run_cli,
    safetensors_bytes,
    snapshot,
    truncate,
    write_raw_pickle,
    write_zip_pickle,
)
from PIL import Image
from safetensors.torch import save_file

from vist3a.errors import CheckpointMismatchError
from vist3a.io.weights import load_weights
from vist3a.models import (
    AnySplat,
    AnySplatConfig,
    VGGTConfig,
    from_pretrained,
    save_pretrained,
)
from vist3a.pipeline.presets import tiny_decoder
from vist3a.stitching import load_decoder, load_published_stitched, save_decoder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Valid files every case starts from: a tiny decoder folder (our format), a tiny base AnySplat folder, a tiny
    Wan VAE folder (for a full reconstruct without downloads), a small state dict (.safetensors and .pth), a PEFT
    adapter for the tiny Wan transformer."""
    from peft import LoraConfig, get_peft_model

    from vist3a.pipeline.presets import tiny_wan_pipeline
    from vist3a.stitching.vae import tiny_video_vae

    root = tmp_path_factory.mktemp("made")
    torch.manual_seed(0)
    save_decoder(tiny_decoder(0), root / "decoder", video_size=64)
    save_pretrained(AnySplat(AnySplatConfig.tiny()).eval(), root / "base")
    tiny_video_vae("wan", seed=0).vae.save_pretrained(str(root / "wan" / "vae"))
    state = {"a.weight": torch.randn(8, 4), "b.bias": torch.zeros(8)}
    save_file(state, str(root / "state.safetensors"))
    torch.save(state, root / "state.pth")
    peft = get_peft_model(tiny_wan_pipeline(0).transformer,
                          LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k"], init_lora_weights=False))
    peft.save_pretrained(str(root / "lora"))
    return root


@pytest.fixture
def marker(tmp_path):
    """The file a payload would create; asserted absent after every case."""
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a pickle payload ran"


# ============================================================================================ weight files
def _st_header(tensors: dict) -> bytes:
    return json.dumps(tensors).encode()


WEIGHT_FILES = [
    # (case, file name, builder(made, marker, path) -> None, phrase the message must contain)
    ("raw-pickle-payload", "w.pth", lambda m, k, p: write_raw_pickle(p, k), ""),
    ("zip-pickle-payload", "w.pth", lambda m, k, p: write_zip_pickle(p, k), "never unpickles"),
    ("zip-pickle-payload-as-.bin", "w.bin", lambda m, k, p: write_zip_pickle(p, k), "never unpickles"),
    ("pickle-payload-named-safetensors", "w.safetensors", lambda m, k, p: write_zip_pickle(p, k),
     "PyTorch checkpoint"),
    ("zip-cut-half", "w.pth", lambda m, k, p: truncate(m / "state.pth", p, 0.5), "truncated"),
    ("zip-one-byte-short", "w.pth", lambda m, k, p: truncate(m / "state.pth", p, -1), "truncated"),
    ("zip-without-end-record", "w.pth", lambda m, k, p: truncate(m / "state.pth", p, -22), "truncated"),
    ("zip-without-data-pkl", "w.pth", lambda m, k, p: _plain_zip(p), "no data.pkl"),
    ("empty-pth", "w.pth", lambda m, k, p: p.write_bytes(b""), "empty"),
    ("html-as-pth", "w.pth", lambda m, k, p: p.write_bytes(b"<!DOCTYPE html><html>Access denied</html>"),
     "web page"),
    ("json-as-pth", "w.pth", lambda m, k, p: p.write_bytes(b'{"a": 1}'), "JSON"),
    ("safetensors-as-pth", "w.pth", lambda m, k, p: shutil.copy(m / "state.safetensors", p), "safetensors"),
    ("st-cut-8", "w.safetensors", lambda m, k, p: truncate(m / "state.safetensors", p, -8), "truncated"),
    ("st-cut-half", "w.safetensors", lambda m, k, p: truncate(m / "state.safetensors", p, 0.5), ""),
    ("st-empty", "w.safetensors", lambda m, k, p: p.write_bytes(b""), "empty"),
    ("st-header-length-huge", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(b"{}", b"",
                                                                                              2**62)), "header"),
    ("st-header-not-json", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(b"{not json}")), "JSON"),
    ("st-header-a-list", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(b"[1, 2]   ")),
     "not a JSON object"),
    ("st-offsets-past-end", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(_st_header(
        {"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}), b"\0" * 16)), "truncated"),
    ("st-size-mismatch", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(_st_header(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}), b"\0" * 8)), "does not match"),
    ("st-malformed-entry", "w.safetensors", lambda m, k, p: p.write_bytes(safetensors_bytes(_st_header(
        {"a": {"dtype": "F32"}}))), "malformed"),
    ("pth-with-non-tensors", "w.pth", lambda m, k, p: torch.save({"a": 1, "b": "x"}, p), "not tensors"),
    ("pth-a-list", "w.pth", lambda m, k, p: torch.save([torch.zeros(1)], p), "state dict"),
    ("unknown-extension", "w.npz", lambda m, k, p: p.write_bytes(b"PK"), "unsupported"),
]


def _plain_zip(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a checkpoint")


@pytest.mark.parametrize("case, name, build, phrase", WEIGHT_FILES, ids=[c[0] for c in WEIGHT_FILES])
def test_weights_file_refused_clearly(case, name, build, phrase, made, marker, tmp_path):
    path = tmp_path / name
    build(made, marker, path)
    with pytest.raises(ValueError) as info:
        load_weights(path, "weights file")
    message = assert_clear_value_error(info.value, "", str(path))
    assert phrase in message, message


@pytest.mark.parametrize("how", ["published-decoder", "base-model-file", "base-model-folder", "vggt-folder"])
@pytest.mark.parametrize("payload", ["raw", "zip"])
def test_payload_never_runs_in_any_loader(how, payload, made, marker, tmp_path):
    evil = tmp_path / ("model.pt" if how.endswith("folder") else "evil.pth")
    (write_raw_pickle if payload == "raw" else write_zip_pickle)(evil, marker)
    with pytest.raises(ValueError) as info:
        if how == "published-decoder":
            load_published_stitched(evil, base=AnySplat(AnySplatConfig.tiny()))
        elif how == "base-model-file":
            from_pretrained(evil, model="anysplat", config=AnySplatConfig.tiny())
        elif how == "base-model-folder":
            from_pretrained(tmp_path, model="anysplat", config=AnySplatConfig.tiny())
        else:
            from_pretrained(tmp_path, model="vggt", config=VGGTConfig.tiny())
    assert_clear_value_error(info.value, "", str(evil))


# ============================================================================================ decoder folders
def _edit_config(folder, change):
    cfg_file = folder / "decoder_config.json"
    cfg = json.loads(cfg_file.read_text())
    out = change(cfg)
    cfg_file.write_text(out if isinstance(out, str) else json.dumps(cfg if out is None else out))


def _set(path: str, value):
    def change(cfg):
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is _DROP:
            del node[last]
        else:
            node[last] = value

    return change


_DROP = object()


def _weights(folder, change):
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def _drop_key(state):
    state.pop(sorted(state)[3])


def _reshape_key(state):
    key = next(k for k in sorted(state) if state[k].dim() == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])


DECODER_FOLDERS = [
    # (case, edit(folder), phrase)
    ("config-not-json", lambda f: (f / "decoder_config.json").write_text("{not json"), "not valid JSON"),
    ("config-empty", lambda f: (f / "decoder_config.json").write_text(""), "not valid JSON"),
    ("config-binary", lambda f: (f / "decoder_config.json").write_bytes(b"\xff\xfe\x00garbage"), "UTF-8"),
    ("config-a-list", lambda f: (f / "decoder_config.json").write_text("[1, 2]"), "JSON object"),
    ("config-without-base-model", lambda f: _edit_config(f, _set("base_model", _DROP)), "'base_model' is missing"),
    ("config-base-model-a-string", lambda f: _edit_config(f, _set("base_model", "anysplat")), "base_model"),
    ("config-unknown-base-type", lambda f: _edit_config(f, _set("base_model.type", "nerf")), "nerf"),
    ("config-wrong-format", lambda f: _edit_config(f, _set("format", "other")), "not a stitched-decoder config"),
    ("config-future-version", lambda f: _edit_config(f, _set("format_version", 99)), "Update vist3a"),
    ("config-version-a-word", lambda f: _edit_config(f, _set("format_version", "x")), "format_version"),
    ("config-bad-stitching", lambda f: _edit_config(f, _set("stitching", "conv9d_what")), "buildable"),
    ("config-bad-cut", lambda f: _edit_config(f, _set("cut", "enc_blocks_99")), "buildable"),
    ("config-no-cut", lambda f: _edit_config(f, _set("cut", _DROP)), "'cut' is missing"),
    ("config-model-config-missing", lambda f: _edit_config(f, _set("base_model.config", _DROP)),
     "base_model.config"),
    ("config-model-config-wrong", lambda f: _edit_config(f, _set("base_model.config.aggregator", "big")),
     "buildable"),
    ("config-negative-channels", lambda f: _edit_config(f, _set("latent_channels", -1)), "latent_channels"),
    ("config-weird-weights", lambda f: _edit_config(f, _set("weights", "half")), "'weights'"),
    ("config-lora-without-source", lambda f: _edit_config(f, _set("weights", "lora")), "base_model.source"),
    ("weights-missing", lambda f: (f / "model.safetensors").unlink(), "model.safetensors"),
    ("weights-truncated", lambda f: truncate(f / "model.safetensors", f / "model.safetensors", 0.7), "truncated"),
    ("weights-a-pickle", lambda f: write_zip_pickle(f / "model.safetensors", f.parent / "PAYLOAD_RAN"),
     "PyTorch checkpoint"),
    ("weights-key-missing", lambda f: _weights(f, _drop_key), "missing keys"),
    ("weights-extra-key", lambda f: _weights(f, lambda s: s.__setitem__("model.extra", torch.zeros(2))),
     "unexpected keys"),
    ("weights-wrong-shape", lambda f: _weights(f, _reshape_key), "mis-shaped"),
]


@pytest.fixture
def decoder_copy(made, tmp_path):
    folder = tmp_path / "decoder"
    shutil.copytree(made / "decoder", folder)
    return folder


def _lora_source_missing(folder):
    _edit_config(folder, lambda cfg: cfg.update(weights="lora", lora={"r": 4, "alpha": 8, "targets": ["qkv"]},
                                                base_model={**cfg["base_model"], "source": "../no_base_here"}))


DECODER_FOLDERS.append(("lora-base-missing", _lora_source_missing, "no_base_here"))


@pytest.mark.parametrize("case, edit, phrase", DECODER_FOLDERS, ids=[c[0] for c in DECODER_FOLDERS])
def test_bad_decoder_folder_library(case, edit, phrase, decoder_copy, marker):
    edit(decoder_copy)
    with pytest.raises((ValueError, CheckpointMismatchError, FileNotFoundError)) as info:
        load_decoder(decoder_copy)
    message = str(info.value)
    assert str(decoder_copy) in message and phrase in message, message
    assert "weights_only" not in message


@pytest.mark.parametrize("case, edit, phrase", DECODER_FOLDERS, ids=[c[0] for c in DECODER_FOLDERS])
def test_bad_decoder_folder_cli_refused_before_any_model(case, edit, phrase, decoder_copy, marker, tmp_path,
                                                          monkeypatch, capsys):
    """`vist3a generate --preset tiny --decoder FOLDER`: every one of these is visible without loading a weight, so
    nothing (not even the tiny Wan) is built."""
    from vist3a.pipeline import presets

    edit(decoder_copy)
    monkeypatch.setattr(presets, "tiny_wan_pipeline", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scene.ply").write_bytes(SENTINEL)
    before = snapshot(tmp_path)
    message = assert_clear_cli(run_cli(["generate", "a car", "--preset", "tiny", "--decoder", "decoder", "-o",
                                        "scene.ply"], capsys), "generate", "decoder")
    assert phrase in message, message
    assert_unchanged(tmp_path, before)


# ============================================================================================ published .pth
def _published(path, change):
    ckpt = {"lora": {}, "stitching_layer": {"weight": torch.zeros(1024, 16, 5, 3, 3), "bias": torch.zeros(1024)},
            "mask_token": torch.zeros(1, 1024), "cls_token": torch.zeros(1, 1, 1024),
            "register_tokens": torch.zeros(1, 4, 1024)}
    out = change(ckpt)
    torch.save(ckpt if out is None else out, path)


PUBLISHED = [
    ("top-level-a-list", lambda c: [c["mask_token"]], "expected a dict"),
    ("wrong-top-keys", lambda c: {"state_dict": {"x": torch.zeros(1)}}, "missing top-level entries"),
    ("plain-state-dict", lambda c: {"encoder.x": torch.zeros(1)}, "load_decoder"),
    ("non-tensor-entries", lambda c: c.update(mask_token=3), "not tensors"),
    ("lora-not-a-dict", lambda c: c.update(lora=[1, 2]), "dicts of tensors"),
    ("lora-for-another-cut", lambda c: c["lora"].update(
        {"encoder.aggregator.patch_embed.blocks.30.attn.qkv.lora_A": torch.zeros(2, 64)}), "enc_blocks_"),
    ("lora-empty", lambda c: None, "holds no LoRA"),
]


@pytest.mark.parametrize("case, change, phrase", PUBLISHED, ids=[c[0] for c in PUBLISHED])
def test_bad_published_checkpoint(case, change, phrase, tmp_path):
    path = tmp_path / "anysplat_stitched.pth"
    _published(path, change)
    with pytest.raises((ValueError, CheckpointMismatchError)) as info:
        load_published_stitched(path, base=AnySplat(AnySplatConfig.tiny()))
    message = str(info.value)
    assert str(path) in message and phrase in message, message


# ============================================================================================ base models
BASES = [
    ("config-not-json", lambda f: (f / "config.json").write_text("{oops"), "not valid JSON"),
    ("config-wrong-content", lambda f: (f / "config.json").write_text(json.dumps({"encoder_cfg": "x"})),
     "does not describe"),
    ("weights-wrong-keys", lambda f: save_file({"foo": torch.zeros(1)}, str(f / "model.safetensors")),
     "does not match"),
    ("weights-truncated", lambda f: truncate(f / "model.safetensors", f / "model.safetensors", 0.5), "truncated"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), "no weights"),
]


@pytest.mark.parametrize("case, edit, phrase", BASES, ids=[c[0] for c in BASES])
def test_bad_base_model_folder(case, edit, phrase, made, tmp_path):
    folder = tmp_path / "base"
    shutil.copytree(made / "base", folder)
    edit(folder)
    with pytest.raises((ValueError, CheckpointMismatchError, FileNotFoundError)) as info:
        from_pretrained(folder, model="anysplat")
    message = str(info.value)
    assert str(folder) in message and phrase in message, message


# ============================================================================================ full CLI runs
def _clip(folder):
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 80, 0)).save(folder / f"{i}.png")


CLI_PTH = [
    ("raw-payload", lambda p, k: write_raw_pickle(p, k), ""),
    ("zip-payload", lambda p, k: write_zip_pickle(p, k), "never unpickles"),
    ("truncated", lambda p, k: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "truncated"),
    ("html", lambda p, k: p.write_bytes(b"<html>404</html>"), "web page"),
]


@pytest.mark.parametrize("case, build, phrase", CLI_PTH, ids=[c[0] for c in CLI_PTH])
def test_reconstruct_with_bad_published_decoder(case, build, phrase, made, marker, tmp_path, monkeypatch, capsys):
    """The whole published-decoder path without downloads: local tiny Wan VAE (--wan), local base (--base) and a
    bad .pth (--decoder)."""
    monkeypatch.chdir(tmp_path)
    _clip(tmp_path / "clip")
    build(tmp_path / "dec.pth", marker)
    (tmp_path / "scene.ply").write_bytes(SENTINEL)
    before = snapshot(tmp_path)
    message = assert_clear_cli(run_cli(["reconstruct", "clip", "-o", "scene.ply", "--device", "cpu", "--wan",
                                        made / "wan", "--base", made / "base", "--decoder", "dec.pth"], capsys),
                               "reconstruct", "dec.pth")
    assert phrase in message
    assert_unchanged(tmp_path, before)


LORAS = [
    ("config-not-json", lambda f, k: (f / "adapter_config.json").write_text("{"), "not valid JSON"),
    ("weights-truncated", lambda f, k: truncate(f / "adapter_model.safetensors", f / "adapter_model.safetensors",
                                                0.5), "truncated"),
    ("weights-missing", lambda f, k: (f / "adapter_model.safetensors").unlink(), "adapter_model"),
    ("bin-payload", lambda f, k: ((f / "adapter_model.safetensors").unlink(),
                                  write_zip_pickle(f / "adapter_model.bin", k)), "never unpickles"),
    ("foreign-modules", lambda f, k: save_file({"base_model.model.nope.lora_A.weight": torch.zeros(4, 24)},
                                               str(f / "adapter_model.safetensors")), "does not fit"),
]


@pytest.mark.parametrize("case, edit, phrase", LORAS, ids=[c[0] for c in LORAS])
def test_bad_lora_adapter(case, edit, phrase, made, marker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(made / "lora", tmp_path / "lora")
    edit(tmp_path / "lora", marker)
    (tmp_path / "scene.ply").write_bytes(SENTINEL)
    before = snapshot(tmp_path)
    message = assert_clear_cli(run_cli(["generate", "a car", "--preset", "tiny", "--lora", "lora", "-o",
                                        "scene.ply", "--no-progress"], capsys), "generate", "lora")
    assert phrase in message, message
    assert_unchanged(tmp_path, before)


def test_valid_files_still_load(made, tmp_path, capsys, monkeypatch):
    """The positive side: the unmodified tiny decoder, base and adapter load, and a full reconstruct with local
    models writes the scene."""
    assert load_decoder(made / "decoder").kind == "anysplat"
    assert set(load_weights(made / "state.pth")) == {"a.weight", "b.bias"}
    monkeypatch.chdir(tmp_path)
    _clip(tmp_path / "clip")
    assert run_cli(["reconstruct", "clip", "--preset", "tiny", "--decoder", made / "decoder", "-o", "s.ply"],
                   capsys).rc == 0
    assert (tmp_path / "s.ply").is_file()


def test_the_corpus_is_what_it_claims():
    n = len(WEIGHT_FILES) + 8 + 2 * len(DECODER_FOLDERS) + len(PUBLISHED) + len(BASES) + len(CLI_PTH) + len(LORAS)
    assert n >= 90
