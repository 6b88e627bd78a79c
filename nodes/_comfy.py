"""Lazy access to the few ComfyUI modules the nodes use (imported inside functions: CI has no ComfyUI)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger("vist3a.nodes")

MODEL_FOLDER = "vist3a"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_interrupt() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(max(1, int(total)))


def model_folder() -> Path:
    """``models/vist3a/`` registered (once, lazily) with ``folder_paths``; created when missing."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER not in getattr(folder_paths, "folder_names_and_paths", {}):
        folder_paths.add_model_folder_path(MODEL_FOLDER, default, is_default=True)
    paths = folder_paths.get_folder_paths(MODEL_FOLDER) or [default]
    folder = Path(paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_decoders() -> list[str]:
    """Decoder files / folders under every registered ``vist3a`` model folder (relative names)."""
    import folder_paths

    try:
        model_folder()
        roots = folder_paths.get_folder_paths(MODEL_FOLDER)
    except Exception:
        logger.exception("VIST3A: could not list models/vist3a")
        return []
    found: set[str] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and path.suffix in (".pth", ".pt"):
                found.add(rel)
            elif path.is_file() and path.name == "decoder_config.json" and path.parent != root:
                found.add(path.parent.relative_to(root).as_posix())
    return sorted(found)


def resolve_local(name: str) -> Path | None:
    """A name from :func:`local_decoders` -> its path inside a registered folder (None when absent)."""
    import folder_paths

    model_folder()
    for root in map(Path, folder_paths.get_folder_paths(MODEL_FOLDER)):
        candidate = (root / name).resolve()
        if candidate.exists() and candidate.is_relative_to(root.resolve()):
            return candidate
    return None


def sanitize_prefix(prefix: str, default: str = "vist3a/scene") -> str:
    """A relative, harmless prefix: no drive / root, no ``..`` or ``.`` parts, only ``[A-Za-z0-9._-]`` per part."""
    parts = re.split(r"[\\/]+", str(prefix or ""))
    clean = []
    for part in parts:
        part = _SAFE.sub("_", part).strip("._")
        if part:
            clean.append(part)
    return "/".join(clean) or default


def save_paths(node: str, prefix: str, extensions: list[str], temp: bool = False) -> tuple[list[Path], str, str]:
    """Free paths ``<output>/<subfolder>/<name>_<counter>_<ext>`` for one save, all inside ComfyUI's output (or temp)
    folder. Returns (paths, subfolder, folder type). Raises ValueError when anything would leave the folder."""
    import folder_paths

    base = folder_paths.get_temp_directory() if temp else folder_paths.get_output_directory()
    kind = "temp" if temp else "output"
    root = Path(base).resolve()
    safe = sanitize_prefix(prefix)
    full_folder, filename, counter, _subfolder, _ = folder_paths.get_save_image_path(safe, str(root))
    folder = Path(full_folder).resolve()
    if not folder.is_relative_to(root):
        raise ValueError(f"{node}: filename_prefix {prefix!r} points outside the {kind} folder; use a relative prefix "
                         "such as 'vist3a/scene'")
    folder.mkdir(parents=True, exist_ok=True)
    filename = sanitize_prefix(filename, "scene").replace("/", "_")
    counter = max(1, int(counter))
    while True:
        paths = [(folder / f"{filename}_{counter:05}_{ext}").resolve() for ext in extensions]
        if not any(p.exists() for p in paths):
            break
        counter += 1
    for p in paths:
        if not p.is_relative_to(root) or p.parent != folder:
            raise ValueError(f"{node}: refusing to write {p} outside the {kind} folder {root}")
    sub = folder.relative_to(root).as_posix()
    return paths, "" if sub == "." else sub, kind
