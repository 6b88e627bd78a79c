"""MVDUSt3R checkpoints: the released training-checkpoint layout ({"model", "args", "epoch"}) with a pickled
``argparse.Namespace`` loads through the one-class allowlist; anything else pickled is refused; key mismatches are
named; our own folder format round-trips. Tiny models only (a second each)."""

from __future__ import annotations

import argparse

import pytest
import torch

from vist3a.errors import CheckpointMismatchError
from vist3a.models import MVDUSt3R, MVDUSt3RConfig, from_pretrained, save_pretrained
from vist3a.models.loading import load_mvdust3r_state

CONSTRUCTOR = ("AsymmetricCroCo3DStereoMultiView(pos_embed='RoPE100', img_size=(224, 224), head_type='linear', "
               "output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, 1e9), GS = True, "
               "sh_degree=0, pts_head_config = {'skip':True}, m_ref_flag=True, n_ref = 4)")


def _tiny(n_ref: int, seed: int = 0) -> MVDUSt3R:
    torch.manual_seed(seed)
    model = MVDUSt3R(MVDUSt3RConfig.tiny(n_ref)).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return model


def _released(path, model: MVDUSt3R, drop_dec_blocks2: bool = False) -> None:
    """Write ``model`` in the released layout: a training checkpoint with a pickled argparse.Namespace."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if drop_dec_blocks2:
        state = {k: v for k, v in state.items() if not k.startswith("dec_blocks2.")}
    args = argparse.Namespace(model=CONSTRUCTOR if model.config.multi_ref else CONSTRUCTOR.split(", m_ref")[0] + ")",
                              lr=1e-4, epochs=100, output_dir="/somewhere")
    torch.save({"model": state, "args": args, "epoch": 99, "optimizer": {"state": {}, "param_groups": []}}, path)


@pytest.mark.parametrize("n_ref", [1, 4])
def test_released_layout_loads_key_for_key(tmp_path, single_thread, n_ref):
    model = _tiny(n_ref)
    path = tmp_path / ("MVDp_s2.pth" if n_ref > 1 else "MVD.pth")
    _released(path, model)
    _state, info = load_mvdust3r_state(path)
    assert info["variant"] == ("mvdp" if n_ref > 1 else "mvd") and info["epoch"] == 99
    assert info["constructor"].startswith("AsymmetricCroCo3DStereoMultiView(")
    loaded = from_pretrained(path)
    assert isinstance(loaded, MVDUSt3R) and loaded.config.n_ref == n_ref
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(1, 4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in ("pts3d", "conf", "rotation", "scale", "opacity"):
        assert torch.equal(a[k], b[k]), k


def test_dec_blocks2_fallback_copies_dec_blocks(tmp_path, single_thread):
    """As the official load_state_dict: a checkpoint without dec_blocks2 gets a copy of dec_blocks."""
    model = _tiny(1)
    path = tmp_path / "MVD.pth"
    _released(path, model, drop_dec_blocks2=True)
    loaded = from_pretrained(path)
    sd = loaded.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("dec_blocks2."):
            assert torch.equal(sd[k], model.state_dict()["dec_blocks." + k[len("dec_blocks2."):]]), k
            if k.endswith("qkv.weight"):
                assert not torch.equal(sd[k], v)  # randomly initialised: the two block stacks differ


class _Payload:
    """Unpickling this would create ``marker`` (stands in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    model = _tiny(1)
    path = tmp_path / "MVD.pth"
    torch.save({"model": model.state_dict(), "args": _Payload(marker), "epoch": 1}, path)
    with pytest.raises(ValueError, match="never unpickles"):
        load_mvdust3r_state(path)
    with pytest.raises(ValueError, match="never unpickles"):
        from_pretrained(path)
    assert not marker.exists()
    # a Namespace is allowed, but not what it might carry
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(x=_Payload(marker))}, path)
    with pytest.raises(ValueError, match="never unpickles"):
        load_mvdust3r_state(path)
    assert not marker.exists()


def test_wrong_keys_are_named(tmp_path):
    model = _tiny(1)
    state = model.state_dict()
    state.pop("enc_norm.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "MVD.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="x")}, path)
    with pytest.raises(CheckpointMismatchError, match="enc_norm.weight"):
        from_pretrained(path, config=MVDUSt3RConfig.tiny())
    torch.save({"model": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="no MVDUSt3R keys"):
        load_mvdust3r_state(path)


def test_our_folder_format_round_trips(tmp_path, single_thread):
    model = _tiny(4, seed=3)
    save_pretrained(model, tmp_path / "mvdp")
    loaded = from_pretrained(tmp_path / "mvdp")
    assert isinstance(loaded, MVDUSt3R) and loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
