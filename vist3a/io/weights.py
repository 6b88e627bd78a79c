"""Reading weights and configs safely: the only place the package opens checkpoint files.

* ``.safetensors``: the header is checked first (length, JSON, every tensor inside the file) so a truncated or
  mislabelled file fails at once with a clear message, never with a huge allocation;
* ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True)`` only -- a file holding other Python objects is
  refused (nothing in it runs), and the message never suggests turning ``weights_only`` off;
* JSON configs: parsed, and required to be a JSON object.

Every failure is one ``ValueError`` from :func:`vist3a.errors.checkpoint_error` naming the file, what is wrong and what
to do. :func:`check_weights_file` is the cheap structural check (headers only) the pre-flight checks run on local
checkpoints before any model is loaded.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

from ..errors import checkpoint_error, looks_like, sniff_file
from .paths import check_input_file

__all__ = [
    "TORCH_SUFFIXES",
    "check_weights_file",
    "load_safetensors",
    "load_torch_file",
    "load_weights",
    "read_json_file",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_HEADER = 100 << 20  # safetensors' own limit for the JSON header
#: bytes per element of the common safetensors dtypes (others, e.g. sub-byte ones, are not size-checked)
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
              "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}


def _bad(path: str, what: str, problem: str) -> ValueError:
    return ValueError(f"{what} {path} {problem}")


def _check_safetensors(path: str, what: str) -> None:
    """Header-only structural check of a safetensors file (raises the clear ValueError)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, what, f"is not a valid safetensors file: it has only {size} bytes.{looks_like(path)} "
                                   "Download or copy it again.")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise _bad(path, what, f"is not a valid safetensors file: its header claims {n} bytes but the file has "
                                   f"{size}.{looks_like(path)} It is truncated, damaged or another format: download "
                                   "or copy it again.")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _bad(path, what, f"is not a valid safetensors file: its header is not JSON ({err}). Download or "
                                   "copy it again.") from None
    if not isinstance(header, dict):
        raise _bad(path, what, "is not a valid safetensors file: its header is not a JSON object")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for d in shape:
                if int(d) < 0:
                    raise ValueError
                count *= int(d)
            ok = 0 <= int(start) <= int(end) and (dtype not in _ST_DTYPES or end - start == count * _ST_DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            raise _bad(path, what, f"is not a valid safetensors file: tensor {key!r} has a malformed entry in the "
                                   "header") from None
        if not ok:
            raise _bad(path, what, f"is not a valid safetensors file: tensor {key!r} ({dtype} {shape}) does not "
                                   "match its byte range; the file is damaged")
        if end > data:
            raise _bad(path, what, f"is truncated: tensor {key!r} ends at byte {end} of the data but the file holds "
                                   f"only {data} data bytes. Download or copy it again.")


def _check_torch_archive(path: str, what: str) -> None:
    """A .pt/.pth must be a complete PyTorch zip archive (or a legacy pickle, which torch.load still checks)."""
    kind = sniff_file(path)
    if kind == "empty":
        raise _bad(path, what, "is empty (0 bytes): an interrupted download or copy. Download or copy it again.")
    if kind in ("safetensors", "json", "html", "text"):
        raise _bad(path, what, f"is not a PyTorch checkpoint.{looks_like(path)} Pass a .safetensors file or a "
                               ".pth/.pt state dict of tensors.")
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise checkpoint_error(path, zipfile.BadZipFile(str(err)), what) from None
        if not any(name.endswith("data.pkl") for name in names):
            raise _bad(path, what, "is a zip archive but not a PyTorch checkpoint (no data.pkl inside); pass a "
                                   ".safetensors file or a torch.save()d state dict")


def check_weights_file(path: str | os.PathLike, what: str = "weights file") -> str:
    """Cheap structural check (headers only, no tensor is read): the file exists, and a ``.safetensors`` header or a
    ``.pt/.pth/.bin`` zip directory is complete. Returns the path; raises the clear ValueError otherwise."""
    path = check_input_file(path, what)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        _check_safetensors(path, what)
    elif suffix in TORCH_SUFFIXES:
        _check_torch_archive(path, what)
    else:
        raise _bad(path, what, f"has an unsupported extension {suffix or '(none)'!r}; use .safetensors, .pt or .pth")
    return path


def load_safetensors(path: str | os.PathLike, what: str = "weights file") -> dict:
    """All tensors of a safetensors file (CPU), after the structural check."""
    from safetensors.torch import load_file

    path = check_input_file(path, what)
    _check_safetensors(path, what)
    try:
        return load_file(path)
    except Exception as err:  # noqa: BLE001 -- any failure of a user's file becomes the one clear message
        raise checkpoint_error(path, err, what) from None


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", allow: tuple = ()) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; anything that fails (unsafe objects, damaged or
    truncated archives, other formats) becomes the one clear ValueError.

    ``allow``: extra classes the restricted unpickler may rebuild for this one call (an explicit allowlist through
    ``torch.serialization.safe_globals``, e.g. ``argparse.Namespace`` for the ``args`` object the MVDUSt3R releases
    pickle next to their weights). Rebuilding such a class only sets attributes; no code from the file runs."""
    import contextlib

    import torch

    path = check_input_file(path, what)
    _check_torch_archive(path, what)
    scope = torch.serialization.safe_globals(list(allow)) if allow else contextlib.nullcontext()
    try:
        with scope:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- see checkpoint_error; torch's own hint is never passed on
        raise checkpoint_error(path, err, what) from None


def load_weights(path: str | os.PathLike, what: str = "weights file") -> dict:
    """A state dict from ``.safetensors`` or ``.pt/.pth/.bin`` (a ``{"state_dict": ...}`` wrapper is unwrapped).
    Raises ValueError for other extensions or contents that are not a dict of tensors."""
    import torch

    text = os.fspath(path)
    suffix = os.path.splitext(text)[1].lower()
    if suffix == ".safetensors":
        return load_safetensors(text, what)
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{what} {text}: unsupported weights format {suffix or '(none)'!r} (use .safetensors, .pt or "
                         ".pth)")
    obj = load_torch_file(text, what)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(  # noqa: TRY004 (bad file contents, not a bad argument type)
            f"{what} {text}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
    if bad:
        raise ValueError(f"{what} {text}: expected a state dict of tensors, but {', '.join(map(repr, bad))} "
                         "are not tensors")
    return dict(obj)


def read_json_file(path: str | os.PathLike, what: str = "config") -> dict:
    """A JSON object from ``path`` (UTF-8); one clear ValueError for anything else."""
    path = check_input_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise checkpoint_error(path, err, what) from None
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 (bad file contents, not a bad argument type)
            f"{what} {path} must hold a JSON object ({{...}}), not a {type(data).__name__}; replace it "
                         "with the file written by vist3a")
    return data
