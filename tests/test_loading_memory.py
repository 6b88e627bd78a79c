"""Loading a model or a decoder holds ONE copy of its weights: the model is built on the meta device and adopts the
checkpoint's tensors (load_state_dict(assign=True)) instead of allocating its own and copying into them. Checked
without measuring RSS: every parameter must BE the tensor read from the file (same storage), and nothing may be
materialised with to_empty."""

import pytest
import torch

import vist3a.io.weights as weights_io
from vist3a.models import (
    AnySplat,
    AnySplatConfig,
    from_pretrained,
    loading,
    save_pretrained,
)
from vist3a.pipeline.presets import tiny_decoder
from vist3a.stitching import load_decoder, save_decoder


@pytest.fixture
def no_to_empty(monkeypatch):
    def refuse(self, *a, **k):
        raise AssertionError("to_empty allocates a second copy of the weights")

    monkeypatch.setattr(torch.nn.Module, "to_empty", refuse)


def _capture(monkeypatch, module, name):
    seen = []  # the very dict the loader got (the loader may replace its entries)
    inner = getattr(module, name)

    def wrapped(*a, **k):
        out = inner(*a, **k)
        seen.append(out)
        return out

    monkeypatch.setattr(module, name, wrapped)
    return seen


def _storages(model):
    return {n: p.untyped_storage().data_ptr() for n, p in model.state_dict().items()}


def test_from_pretrained_adopts_the_file_tensors(tmp_path, monkeypatch, no_to_empty):
    torch.manual_seed(0)
    model = AnySplat(AnySplatConfig.tiny())
    save_pretrained(model, tmp_path)
    seen = _capture(monkeypatch, loading, "load_state_dict_file")
    loaded = from_pretrained(tmp_path, model="anysplat")
    seen = seen[0]
    ptrs = _storages(loaded)
    assert set(ptrs) <= set(seen) and len(ptrs) > 50
    assert all(ptrs[k] == seen[k].untyped_storage().data_ptr() for k in ptrs)  # no second copy
    assert not any(p.is_meta for p in loaded.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_decoder_adopts_the_file_tensors(tmp_path, monkeypatch, no_to_empty):
    dec = tiny_decoder(0)
    save_decoder(dec, tmp_path / "dec")
    seen = _capture(monkeypatch, weights_io, "load_safetensors")
    loaded = load_decoder(tmp_path / "dec")
    seen = seen[0]
    ptrs = _storages(loaded)
    assert len(ptrs) > 50 and all(ptrs[k] == seen[k].untyped_storage().data_ptr() for k in ptrs)
    for k, v in dec.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_half_precision_checkpoint_is_cast_once(tmp_path, monkeypatch, no_to_empty):
    torch.manual_seed(0)
    model = AnySplat(AnySplatConfig.tiny()).half()
    save_pretrained(model, tmp_path)
    seen = _capture(monkeypatch, loading, "load_state_dict_file")
    loaded = from_pretrained(tmp_path, model="anysplat")
    seen = seen[0]
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].float()), k
        assert seen[k].dtype == torch.float32  # the caller's dict holds the cast tensor, the fp16 one is freed
