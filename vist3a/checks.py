"""Everything a command checks before any model loads, in one place.

A run that will fail must fail in the first second, naming the file or argument, what is wrong and what to do --
never after the models loaded or the generation ran. The ``vist3a`` command, the pipelines' ``from_pretrained`` and
the ComfyUI nodes (their ``VALIDATE_INPUTS``) all call these:

* numbers: :func:`check_number` (finite, in range), :func:`check_integer`, :func:`check_seed` (0 .. 2**64 - 1);
* devices: :func:`check_device` (a valid torch device string that exists on this machine);
* files: :func:`check_input_file`, :func:`check_output_file` (folder exists and is writable: probed),
  :func:`check_free_space` (from :mod:`vist3a.io.paths`), :func:`check_weights_file` (checkpoint headers, from
  :mod:`vist3a.io.weights`);
* models: :func:`check_model_sources` checks every :class:`ModelSource` a run needs (local files present and sound,
  hub files cached -- or, online, present on the hub) and reports ALL missing ones in ONE
  :class:`~vist3a.errors.MissingModelsError`, each with its ``hf download`` command and the flag that takes a local
  path.

Each check raises ``ValueError`` (bad argument), ``FileNotFoundError`` / ``OSError`` (files, missing models) with
the message a user sees; see :mod:`vist3a.errors` for the one error path.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingModelsError
from .io.paths import check_free_space, check_input_file, check_output_file
from .io.weights import check_weights_file, read_json_file

__all__ = [
    "SEED_MAX",
    "ModelSource",
    "check_device",
    "check_free_space",
    "check_input_file",
    "check_integer",
    "check_model_sources",
    "check_number",
    "check_output_file",
    "check_seed",
    "check_weights_file",
    "hub_offline",
]

logger = logging.getLogger(__name__)

SEED_MAX = 2**64 - 1


# ============================================================================================ numbers
def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def check_number(value, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, hint: str = "") -> float:
    """``value`` as a float when it is a finite real number within the range; else ValueError
    ``"<name> <value>: must be a finite number <range>[; hint]"``. ``name`` is the flag or keyword the user typed."""
    try:
        if isinstance(value, (bool, str, bytes)) or value is None:
            raise TypeError
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} {value!r}: must be a number{_hint(hint)}") from None
    bad = not math.isfinite(x)
    bad = bad or (lo is not None and (x <= lo if lo_open else x < lo))
    bad = bad or (hi is not None and (x >= hi if hi_open else x > hi))
    if bad:
        raise ValueError(f"{name} {value!r}: must be a finite number {_range_text(lo, hi, lo_open, hi_open)}"
                         f"{_hint(hint)}")
    return x


def check_integer(value, name: str, *, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """``value`` as an int when it is a whole number within [lo, hi]; else ValueError naming ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok:
        raise ValueError(f"{name} {value!r}: must be a whole number{_hint(hint)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = (f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None
               else f"<= {hi}")
        raise ValueError(f"{name} {value}: must be {rng}{_hint(hint)}")
    return int(value)


def check_seed(value, name: str = "seed") -> int | None:
    """None (draw one) or a whole number in 0 .. 2**64 - 1 (what torch generators take)."""
    if value is None:
        return None
    return check_integer(value, name, lo=0, hi=SEED_MAX, hint="any whole number from 0 to 2**64 - 1")


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


# ============================================================================================ devices
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(text: str | None, name: str = "--device") -> str | None:
    """A torch device string that is valid AND available here (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``);
    None passes through (the caller picks its default). ValueError naming the fix otherwise."""
    if text is None:
        return None
    import torch

    raw = str(text).strip()
    try:
        device = torch.device(raw)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} {text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type not in _DEVICE_TYPES:
        raise ValueError(f"{name} {text!r}: device type {device.type!r} is not supported here; use cpu, cuda, cuda:N "
                         "or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {text!r}: CUDA is not available (torch {torch.__version__}, built "
                             f"{'without CUDA' if torch.version.cuda is None else 'for CUDA ' + torch.version.cuda}, "
                             "or no GPU / driver found); use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name} {text!r}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name} {text!r}: Apple MPS is not available here; use --device cpu")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError(f"{name} {text!r}: no Intel XPU is available here; use --device cpu")
    return raw


# ============================================================================================ models
def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ModelSource:
    """One model a run needs.

    Args:
        what: what it is, for the message ("Wan 2.1 pipeline").
        flag: the option that takes a local path instead ("--wan").
        source: what the user (or the default) named: a hub id, ``repo/subfolder`` or a local path.
        repo: the hub repository when ``source`` is not local (None: local only).
        files: files needed, relative to the repo (or to the folder when local); ``a|b`` means either.
        local: the local path when ``source`` is one (a folder or a file).
        fetch: what ``hf download`` needs besides the repo id (file names or ``--include "sub/*"``).
        use: how to pass the downloaded copy, ``{dir}`` standing for the download folder.
        weights: local weights files to check structurally (headers) before any model loads.
        configs: local JSON files that must parse.
        validate: a further check of a local source (e.g. reading a decoder config); its ValueError / OSError
            message is reported.
    """

    what: str
    flag: str
    source: str
    repo: str | None = None
    files: tuple[str, ...] = ()
    local: Path | None = None
    fetch: str = ""
    use: str = "{dir}"
    weights: tuple[Path, ...] = field(default_factory=tuple)
    configs: tuple[Path, ...] = field(default_factory=tuple)
    validate: Callable[[], object] | None = None

    def download_command(self) -> str:
        return f"hf download {self.repo}{' ' + self.fetch if self.fetch else ''} --local-dir <folder>"


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001 -- an invalid repo id or a damaged cache: not cached
        return False
    return isinstance(found, str) and os.path.isfile(found)


def _on_hub(repo: str, filename: str) -> tuple[bool | None, str]:
    """(exists, reason) asking the hub once (online only); exists is None when the hub could not be asked."""
    import huggingface_hub

    try:
        found = bool(huggingface_hub.file_exists(repo, filename))
    except Exception as err:  # noqa: BLE001 -- no network, gated repository, hub error
        first = (str(err).splitlines() or [""])[0][:120]
        return None, f"the Hugging Face hub could not be asked ({type(err).__name__}: {first})"
    return found, "" if found else "not on the Hugging Face hub (wrong id or file name?)"


def _missing_hub_files(src: ModelSource) -> tuple[list[str], str]:
    """The needed files of a hub source that are not cached, and why they cannot be fetched: offline, or (online)
    the hub does not have the first of them / cannot be reached (one request per source)."""
    missing = [entry for entry in src.files if not any(_cached(src.repo, f) for f in entry.split("|"))]
    if not missing:
        return [], ""
    if hub_offline():
        return missing, "HF_HUB_OFFLINE is set"
    reason = ""
    for f in missing[0].split("|"):
        found, reason = _on_hub(src.repo, f)
        if found:
            return [], ""  # online and on the hub: it will be downloaded
        if found is None:
            break  # unreachable: asking about the alternatives would only wait again
    return missing, reason


def _local_problem(src: ModelSource) -> str | None:
    """A problem with a local source (missing files, damaged headers), as a sentence, or None."""
    path = src.local
    assert path is not None
    if not path.exists():
        return f"{path} does not exist"
    for entry in src.files:
        options = [path / f if path.is_dir() else path.parent / f for f in entry.split("|")]
        if not any(p.is_file() for p in options):
            return f"{path} lacks {entry.replace('|', ' or ')}"
    for f in src.configs:
        if f.is_file():
            try:
                read_json_file(f, "config")
            except ValueError as err:
                return str(err)
    for f in src.weights:
        if f.exists():
            try:
                check_weights_file(f, src.what)
            except (ValueError, OSError) as err:
                return str(err)
    if src.validate is not None:
        from .errors import CheckpointMismatchError

        try:
            src.validate()
        except (ValueError, OSError, CheckpointMismatchError) as err:
            return str(err)
    return None


def _is_absent(src: ModelSource) -> bool:
    """A local source that does not exist or lacks one of its files (rather than holding a damaged one)."""
    path = src.local
    if not path.exists():
        return True
    return any(not any((path / f if path.is_dir() else path.parent / f).is_file() for f in entry.split("|"))
               for entry in src.files)


def check_model_sources(sources: Sequence[ModelSource | None], caller: str = "") -> None:
    """Check every source; raise ONE :class:`MissingModelsError` listing every missing or broken model with what to
    do (the ``hf download`` command and the flag taking a local path), or ``ValueError`` for a broken local file
    when that is the only problem. Nothing is downloaded or loaded here."""
    missing, broken, absent = [], [], []
    for src in sources:
        if src is None:
            continue
        if src.local is not None:
            problem = _local_problem(src)
            if problem:
                (absent if _is_absent(src) else broken).append((src, problem))
            continue
        gone, reason = _missing_hub_files(src)
        if gone:
            missing.append((src, gone, reason))
    if not missing and not broken and not absent:
        return
    head = f"{caller}: " if caller else ""
    if (broken or absent) and not missing:
        lines = [f"{src.flag} {src.source!r} ({src.what}): {problem}" for src, problem in absent + broken]
        text = lines[0] if len(lines) == 1 else "these models cannot be used:\n" + "\n".join("  * " + ln
                                                                                          for ln in lines)
        if broken:
            raise ValueError(head + text)
        raise MissingModelsError(head + text, [src for src, _ in absent])
    broken = absent + broken
    n = len(missing) + len(broken)
    lines = [f"{head}{n} model{'s are' if n > 1 else ' is'} not available, so nothing was loaded or computed:"]
    for src, gone, reason in missing:
        names = ", ".join(g.replace("|", " or ") for g in gone)
        if len(gone) == len(src.files):
            what_is = "not in the Hugging Face cache" if len(gone) > 2 else f"{names} not in the Hugging Face cache"
        else:
            what_is = f"the cached copy lacks {names}"
        lines.append(f"  * {src.what} {src.source} ({src.flag}): {what_is}; {reason}.")
        lines.append(f"      {src.download_command()}")
        lines.append(f"      then pass {src.flag} {src.use.format(dir='<folder>')}")
    for src, problem in broken:
        lines.append(f"  * {src.what} {src.source!r} ({src.flag}): {problem}")
    lines.append("Run the hf download commands where there is network access (`pip install -U huggingface_hub` "
                 "provides `hf`). Without --local-dir they fill the Hugging Face cache instead, and this command "
                 "then works unchanged.")
    raise MissingModelsError("\n".join(lines), [src for src, *_ in missing] + [src for src, _ in broken])


def local_or_hub(text: str | os.PathLike | None) -> tuple[Path | None, bool]:
    """(local path, looks like a hub id): a path that exists locally is local; ``owner/name[/...]`` without a
    leading ``.``, ``/`` or ``~`` that does not exist locally is a hub id."""
    if text is None:
        return None, False
    raw = os.fspath(text)
    path = Path(raw).expanduser()
    if path.exists():
        return path, False
    hubby = (not raw.startswith((".", "/", "~", "\\")) and 1 <= raw.count("/") and ":" not in raw
             and all(part.strip() for part in raw.split("/")))
    return (None, True) if hubby else (path, False)


def iter_weights(folder: Path, names: Iterable[str]) -> tuple[Path, ...]:
    """The existing files of ``names`` inside ``folder``."""
    return tuple(folder / n for n in names if (folder / n).is_file())
