"""One error path: the exceptions a user can cause, and the one place that turns low-level failures into messages.

Every failure a user can cause (a bad file, checkpoint, config or argument, a missing model, a full disk) ends as ONE
clear message that names the file or argument, says what is wrong and what to do. In the library that message is a
``ValueError`` (bad input), an ``OSError`` (files, missing models, no space) or a :class:`CheckpointMismatchError`;
the ``vist3a`` command prints it on one line (exit code 2, no traceback unless ``--debug``) and the ComfyUI nodes
raise ``ValueError("NodeName: ...")`` with it.

* :func:`checkpoint_error` maps what torch / safetensors / json / zipfile raise for a damaged, truncated, mislabelled
  or unsafe file to that message. It never passes on torch's hint to re-run ``torch.load`` with ``weights_only``
  turned off: a checkpoint that holds Python objects other than tensors is refused, full stop.
* :func:`write_error` maps an ``OSError`` met while writing (no space, read-only folder, ...) to a message that names
  the destination (never the hidden temporary file).
* :func:`user_message` says whether an exception is a user error (its message) or a bug (None).

This module imports nothing from the rest of the package (every layer may use it).
"""

from __future__ import annotations

import errno as _errno
import json
import os
import pickle
import re
import zipfile

__all__ = [
    "CheckpointMismatchError",
    "MissingModelsError",
    "checkpoint_error",
    "sniff_file",
    "user_message",
    "write_error",
]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model built from the config."""


class MissingModelsError(FileNotFoundError):
    """One or more models are neither local nor obtainable from the Hugging Face hub; ``missing`` lists them (the
    message names every one with its download command and the flag that takes a local path)."""

    def __init__(self, message: str, missing: list | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])

    def __str__(self) -> str:  # FileNotFoundError(msg) would print "msg" too; explicit for subclasses' sake
        return str(self.args[0]) if self.args else ""


# ============================================================================================ file content
def sniff_file(path: str | os.PathLike) -> str:
    """What the first bytes of a file look like: ``"empty"``, ``"zip"`` (a PyTorch checkpoint), ``"pickle"``,
    ``"safetensors"``, ``"html"``, ``"json"``, ``"text"``, ``"missing"`` or ``"unknown"``. Reads at most 64 bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return "missing"
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32):
        return "safetensors"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "json"
    if text[:5].lower() in (b"<!doc", b"<html"):
        return "html"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text"


_LOOKS = {
    "zip": "a PyTorch checkpoint (zip archive)",
    "pickle": "a raw Python pickle",
    "safetensors": "a safetensors file",
    "html": "a web page (a download that saved an error page instead of the file?)",
    "json": "a JSON text file",
    "text": "a text file",
}
_SUFFIX_FOR = {"zip": ".pth", "safetensors": ".safetensors"}


def looks_like(path: str | os.PathLike, suffix: str | None = None) -> str:
    """A sentence on what the file's content looks like when that differs from what its extension promises
    (empty, a web page, a checkpoint under the other extension, ...), or ``""``."""
    path = os.fspath(path)
    return _looks_like(path, (suffix or os.path.splitext(path)[1]).lower())


def _looks_like(path: str, suffix: str) -> str:
    kind = sniff_file(path)
    if kind == "empty":
        return " It is empty (0 bytes): an interrupted download or copy."
    expected = {".safetensors": "safetensors", ".pth": "zip", ".pt": "zip", ".bin": "zip", ".ckpt": "zip",
                ".json": "json"}.get(suffix)
    if kind in _LOOKS and kind != expected:
        rename = f" (name it *{_SUFFIX_FOR[kind]})" if kind in _SUFFIX_FOR and expected in _SUFFIX_FOR else ""
        return f" Its content looks like {_LOOKS[kind]}{rename}."
    return ""


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, with anything about ``weights_only`` dropped."""
    for line in str(err).splitlines():
        line = line.strip()
        if line and "weights_only" not in line and "weights-only" not in line.lower():
            return line[:300]
    return type(err).__name__


def checkpoint_error(path: str | os.PathLike, err: BaseException, what: str = "checkpoint") -> ValueError:
    """The one message for a checkpoint / weights / config file that cannot be read. ``what`` names the role of the
    file ("decoder checkpoint", "LoRA weights", ...). Never suggests turning ``weights_only`` off."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    looks = _looks_like(path, suffix)
    name = type(err).__name__
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and ("Weights only load failed" in text or "Unsupported global" in text
                                                    or "weights_only" in text):
        return ValueError(
            f"{what} {path} holds Python objects other than tensors, and vist3a never unpickles those (unpickling "
            "can run arbitrary code). Use the .safetensors version of the file, or re-save it where it was made as "
            "a plain dict of tensors (torch.save(model.state_dict(), path)).")
    if isinstance(err, (zipfile.BadZipFile,)) or (isinstance(err, RuntimeError) and (
            "PytorchStreamReader" in text or "zip archive" in text or "central directory" in text)):
        return ValueError(f"{what} {path} is a damaged or truncated PyTorch zip archive ({_first_line(err)}).{looks} "
                          "Download or copy the file again.")
    if isinstance(err, (pickle.UnpicklingError, EOFError)) or (isinstance(err, RuntimeError) and "pickle" in text):
        return ValueError(f"{what} {path} is not a PyTorch checkpoint vist3a can read ({_first_line(err)}).{looks} "
                          "Pass a .safetensors file or a .pth/.pt state dict of tensors; download or copy it again "
                          "if it was cut short.")
    if name == "SafetensorError" or "safetensors" in type(err).__module__:
        return ValueError(f"{what} {path} is not a valid safetensors file ({_first_line(err)}).{looks} It is "
                          "truncated, damaged or another format: download or copy it again.")
    if isinstance(err, json.JSONDecodeError):
        return ValueError(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}).{looks}"
                          " Fix the file or replace it with the one written by vist3a.")
    if isinstance(err, UnicodeDecodeError):
        return ValueError(f"{what} {path} is not a UTF-8 text file.{looks} Pass the right file.")
    if isinstance(err, MemoryError):
        return ValueError(f"{what} {path} announces more data than fits in memory; the file is corrupt or not a "
                          "checkpoint. Download or copy it again.")
    if isinstance(err, OSError) and err.errno is not None:
        return ValueError(f"{what} {path} cannot be read: {err.strerror or _first_line(err)}. "
                          f"{_OS_ADVICE.get(err.errno, 'Check the path and the file.')}")
    return ValueError(f"{what} {path} cannot be read ({name}: {_first_line(err)}).{looks} Pass a valid file.")


# ============================================================================================ writing
_NO_SPACE = {_errno.ENOSPC, getattr(_errno, "EDQUOT", _errno.ENOSPC)}
_NOT_WRITABLE = {_errno.EACCES, _errno.EPERM, _errno.EROFS}
_OS_ADVICE = {
    _errno.ENOENT: "Check the path.",
    _errno.EACCES: "Check its permissions.",
    _errno.EPERM: "Check its permissions.",
    _errno.EISDIR: "Pass a file, not a folder.",
    _errno.ENOTDIR: "A part of the path is a file, not a folder; check the path.",
    _errno.ENOSPC: "Free some space or use another disk.",
    _errno.EROFS: "The file system is read-only; use another folder.",
    _errno.ENAMETOOLONG: "Use a shorter name.",
}
_RUST_OS_CODE = re.compile(r"Os \{ code: (\d+)")


def _errno_of(err: BaseException) -> int | None:
    code = getattr(err, "errno", None)
    if isinstance(code, int):
        return code
    found = _RUST_OS_CODE.search(str(err))  # safetensors (Rust) reports IO errors as "IoError(Os { code: 28, ...})"
    return int(found.group(1)) if found else None


def write_error(path: str | os.PathLike, err: BaseException) -> OSError | None:
    """An OSError naming ``path`` (the destination, not the temporary file) for an IO failure met while writing it;
    None when ``err`` is not an IO failure (then the caller re-raises it as is)."""
    code = _errno_of(err)
    if not isinstance(err, OSError) and code is None:
        return None
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    keep = "nothing was written and an existing file of that name is unchanged"
    if code in _NO_SPACE:
        message = (f"cannot write {path}: no space left on the device of {folder} (or the disk quota is exceeded); "
                   f"{keep}. Free some space or write to another folder.")
    elif code in _NOT_WRITABLE:
        message = (f"cannot write {path}: the folder {folder} is not writable ({os.strerror(code)}); {keep}. Choose "
                   "a writable folder or fix its permissions.")
    elif code == _errno.EFBIG:
        message = (f"cannot write {path}: the file is too large for the file system of {folder}; {keep}. Write to "
                   "another disk.")
    elif code == _errno.ENAMETOOLONG:
        message = f"cannot write {path}: the file name is too long; {keep}. Use a shorter name."
    else:
        reason = os.strerror(code) if code else _first_line(err)
        if isinstance(err, OSError) and err.strerror and not code:
            reason = err.strerror
        message = f"cannot write {path}: {reason}; {keep}."
    mapped = OSError(message)
    mapped.errno = code
    return mapped


# ============================================================================================ the one path
def _os_message(err: OSError) -> str:
    text = str(err)
    if err.errno is None or err.filename is None:
        return text
    advice = _OS_ADVICE.get(err.errno, "")
    return f"{err.filename}: {err.strerror or text}" + (f". {advice}" if advice else "")


def user_message(err: BaseException) -> str | None:
    """The message to show for an exception a user can cause (bad input, files, missing models, no space), or None
    for anything else (a bug: show it with its traceback)."""
    if isinstance(err, (CheckpointMismatchError, MissingModelsError)):
        return str(err)
    if isinstance(err, OSError):
        return _os_message(err)
    if isinstance(err, ValueError):
        return str(err)
    return None
