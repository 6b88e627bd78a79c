"""State-dict compatibility with the published AnySplat / VGGT checkpoints (key listings in shared/golden)."""

import zlib

import pytest
import torch
from _models_helpers import load_key_listing, norm_weight_keys

from vist3a.models import VGGT, AnySplat, AnySplatConfig, VGGTConfig


def _meta(cls, cfg=None):
    with torch.device("meta"):
        return cls(cfg) if cfg is not None else cls()


@pytest.mark.parametrize("cls,listing", [(AnySplat, "anysplat_keys.json"), (VGGT, "vggt_keys.json")])
def test_state_dict_keys_shapes_and_order_match_published(golden_dir, cls, listing):
    ref = load_key_listing(golden_dir, listing)
    model = _meta(cls)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, list(shape)) for k, shape, *_ in ref["keys"]]
    missing = sorted({k for k, _ in theirs} - {k for k, _ in ours})
    extra = sorted({k for k, _ in ours} - {k for k, _ in theirs})
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert ours == theirs  # same keys, same shapes, same order
    assert sum(v.numel() for v in model.state_dict().values()) == ref["num_elements"]
    assert len(ours) == ref["num_keys"]


@pytest.mark.parametrize("cls,listing", [(AnySplat, "anysplat_keys.json"), (VGGT, "vggt_keys.json")])
def test_norm_weights_are_the_one_plus_keys(golden_dir, cls, listing):
    ref = load_key_listing(golden_dir, listing)
    one_plus = {k for k, _s, _d, _p, init in ref["keys"] if init == "one_plus_normal"}
    assert norm_weight_keys(_meta(cls)) == one_plus


def test_no_buffers_in_state_dict():
    for cls in (AnySplat, VGGT):
        model = _meta(cls)
        assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}


def test_distill_extras_are_listed_with_the_dropped_prefixes(golden_dir):
    from vist3a.models.loading import _DROPPED_PREFIXES

    extra = load_key_listing(golden_dir, "anysplat_keys.json")["extra_keys_if_distill_true"]["keys"]
    assert extra and all(k.startswith(_DROPPED_PREFIXES) for k, *_ in extra)


def test_crc32_check_values_from_readme():
    # README section 2: the seeds and first values of the deterministic init.
    from _models_helpers import crc32_init_

    assert zlib.crc32(b"encoder.aggregator.camera_token") == 4204963886
    assert zlib.crc32(b"aggregator.camera_token") == 1709971096
    model = AnySplat(AnySplatConfig.tiny())
    crc32_init_(model)
    # tiny shapes differ from the full model, but the generator stream only depends on the key
    first = model.encoder.aggregator.camera_token.flatten()[:4]
    torch.testing.assert_close(first, torch.tensor([0.03720958, 0.02251305, -0.02072604, 0.00776338]),
                               rtol=0, atol=1e-7)
    norm_w = model.encoder.aggregator.patch_embed.norm.weight[:4]
    torch.testing.assert_close(norm_w, torch.tensor([1.00308347, 1.00650513, 1.00535297, 1.03681064]),
                               rtol=0, atol=1e-6)
    vggt = VGGT(VGGTConfig.tiny())
    crc32_init_(vggt)
    torch.testing.assert_close(vggt.aggregator.camera_token.flatten()[:4],
                               torch.tensor([-0.01940555, -0.00614327, -0.01363709, 0.00724372]), rtol=0, atol=1e-7)
