"""The nodes' one error path and their pre-flight checks (``VALIDATE_INPUTS``).

* Every node's FUNCTION is wrapped (:func:`wrap_node`, applied once in ``nodes/__init__``): a failure a user can
  cause (:func:`vist3a.errors.user_message`: a bad file, checkpoint, config, input, a missing model, no space) is
  re-raised as ``ValueError("<NodeName>: <message>")``; ComfyUI's interruption and real bugs pass through unchanged.
* ``VALIDATE_INPUTS`` runs when a prompt is queued, before ANY node of the graph executes, so a bad number or a
  missing model fails before the sampler spends minutes. ComfyUI skips its own min/max and list checks for the
  inputs ``VALIDATE_INPUTS`` names, so :func:`validation` re-checks those too; an input fed by a link is not known
  yet (None) and is checked when the node runs (the node's function calls the same check).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("vist3a.nodes")

__all__ = ["node_error", "user_errors", "validation", "wrap_node"]


def node_error(node: str, err: BaseException, aliases: tuple[str, ...] = ()) -> ValueError | None:
    """``ValueError("<node>: <message>")`` for a user error, None for anything else (interruption, bugs). A message
    that already starts with the node's name (or one of ``aliases``, e.g. its class name) is kept as it is."""
    from vist3a.errors import user_message

    message = user_message(err)
    if message is None:
        return None
    if any(message.startswith(f"{name}:") for name in (node, *aliases)):
        return err if isinstance(err, ValueError) and str(err) == message else ValueError(message)
    return ValueError(f"{node}: {message}")


@contextlib.contextmanager
def user_errors(node: str, aliases: tuple[str, ...] = ()):
    """Re-raise user errors inside the block as ``ValueError("<node>: ...")``."""
    try:
        yield
    except Exception as err:  # mapped, or re-raised unchanged
        mapped = node_error(node, err, aliases)
        if mapped is None or mapped is err:
            raise
        raise mapped from err


def wrap_node(cls: type, node: str) -> type:
    """Wrap ``cls``'s FUNCTION in :func:`user_errors` (once)."""
    name = cls.FUNCTION
    fn = getattr(cls, name)
    if getattr(fn, "_vist3a_errors", False):
        return cls

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with user_errors(node, (cls.__name__,)):
            return fn(self, *args, **kwargs)

    run._vist3a_errors = True
    setattr(cls, name, run)
    return cls


def validation(node: str, check: Callable[[], object]) -> bool | str:
    """Run ``check``; True when it passes, else the message ComfyUI shows (``"<node>: ..."``)."""
    try:
        check()
    except Exception as err:  # a validator must answer, never raise
        mapped = node_error(node, err)
        if mapped is None:
            logger.exception("%s: input validation failed unexpectedly", node)
            return f"{node}: could not check the inputs ({type(err).__name__}: {err})"
        return str(mapped)
    return True


def check_choice(name: str, value, choices) -> None:
    """ComfyUI's own list check (skipped by ComfyUI for inputs named in VALIDATE_INPUTS)."""
    if value is not None and value not in choices:
        listed = ", ".join(map(str, list(choices)[:12])) + (" ..." if len(choices) > 12 else "")
        raise ValueError(f"{name} {value!r} is not one of the choices ({listed}); pick one from the list "
                         "(refresh after adding files to models/vist3a/)")


def check_video(frames, width, height) -> None:
    """frames 4k+1 (5..257), width / height multiples of 16 (16..2048); None = fed by a link, checked later."""
    from vist3a.checks import check_integer

    if frames is not None:
        frames = check_integer(frames, "frames", lo=5, hi=257, hint="4k+1: 5, 9, 13 (published), 17, ...")
        if frames % 4 != 1:
            raise ValueError(f"frames must be 4k+1 (5, 9, 13, 17, ...; published: 13), got {frames}")
    for name, v in (("width", width), ("height", height)):
        if v is not None:
            v = check_integer(v, name, lo=16, hi=2048, hint="a multiple of 16; published: 512")
            if v % 16:
                raise ValueError(f"width and height must be multiples of 16 (published: 512x512), got {name} {v}")


def check_output_folder(temp: bool = False) -> None:
    """ComfyUI's output (or temp) folder accepts new files: probed as a save would write (the nearest existing
    folder when it is still to be created), so a save node cannot fail after the whole graph ran."""
    import folder_paths

    from vist3a.io.atomic import probe_writable

    base = Path(folder_paths.get_temp_directory() if temp else folder_paths.get_output_directory())
    probe = base
    while not probe.is_dir():
        if probe.exists() or probe.parent == probe:
            raise ValueError(f"the {'temp' if temp else 'output'} folder {base} cannot be created ({probe} is not a "
                             "folder); start ComfyUI with a usable --output-directory")
        probe = probe.parent
    try:
        probe_writable(probe)
    except OSError as err:
        kind = "temp" if temp else "output"
        reason = "no space left on its device" if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else \
            f"it is not writable ({os.strerror(err.errno) if err.errno else err})"
        raise OSError(f"ComfyUI's {kind} folder {probe} accepts no new files: {reason}; nothing was run. Fix its "
                      f"permissions or free space, or start ComfyUI with another --{kind}-directory") from None


def hub_files_missing(repo: str, files: list[str], local_dir: Path) -> str | None:
    """None when ``files`` (paths inside ``repo``) are in ``local_dir`` or can be downloaded now; else the reason."""
    from vist3a.checks import _on_hub, hub_offline

    missing = [f for f in files if not (local_dir / f).is_file()]
    if not missing:
        return None
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    found, reason = _on_hub(repo, missing[0])
    return None if found else reason


def download_message(items: list[tuple[str, str, str, Path, str]]) -> str:
    """One message for every missing download: (what, repo, hf-download arguments, local folder, reason)."""
    head = (f"{len(items)} model{'s are' if len(items) > 1 else ' is'} not available, so nothing was loaded; "
            "download them where there is network access:")
    lines = [head]
    for what, repo, args, folder, reason in items:
        command = f"hf download {repo}{' ' + args if args else ''} --local-dir {folder}"
        lines.append(f"  {what} ({reason}): {command}")
    lines.append("then queue the workflow again (or pick a model that is already in models/vist3a/).")
    return "\n".join(lines)
