"""One resumable training loop for the micro stages (VAE, 3D model, text-to-video, scorer).

A stage gives its trainable tensors, optimizer, scheduler and a ``step_fn(step) -> metrics``; :func:`train_loop`
runs steps ``[start, steps)`` with a tqdm bar, appends one JSON line per step to ``<out>/metrics.jsonl`` (the
metrics plus ``time``, cumulative training seconds across resumed runs),
checkpoints to ``<out>/checkpoints/`` (training/runtime.py: safetensors + JSON, never pickled) every ``save_every``
steps and when stopped (SIGINT / SIGTERM: the step finishes, a checkpoint is written, exit code 130 / 143), and
resumes exactly from the latest checkpoint (tensors, optimizer, scheduler, RNG). Steps must draw their data from
``(seed, step)`` alone (:func:`step_rng`) so a resumed run sees what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vist3a.io.atomic import atomic_write

from ..runtime import (
    StopRequest,
    capture_rng_state,
    latest_checkpoint,
    load_training_state,
    restore_rng_state,
    save_training_state,
)

__all__ = ["LoopResult", "step_rng", "train_loop"]

logger = logging.getLogger("vist3a.micro")

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


def step_rng(seed: int, step: int, name: str = "") -> random.Random:
    """The data generator of one step: a function of (seed, step, name) only."""
    return random.Random(f"vist3a-micro-step:{name}:{seed}:{step}")


@dataclass
class LoopResult:
    step: int          # steps done in total
    code: int          # 0 finished, 130 / 143 stopped by a signal, 0 with step < steps after --stop-after
    seconds: float     # wall time of this run
    run_steps: int     # steps done in this run


def _truncate(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    with atomic_write(path, "w") as fh:
        fh.write("".join(s + "\n" for s in keep))


def _elapsed(path: Path, step: int) -> float:
    """Cumulative training seconds recorded up to ``step`` (so ``time`` continues across resumed runs)."""
    last = 0.0
    if path.is_file() and step:
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(line)
                if doc["step"] <= step:
                    last = float(doc.get("time", last))
    return last


def train_loop(out: str | Path, *, params: dict[str, Tensor], optimizer, scheduler, step_fn: Callable[[int], dict],
               steps: int, config: dict, save_every: int = 250, keep_last: int = 2, desc: str = "train",
               progress: bool = True, stop_after: int | None = None, log_every: int = 100) -> LoopResult:
    """Run (or resume) a stage's training; see the module docstring. ``config`` is stored in every checkpoint and
    must match on resume (a changed option would silently change the run)."""
    from tqdm import tqdm

    out = Path(out)
    ckpts = out / CHECKPOINTS
    start = 0
    found = latest_checkpoint(ckpts)
    if found is not None:
        state = load_training_state(found, optimizer=optimizer, scheduler=scheduler)
        saved = state.extra.get("config", {})
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if diff:
            raise ValueError(f"{found} was written with other options ({', '.join(diff)}); resume with the same "
                             f"options or use a new --out")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state.tensors[name].to(p.device, p.dtype))
        if state.rng:
            restore_rng_state(state.rng)
        start = state.step
        logger.info("%s: resumed from %s at step %d", desc, found, start)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / METRICS
    _truncate(metrics, start)

    def save(step: int) -> None:
        save_training_state(ckpts, step=step, tensors=params, optimizer=optimizer, scheduler=scheduler,
                            rng=capture_rng_state(), extra={"config": config}, keep_last=keep_last)

    before = _elapsed(metrics, start)
    t0, run_steps, code, step, saved = time.perf_counter(), 0, 0, start, start
    with StopRequest() as stop, tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not progress) as bar, \
            open(metrics, "a", encoding="utf-8") as fh:
        while step < steps:
            if stop.code:
                code = stop.code
                break
            m = step_fn(step)
            step += 1
            run_steps += 1
            loss = float(m.get("loss", 0.0))
            if not math.isfinite(loss):
                raise FloatingPointError(f"{desc}: step {step}: the loss is {loss}; lower the learning rate")
            fh.write(json.dumps({"step": step, **{k: (round(v, 6) if isinstance(v, float) else v)
                                                  for k, v in m.items()},
                                 "time": round(before + time.perf_counter() - t0, 3)}) + "\n")
            fh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if step % log_every == 0:
                logger.info("%s step %d/%d %s", desc, step, steps,
                            " ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float)))
            if step % save_every == 0:
                save(step)
                saved = step
            if stop_after is not None and run_steps >= stop_after:
                break
    if saved != step:
        save(step)
    if code:
        logger.warning("%s: stopped at step %d (checkpoint written); run the same command to continue", desc, step)
    return LoopResult(step, code, time.perf_counter() - t0, run_steps)
