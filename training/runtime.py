"""Shared runtime for the training scripts: distributed setup (torchrun / plain process), RNG capture, the cosine
learning-rate schedule and crash-safe, pickle-free training checkpoints.

Checkpoint layout (``save_training_state(out_dir, step=123, ...)``)::

    out_dir/
      step_000123/
        state.safetensors   # trainable tensors ("tensor/<name>"), optimizer tensor state ("optim/..."),
                            # RNG tensors ("rng/...")
        state.json          # step, optimizer param_groups + non-tensor state, scheduler state, RNG (non-tensor
                            # parts), extra; tensors are referenced as {"__tensor__": "<safetensors key>"}
      latest                # text file: "step_000123" (replaced atomically after the folder is complete)

A checkpoint folder is first written under a hidden temporary name and renamed into place only when both files are
complete, so an interrupted save never leaves a ``step_*`` folder that looks valid. Nothing is pickled to disk:
tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vist3a.io.atomic import atomic_path, atomic_write

__all__ = [
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "DistContext",
    "StopRequest",
    "TrainingState",
    "all_reduce_mean",
    "broadcast_object",
    "capture_rng_state",
    "cleanup_distributed",
    "cosine_with_warmup",
    "gather_objects",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "rank_and_world",
    "restore_rng_state",
    "run_cli",
    "save_training_state",
]

logger = logging.getLogger("vist3a.training.runtime")

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LATEST = "latest"
FORMAT = "vist3a.training_state"
_STEP_RE = re.compile(r"^step_(\d+)$")
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # exit codes of a run stopped by SIGINT / SIGTERM (after its checkpoint)


# ============================================================================================ distributed
@dataclass
class DistContext:
    """Where this process runs: ``rank`` / ``world_size`` / ``local_rank`` (0 / 1 / 0 without torchrun), its torch
    ``device`` and the process-group ``backend`` (``"gloo"``, ``"nccl"`` or None when not distributed)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that logs, shows progress and writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when none is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | None = None) -> DistContext:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE`` > 1), else run alone.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default ``cuda:<LOCAL_RANK>`` when CUDA is available, else
            CPU. A bare ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``.

    The backend is NCCL for CUDA devices and gloo for CPU; on CUDA the current device is set. An already initialised
    group is reused.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
        torch.cuda.set_device(dev)
    backend = None
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
    elif world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    rank, world = rank_and_world()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank if world > 1 else 0, device=dev,
                       backend=backend)


def cleanup_distributed() -> None:
    """Destroy the default process group if one is initialised (safe to call always)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (in-memory pickling by torch.distributed; nothing touches disk)."""
    if ctx.world_size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank, on every rank (``[obj]`` when not distributed)."""
    if ctx.world_size <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor; ``t`` unchanged). Identity (a detached clone) on one process."""
    out = t.detach().clone()
    if ctx.world_size <= 1:
        return out
    import torch.distributed as dist

    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


# ============================================================================================ RNG
def capture_rng_state() -> dict:
    """This process's RNG states: ``python`` (random.getstate()), ``numpy`` (if importable), ``torch`` (CPU ByteTensor)
    and ``cuda`` (list of ByteTensors, one per device, when CUDA is available)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a dependency of torch wheels in practice
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` returned (also after a JSON/safetensors round trip, where tuples may
    have become lists and numpy arrays tensors)."""
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("saved CUDA RNG states for %d devices, %d visible: CUDA RNG not restored", len(cuda),
                           torch.cuda.device_count())


# ============================================================================================ schedule
def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base lr over ``warmup_steps``, then a cosine decay to ``min_lr_ratio * lr`` at
    ``total_steps`` (held there afterwards). Call ``scheduler.step()`` once per optimizer step."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"cosine_with_warmup: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, "
                         f"{total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"cosine_with_warmup: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineWarmup(warmup_steps, total_steps, min_lr_ratio))


@dataclass(frozen=True)
class _CosineWarmup:
    """The lr multiplier of :func:`cosine_with_warmup` (a plain callable object, so nothing needs pickling)."""

    warmup: int
    total: int
    floor: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


# ============================================================================================ (de)serialisation
def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors / numpy arrays move to ``tensors`` under ``key``-derived names."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {"__ndarray__": key}
        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{key}/k{i}", tensors), _encode(v, f"{key}/{k}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a training checkpoint ({key}); convert it to "
                    "tensors / JSON types first")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


# ============================================================================================ checkpoints
@dataclass
class TrainingState:
    """What :func:`load_training_state` returns: the ``step`` saved, the trainable ``tensors`` (name -> CPU tensor),
    the ``rng`` object given to :func:`save_training_state` (or None), the ``extra`` dict and the folder read."""

    step: int
    tensors: dict[str, torch.Tensor]
    rng: Any = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None


def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _is_complete(ckpt: Path) -> bool:
    try:
        doc = json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return doc.get("format") == FORMAT and (ckpt / STATE_TENSORS).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete ``step_*`` checkpoint folders in ``output_dir``, oldest first (incomplete / corrupt ones skipped)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir``: the one named by the ``latest`` file if it is
    complete, else (pointer missing or naming a broken folder, logged) the highest complete ``step_*``; None if none."""
    root = Path(output_dir)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        cand = root / name
        if _STEP_RE.match(name) and cand.is_dir() and _is_complete(cand):
            newer = [p for p in list_checkpoints(root) if int(_STEP_RE.match(p.name).group(1)) >
                     int(_STEP_RE.match(name).group(1))]
            if not newer:
                return cand
        else:
            logger.warning("%s names %r, which is not a complete checkpoint: using the newest complete one",
                           pointer, name)
    found = list_checkpoints(root)
    return found[-1] if found else None


def _optimizer_parts(optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    sd = optimizer.state_dict()
    return {"state": _encode(sd["state"], "optim/state", tensors),
            "param_groups": _encode(sd["param_groups"], "optim/param_groups", tensors)}


def save_training_state(folder: str | os.PathLike, *, step: int, tensors: dict[str, torch.Tensor], optimizer=None,
                        scheduler=None, rng: Any = None, extra: dict | None = None,
                        keep_last: int | None = None) -> Path:
    """Write ``folder/step_<step:06d>/`` (state.safetensors + state.json) atomically, point ``folder/latest`` at it
    and delete all but the newest ``keep_last`` checkpoints (None or 0: keep all). Call on ONE rank (rank 0).

    Args:
        folder: the checkpoint root (created if missing).
        step: optimizer steps done.
        tensors: trainable tensors, name -> tensor (any device; stored as CPU copies).
        optimizer / scheduler: objects with ``state_dict()``; tensor state to safetensors, the rest to JSON.
        rng: anything made of dicts, lists, tuples, JSON scalars, tensors and numpy arrays (e.g.
            :func:`capture_rng_state` of every rank as a list indexed by rank).
        extra: JSON-able dict (plus tensors), e.g. the data position or the CLI config.

    Returns:
        the checkpoint folder.
    """
    from safetensors.torch import save_file

    if step < 0:
        raise ValueError(f"save_training_state: step must be >= 0, got {step}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    blob: dict[str, torch.Tensor] = {}
    doc: dict[str, Any] = {"format": FORMAT, "version": 1, "step": int(step),
                           "tensors": sorted(tensors)}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_training_state: tensors[{name!r}] is a {type(t).__name__}, not a tensor")
        blob[f"tensor/{name}"] = t.detach().cpu().clone().contiguous()
    doc["optimizer"] = _optimizer_parts(optimizer, blob) if optimizer is not None else None
    doc["scheduler"] = _encode(scheduler.state_dict(), "sched", blob) if scheduler is not None else None
    doc["rng"] = _encode(rng, "rng", blob)
    doc["extra"] = _encode(dict(extra or {}), "extra", blob)
    final = root / _step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        with atomic_path(tmp / STATE_TENSORS) as path:
            save_file(blob, path, metadata={"format": FORMAT, "step": str(step)})
        with atomic_write(tmp / STATE_JSON, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one): replace it
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_write(root / LATEST, "w") as fh:
        fh.write(final.name + "\n")
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
                logger.debug("removed old checkpoint %s", old)
    return final


def load_training_state(folder: str | os.PathLike, *, optimizer=None, scheduler=None) -> TrainingState:
    """Read a checkpoint folder (``step_*``) or, given an output folder, its :func:`latest_checkpoint`; load the
    optimizer / scheduler state into the objects passed (they must be built like the saved ones).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a corrupt / incomplete checkpoint, or an optimizer that does not match the saved one.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    if not (path / STATE_JSON).exists() and not _STEP_RE.match(path.name):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no training checkpoint (step_*/{STATE_JSON}) in {path}")
        path = found
    try:
        doc = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is not a complete training checkpoint: {STATE_JSON} is missing (delete the folder "
                         "or resume from an older step_* folder)") from None
    except ValueError as exc:
        raise ValueError(f"{path / STATE_JSON} is corrupt ({exc}); delete the folder or resume from an older "
                         "step_* folder") from None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path / STATE_JSON} is not a {FORMAT} file")
    try:
        blob = load_file(str(path / STATE_TENSORS))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise ValueError(f"{path / STATE_TENSORS} is missing or corrupt ({exc}); delete the folder or resume from an "
                         "older step_* folder") from None
    missing = [n for n in doc["tensors"] if f"tensor/{n}" not in blob]
    if missing:
        raise ValueError(f"{path}: tensors {missing[:5]} listed in {STATE_JSON} are missing from {STATE_TENSORS}")
    tensors = {n: blob[f"tensor/{n}"] for n in doc["tensors"]}
    if optimizer is not None:
        if doc.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        sd = {"state": _decode(doc["optimizer"]["state"], blob),
              "param_groups": _decode(doc["optimizer"]["param_groups"], blob)}
        try:
            optimizer.load_state_dict(sd)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: the optimizer state does not match this run's trainable parameters ({exc}); "
                             "resume with the same model / LoRA settings") from None
    if scheduler is not None:
        if doc.get("scheduler") is None:
            raise ValueError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(_decode(doc["scheduler"], blob))
    return TrainingState(step=int(doc["step"]), tensors=tensors, rng=_decode(doc.get("rng"), blob),
                         extra=_decode(doc.get("extra") or {}, blob), path=path)


def run_cli(body, interrupted: str = "interrupted: no results written (files are only written, atomically, at the end)"
            ) -> int:
    """Run a CLI's work ``body()`` and map the outcome to an exit code: 0 done; 130 on Ctrl-C (logs ``interrupted``);
    2 on ``ValueError`` / ``OSError`` (incl. ``FileNotFoundError``), logging the message, which names the problem
    and the fix, without a traceback."""
    try:
        body()
    except KeyboardInterrupt:
        logger.warning("%s", interrupted)
        return 130
    except (ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


# ============================================================================================ stopping
class StopRequest:
    """SIGINT / SIGTERM handlers that only set a flag (the loop stops at the next step boundary, after a
    checkpoint); a second SIGINT raises KeyboardInterrupt at once. Restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.code = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.code:
            raise KeyboardInterrupt
        self.code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        logger.warning("received %s: stopping after this step (checkpoint first); Ctrl-C again to abort",
                       signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:  # noqa: PYI034 (typing.Self needs Python 3.11)
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, ctx: DistContext) -> int:
        """The stop code of any rank (max over ranks), identical everywhere."""
        if ctx.world_size <= 1:
            return self.code
        import torch.distributed as dist

        t = torch.tensor([self.code], dtype=torch.int64, device=ctx.device if ctx.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())
