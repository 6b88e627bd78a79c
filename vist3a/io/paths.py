"""Checks on the files a command reads and writes, run before any work starts (re-exported by :mod:`vist3a.checks`).

* :func:`check_input_file`: the path exists and is a readable regular file (not a folder, FIFO or device, which
  would block or fail half-way), else one ``ValueError`` / ``FileNotFoundError`` naming it and the fix.
* :func:`check_output_file`: right extension, existing folder, not a folder itself, and the folder really is
  writable (probed by creating and deleting a temporary file exactly as the atomic write will).
* :func:`check_free_space`: the folders have room for the estimated output sizes.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from .atomic import probe_writable

__all__ = ["check_free_space", "check_input_file", "check_output_file"]


def _label(what: str, path: str) -> str:
    return f"{what} {path!r}" if what else repr(path)


def check_input_file(path: str | os.PathLike, what: str = "") -> str:
    """Return ``path`` (expanded) when it names a readable regular file; raise naming ``what`` (a flag or a role,
    e.g. ``"--decoder"``, ``"PLY file"``) and the problem otherwise."""
    text = os.path.expanduser(os.fspath(path))
    label = _label(what, os.fspath(path))
    try:
        st = os.stat(text)
    except FileNotFoundError:
        if os.path.islink(text):
            raise FileNotFoundError(f"{label} is a broken symbolic link (its target {os.readlink(text)!r} does not "
                                    "exist); pass the file itself") from None
        raise FileNotFoundError(f"{label} does not exist; check the path") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{label} does not exist (a part of the path is a file, not a folder)") from None
    except OSError as err:
        raise OSError(f"{label} cannot be opened: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{label} is a folder; pass a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{label} is not a regular file (a FIFO, socket or device); pass a file")
    if not os.access(text, os.R_OK):
        raise PermissionError(f"{label} is not readable (permission denied); check its permissions")
    return text


def check_output_file(path: str | os.PathLike, what: str = "", suffixes: Iterable[str] | None = None,
                      probe: bool = True) -> Path:
    """Return ``path`` (expanded) when a file can be written there atomically: its extension is one of
    ``suffixes`` (when given), its folder exists and (``probe``) accepts a new file, and it is not a folder or a
    non-regular file. Raises ``ValueError`` / ``FileNotFoundError`` / ``OSError`` naming ``what`` and the fix."""
    raw = os.fspath(path)
    label = _label(what, raw)
    out = Path(raw).expanduser()
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if out.suffix.lower() not in suffixes:
            raise ValueError(f"{label} must end in {' or '.join(suffixes)}")
    if not out.name or raw.endswith(("/", os.sep)):
        raise ValueError(f"{label} names a folder; give a file name")
    if out.is_dir():
        raise ValueError(f"{label} is a folder; give a file name")
    if out.exists() and not out.is_symlink() and not out.is_file():
        raise ValueError(f"{label} exists and is not a regular file (a FIFO, socket or device); choose another name")
    parent = out.absolute().parent
    if not parent.is_dir():
        what_is = "is a file, not a folder" if parent.exists() else "does not exist"
        raise FileNotFoundError(f"{label}: the folder {parent} {what_is}; create it first or choose another folder")
    if probe:
        try:
            probe_writable(parent, out.absolute())
        except OSError as err:
            raise OSError(f"{what + ': ' if what else ''}{err}") from None
    return out


def check_free_space(needs: Mapping[str | os.PathLike, int], margin_bytes: int = 16 << 20) -> None:
    """Raise ``OSError`` when the folders of the given output files lack room for the estimated sizes (bytes; files
    on one file system add up), plus ``margin_bytes`` per file system."""
    per_device: dict[int, list] = {}
    for path, size in needs.items():
        folder = Path(path).expanduser().absolute().parent
        try:
            dev = os.stat(folder).st_dev
        except OSError:
            continue  # check_output_file reports a missing folder
        per_device.setdefault(dev, [folder, 0, []])
        per_device[dev][1] += int(size)
        per_device[dev][2].append(os.fspath(path))
    for folder, need, paths in per_device.values():
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < need + margin_bytes:
            raise OSError(f"not enough free space for {', '.join(paths)}: the output needs about "
                          f"{_mb(need + margin_bytes)} and {folder} has {_mb(free)} free. Free some space or write "
                          "to another disk; nothing was computed or written.")


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"
