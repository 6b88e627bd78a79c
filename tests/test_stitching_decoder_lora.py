"""LoRA: loralib merge math (published checkpoints) and peft add / merge / save / load on a tiny decoder."""

import pytest
import torch
import torch.nn.functional as F
from _models_helpers import tiny_stitched
from torch import nn

from vist3a.stitching import add_lora, load_lora_adapter, merge_lora, save_lora_adapter
from vist3a.stitching.lora import (
    has_lora,
    lora_target_names,
    loralib_delta,
    loralib_shapes,
    loralib_target_modules,
    merge_loralib_,
    merged_state_dict,
)


def test_loralib_linear_merge_equals_unmerged_forward():
    torch.manual_seed(0)
    lin = nn.Linear(10, 7).double()
    a, b = torch.randn(4, 10, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    assert loralib_shapes(lin, 4) == ((4, 10), (7, 4))
    x = torch.randn(5, 10, dtype=torch.float64)
    unmerged = x @ lin.weight.T + lin.bias + 0.5 * (x @ a.T @ b.T)
    merge_loralib_(lin, a, b, 0.5)
    torch.testing.assert_close(lin(x).detach(), unmerged, rtol=0, atol=1e-12)


def test_loralib_square_conv_merge_is_row_major_view():
    torch.manual_seed(1)
    out_c, in_c, k, r = 3, 2, 3, 2
    conv = nn.Conv2d(in_c, out_c, k, padding=1).double()
    a = torch.randn(r * k, in_c * k, dtype=torch.float64)
    b = torch.randn(out_c * k, r * k, dtype=torch.float64)
    assert loralib_shapes(conv, r) == (tuple(a.shape), tuple(b.shape))
    # explicit element-wise construction of the row-major view of the (out*k, in*k) product
    prod = b @ a
    delta = torch.empty(out_c, in_c, k, k, dtype=torch.float64)
    for o in range(out_c):
        for i in range(in_c):
            for p in range(k):
                for q in range(k):
                    flat = ((o * in_c + i) * k + p) * k + q
                    delta[o, i, p, q] = prod[flat // (in_c * k), flat % (in_c * k)]
    torch.testing.assert_close(loralib_delta(conv.weight.shape, a, b, 0.5), delta * 0.5, rtol=0, atol=0)
    x = torch.randn(2, in_c, 6, 5, dtype=torch.float64)
    unmerged = conv(x) + 0.5 * F.conv2d(x, delta, padding=1)  # base conv + LoRA branch
    merge_loralib_(conv, a, b, 0.5)
    torch.testing.assert_close(conv(x), unmerged, rtol=0, atol=1e-12)


def test_loralib_delta_shape_errors():
    with pytest.raises(ValueError, match="do not chain"):
        loralib_delta((4, 4), torch.zeros(2, 4), torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match="cannot be viewed"):
        loralib_delta((4, 5), torch.zeros(2, 4), torch.zeros(4, 2), 1.0)


def test_loralib_targets_are_linear_and_square_conv2d_only():
    dec, _ = tiny_stitched()
    targets = loralib_target_modules(dec.model)
    kinds = {type(m) for m in targets.values()}
    assert kinds == {nn.Linear, nn.Conv2d}
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in targets.values())
    assert "encoder.gaussian_param_head.input_merger.0" in targets
    assert not any(n.startswith("encoder.aggregator.patch_embed.patch_embed") for n in targets)


def _inputs(t_lat=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, t_lat, 4, 4, generator=g), torch.rand(1, (t_lat - 1) * 4 + 1, 3, 28, 28, generator=g)


@torch.no_grad()
def _randomise_lora(module):
    g = torch.Generator().manual_seed(7)
    for name, p in module.named_parameters():
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_peft_add_merge_save_load_round_trip(tmp_path):
    dec, _ = tiny_stitched()
    lat, frames = _inputs()
    with torch.no_grad():
        base_out = dec(lat, frames)["pose_enc"]
    plain_keys = set(dec.state_dict())
    n_targets = len(lora_target_names(dec.model))
    add_lora(dec, r=2, alpha=4)
    assert has_lora(dec)
    from peft.tuners.lora import LoraLayer

    assert sum(isinstance(m, LoraLayer) for m in dec.model.modules()) == n_targets  # peft stores minimal suffixes
    trainable = {n for n, p in dec.named_parameters() if p.requires_grad}
    assert {"stitching.weight", "stitching.bias"} <= trainable
    assert "model.encoder.aggregator.patch_embed.cls_token" in trainable
    assert any("lora_A" in n for n in trainable) and any(n.endswith("base_layer.bias") for n in trainable)
    assert not any(n.endswith("base_layer.weight") for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(dec(lat, frames)["pose_enc"], base_out)  # lora_B starts at zero
    _randomise_lora(dec)
    with torch.no_grad():
        lora_out = dec(lat, frames)
    assert (lora_out["pose_enc"] - base_out).abs().max() > 1e-4

    save_lora_adapter(dec, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    fresh, _ = tiny_stitched()
    fresh.stitching.load_state_dict(dec.stitching.state_dict())
    load_lora_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(lat, frames)["depth"], lora_out["depth"], rtol=0, atol=0)

    merged_sd = merged_state_dict(dec)
    assert set(merged_sd) == plain_keys
    merge_lora(dec)
    assert not has_lora(dec) and set(dec.state_dict()) == plain_keys
    for k, v in dec.state_dict().items():
        torch.testing.assert_close(v, merged_sd[k], rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        merged_out = dec(lat, frames)
    for key in ("pose_enc", "depth", "anchor_feats"):
        torch.testing.assert_close(merged_out[key], lora_out[key], rtol=1e-4, atol=1e-5)


def test_peft_errors(tmp_path):
    dec, _ = tiny_stitched()
    with pytest.raises(ValueError, match="no unmerged LoRA"):
        save_lora_adapter(dec, tmp_path)
    add_lora(dec, r=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(dec)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora_adapter(tiny_stitched()[0], tmp_path / "nothing")
    save_lora_adapter(dec, tmp_path / "a")
    more, _ = tiny_stitched(cut="enc_blocks_1")  # two DINO blocks: blocks.1 gets LoRA the adapter lacks
    with pytest.raises(ValueError, match="missing LoRA keys"):
        load_lora_adapter(more, tmp_path / "a")
    fewer, _ = tiny_stitched(cut="enc_blocks_3")  # no DINO block left: the adapter targets modules it lacks
    with pytest.raises(ValueError, match="modules this model lacks"):
        load_lora_adapter(fewer, tmp_path / "a")
