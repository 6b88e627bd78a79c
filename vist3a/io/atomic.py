"""Crash-safe file replacement: write to a temporary file beside the target, then ``os.replace`` it into place.

A reader of ``path`` sees either the complete old file or the complete new one, never a half-written file; a failed
or interrupted write (any exception, including ``KeyboardInterrupt``) removes the temporary file and leaves an existing
``path`` byte-for-byte untouched. An IO failure (no space, read-only folder, ...) is reported as one ``OSError`` that
names ``path``, never the hidden temporary file (:func:`vist3a.errors.write_error`).

Temporary files are recognisable: ``.<name>.<host>-<pid>-<random>.vist3a.tmp`` (``host``: 8 hex digits of a hash of
the machine's name). A process killed outright (SIGKILL, power loss) cannot remove its own; the next write into the
same folder does (:func:`remove_stale_temp_files`): only regular files of exactly that pattern, owned by the current
user and older than :data:`STALE_AFTER_S`, and never one whose writer is still running on this machine (on Windows,
where that cannot be asked safely, only files a week old).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from ..errors import write_error

__all__ = ["STALE_AFTER_S", "TEMP_SUFFIX", "atomic_path", "atomic_write", "probe_writable", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".vist3a.tmp"
#: a temporary file of ours untouched for this long, whose writer is gone, is stale (a live writer keeps writing)
STALE_AFTER_S = 3600.0
#: ... and after this long it is stale even when a process of the same id runs (the id was reused)
_STALE_ALWAYS_S = 7 * 24 * 3600.0
_MAX_NAME_IN_TEMP = 100  # keeps ".<name>.<tag><random>.vist3a.tmp" under the usual 255-byte name limit
_TEMP_RE = re.compile(r"^\..*\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_prefix(name: str) -> str:
    return f".{name[:_MAX_NAME_IN_TEMP]}.{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or sys.platform.startswith("win"):
        return True  # Windows: os.kill(pid, 0) would send CTRL_C_EVENT; there only the 7-day age makes a file stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: treat as alive
    return True


def remove_stale_temp_files(directory: str | os.PathLike, now: float | None = None) -> list[str]:
    """Delete the temporary files that interrupted writes of ours left in ``directory`` (module docstring: our
    name pattern, a regular file owned by this user, untouched for :data:`STALE_AFTER_S` seconds, its writer no
    longer running on this machine). Never raises; returns the removed paths."""
    removed: list[str] = []
    now = time.time() if now is None else now
    host = _host_tag()
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                continue
            age = now - st.st_mtime
            if age < STALE_AFTER_S:
                continue
            if age < _STALE_ALWAYS_S and match["host"] == host and _pid_alive(int(match["pid"])):
                continue
            os.unlink(entry.path)
        except OSError as err:
            logger.debug("could not remove the stale temporary file %s (%s)", entry.path, err)
            continue
        removed.append(entry.path)
        logger.info("removed %s: a temporary file left by an interrupted write %.0f minutes ago", entry.path,
                    age / 60)
    return removed


_ALWAYS_WRITE_FAILURES = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS}


def _mapped_write_error(err: BaseException, path: str, tmp: str) -> OSError | None:
    """The destination-naming OSError for an IO failure of this write; None for anything else (e.g. an OSError of
    another file the caller read inside the block, or a ValueError), which is re-raised unchanged."""
    mapped = write_error(path, err)
    if mapped is None:
        return None
    filename = getattr(err, "filename", None)
    if mapped.errno in _ALWAYS_WRITE_FAILURES or filename in (None, tmp, path) or not isinstance(err, OSError):
        return mapped
    return None


def _mkstemp(directory: str, name: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(name), suffix=TEMP_SUFFIX)
    os.close(fd)
    return tmp


def probe_writable(directory: str | os.PathLike, target: str | os.PathLike | None = None) -> None:
    """Create and delete one temporary file in ``directory`` (as a write would); raise the mapped OSError (naming
    ``target`` or the folder) when that fails: read-only folder, no permission, no space."""
    directory = os.fspath(directory)
    target = os.fspath(target) if target is not None else os.path.join(directory, "<output>")
    try:
        tmp = _mkstemp(directory, os.path.basename(target))
    except OSError as err:
        raise (write_error(target, err) or err) from None
    with contextlib.suppress(OSError):
        os.unlink(tmp)


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

    The temporary file (``.<name>.<host>-<pid>-<random>.vist3a.tmp``) already exists (empty) when the block starts;
    writers may overwrite it. Stale temporary files of earlier, killed writes in the same folder are removed first.
    A symbolic link at ``path`` is replaced by the new file, never followed, so nothing is written outside the folder
    of ``path``. The new file gets the permissions of the regular file it replaces, or ``0o666 & ~umask``.

    Raises:
        ValueError: ``path`` is an existing folder.
        FileNotFoundError: the destination folder does not exist.
        OSError: an IO failure while writing (no space, read-only folder, ...), naming ``path``.
    """
    path = _check_destination(path, "atomic_path")
    directory, name = os.path.split(path)
    remove_stale_temp_files(directory)
    final_mode = _final_mode(path)
    try:
        tmp = _mkstemp(directory, name)
    except OSError as err:
        raise (write_error(path, err) or err) from None
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, final_mode)
            os.replace(tmp, path)
        except Exception as err:
            mapped = _mapped_write_error(err, path, tmp)
            if mapped is None:
                raise
            raise mapped from None
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
