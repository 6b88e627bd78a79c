"""Crash-safe file replacement: write to a temporary file beside the target, then ``os.replace`` it into place.

A reader of ``path`` sees either the complete old file or the complete new one, never a half-written file; a failed
or interrupted write (any exception, including ``KeyboardInterrupt``) removes the temporary file and leaves an existing
``path`` byte-for-byte untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_path", "atomic_write"]

logger = logging.getLogger(__name__)


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc); else via os.umask."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def _final_mode(path: str) -> int:
    """Permissions the written file gets: those of the regular file it replaces, else a new file's (0o666 & ~umask)."""
    if os.path.isfile(path) and not os.path.islink(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~_current_umask()


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); best effort, silently skipped where unsupported (Windows)."""
    if sys.platform.startswith("win"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_destination(path: str | os.PathLike, what: str) -> str:
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    if not name:
        raise ValueError(f"{what}: {path!r} names a folder, not a file")
    if os.path.isdir(path) and not os.path.islink(path):
        raise ValueError(f"{what}: cannot write {path}: it is an existing folder")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what}: cannot write {path}: the folder {directory} does not exist (create it first)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Context manager yielding a temporary file path beside ``path`` for code that writes by file name
    (``safetensors.torch.save_file``, ``torch.save``, PIL): when the block completes, that file is fsync'ed and
    renamed onto ``path``; on any exception it is deleted and an existing ``path`` is left untouched.

    The temporary file ``.<name>.<random>.tmp`` already exists (empty) when the block starts; writers may overwrite it.
    A symbolic link at ``path`` is replaced by the new file, never followed, so nothing is written outside the folder
    of ``path``. The new file gets the permissions of the regular file it replaces, or ``0o666 & ~umask``.

    Raises:
        ValueError: ``path`` is an existing folder.
        FileNotFoundError: the destination folder does not exist.
    """
    path = _check_destination(path, "atomic_path")
    directory, name = os.path.split(path)
    final_mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, final_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        logger.debug("atomic write to %s failed; temporary file removed, destination untouched", path)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Context manager yielding an open file whose contents replace ``path`` only if the block completes.

    Usage::

        with atomic_write("scene.ply") as fh:
            fh.write(header)
            fh.write(body)

    Same guarantees as :func:`atomic_path` (temporary file in the same folder, fsync, atomic rename, cleanup on any
    exception including ``KeyboardInterrupt``, symlinks replaced rather than followed).

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (binary) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    Raises:
        ValueError: bad ``mode``, or ``path`` is an existing folder.
        FileNotFoundError: the destination folder does not exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    _check_destination(path, "atomic_write")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if mode == "wb" else {"encoding": encoding or "utf-8"})) as fh:
            yield fh
