"""from_pretrained / save_pretrained on tiny self-built checkpoints; strict-key errors; offline message."""

import json

import pytest
import torch
from _models_helpers import build_crc32
from safetensors.torch import save_file

from vist3a.models import (
    VGGT,
    AnySplat,
    AnySplatConfig,
    CheckpointMismatchError,
    VGGTConfig,
    anysplat_config_from_hub,
    from_pretrained,
    load_checkpoint_into,
    save_pretrained,
)

IMAGES = torch.rand(1, 2, 3, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def tiny_anysplat():
    return build_crc32(AnySplat, AnySplatConfig.tiny())


@pytest.fixture(scope="module")
def tiny_vggt():
    return build_crc32(VGGT, VGGTConfig.tiny())


def _same_outputs(a, b, keys=("pose_enc", "depth")):
    with torch.no_grad():
        oa, ob = a(IMAGES), b(IMAGES)
    for k in keys:
        torch.testing.assert_close(oa[k], ob[k], rtol=0, atol=0)


def test_folder_round_trip(tmp_path, tiny_anysplat, tiny_vggt):
    for model in (tiny_anysplat, tiny_vggt):
        folder = save_pretrained(model, tmp_path / type(model).__name__)
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        loaded = from_pretrained(folder)
        assert type(loaded) is type(model) and not loaded.training
        assert loaded.config == model.config
        _same_outputs(model, loaded)


def test_safetensors_file_with_config_beside(tmp_path, tiny_anysplat):
    folder = save_pretrained(tiny_anysplat, tmp_path / "a")
    loaded = from_pretrained(folder / "model.safetensors")
    _same_outputs(tiny_anysplat, loaded)


def test_pt_file_loaded_with_weights_only(tmp_path, tiny_vggt):
    path = tmp_path / "model.pt"
    torch.save(tiny_vggt.state_dict(), path)  # VGGT-1B style: a plain state dict in model.pt, no config
    loaded = from_pretrained(path, config=VGGTConfig.tiny())
    _same_outputs(tiny_vggt, loaded)
    # the folder form finds model.pt as well
    (tmp_path / "config.json").write_text(json.dumps(VGGTConfig.tiny().to_dict()))
    _same_outputs(tiny_vggt, from_pretrained(tmp_path))


def test_pt_with_arbitrary_objects_is_refused(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # any non-tensor object outside the weights-only allowlist
    with pytest.raises(ValueError, match="holds Python objects other than tensors") as info:
        from_pretrained(path, model="vggt", config=VGGTConfig.tiny())
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None


def test_dtype_and_hub_style_distill_keys(tmp_path, tiny_anysplat):
    state = dict(tiny_anysplat.state_dict())
    state["encoder.distill_aggregator.camera_token"] = torch.zeros(1, 2, 1, 64)  # training-only copy: dropped
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = from_pretrained(tmp_path / "model.safetensors", config=AnySplatConfig.tiny(), dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16


def test_strict_error_lists_missing_unexpected_and_misshaped(tiny_anysplat):
    state = dict(tiny_anysplat.state_dict())
    state.pop("encoder.camera_head.empty_pose_tokens")
    state["encoder.extra.weight"] = torch.zeros(3)
    state["encoder.depth_head.norm.bias"] = torch.zeros(5)
    target = AnySplat(AnySplatConfig.tiny())
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint_into(target, state, source="my.safetensors")
    msg = str(info.value)
    assert "my.safetensors" in msg
    assert "missing keys (1): encoder.camera_head.empty_pose_tokens" in msg
    assert "unexpected keys (1): encoder.extra.weight" in msg
    assert "mis-shaped keys (1): encoder.depth_head.norm.bias: checkpoint (5,) vs model (128,)" in msg
    assert "What to do" in msg and "config" in msg


def test_wrong_config_gives_clear_error(tmp_path, tiny_vggt):
    path = tmp_path / "model.pt"
    torch.save(tiny_vggt.state_dict(), path)
    cfg = VGGTConfig.tiny()
    cfg.track_head = False
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        from_pretrained(path, config=cfg)


def test_model_kind_inferred_from_keys(tmp_path, tiny_anysplat):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_anysplat.state_dict().items()}, str(path))
    # no config.json next to it: the kind comes from the keys, the config from the argument
    assert isinstance(from_pretrained(path, config=AnySplatConfig.tiny()), AnySplat)


def test_offline_hub_id_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as info:
        from_pretrained("lhjiang/anysplat-does-not-exist")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "local folder" in msg and "from_pretrained('/path/to/folder')" in msg


def test_missing_path_message():
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a hub id"):
        from_pretrained("./no/such/folder")


def test_hub_config_json_is_understood():
    hub = {
        "encoder_cfg": {
            "name": "anysplat", "gaussian_adapter": {"gaussian_scale_min": 0.5, "gaussian_scale_max": 15.0,
                                                     "sh_degree": 4},
            "opacity_mapping": {"initial": 0.0, "final": 0.0, "warm_up": 1}, "voxel_size": 0.002,
            "pred_head_type": "depth", "distill": True, "voxelize": True, "intermediate_layer_idx": [4, 11, 17, 23],
        },
        "decoder_cfg": {"name": "splatting_cuda"},
    }
    cfg = anysplat_config_from_hub(hub)
    assert cfg == AnySplatConfig(voxel_size=0.002, voxelize=True)  # followed like the official loader
    hub["encoder_cfg"].update(voxelize=False, distill=False)
    assert anysplat_config_from_hub(hub) == AnySplatConfig(voxel_size=0.002, voxelize=False)
    del hub["encoder_cfg"]["voxelize"]  # absent: AnySplat's dataclass default (off)
    assert not anysplat_config_from_hub(hub).voxelize
    with pytest.raises(ValueError, match="pred_head_type"):
        anysplat_config_from_hub({"encoder_cfg": {"pred_head_type": "point"}})


def test_config_dict_round_trip():
    for cfg in (AnySplatConfig.tiny(), VGGTConfig(), AnySplatConfig()):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert type(cfg).from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        VGGTConfig.from_dict({"bogus": 1})
