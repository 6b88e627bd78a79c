"""How many torch intra-op threads the PyTorch rasteriser uses on the CPU, so that it degrades gracefully on a busy
machine.

Torch's CPU kernels split work over OpenMP threads that meet at a barrier after every parallel region. When another
process keeps a core busy, one of our threads is descheduled there and every region waits for it: on a 2-core
machine one view (100k-500k Gaussians, 512^2) went from 0.4 s to 11 s with two threads while another process ran,
where one thread stays near its idle time (``bench/bench_render_load.py`` measures it). So the rasteriser uses
fewer threads than torch's setting when other processes keep cores busy:

* ``threads`` argument of :func:`vist3a.render.render` (an int >= 1) wins; else
* the environment variable ``VIST3A_RENDER_THREADS``: an int >= 1, or ``auto`` (the default), or ``torch``
  (always ``torch.get_num_threads()``, no adaptation); else
* ``auto``: ``min(torch.get_num_threads(), max(1, floor(cpus - others + 0.25)))`` where ``cpus`` is the number of
  CPUs this process may run on and ``others`` the CPUs other processes kept busy recently (:func:`busy_elsewhere`):
  a thread is dropped as soon as other processes use more than a quarter of a core that it would need.

``others`` is measured from ``/proc/stat`` (all CPUs' busy time) minus ``/proc/self/stat`` (this process's), between
the previous call and now when that window is 0.05 s to 2 s long (our own renders do not count: no feedback), else
over a fresh 0.05 s sample (a longer window would still count a process that has since stopped). Without ``/proc`` (macOS, Windows) it is the 1-minute load average minus one (this process),
or 0 when that is unavailable too.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import torch

__all__ = ["RENDER_THREADS_ENV", "busy_elsewhere", "choose_threads", "render_threads"]

logger = logging.getLogger(__name__)

RENDER_THREADS_ENV = "VIST3A_RENDER_THREADS"
HEADROOM = 0.25  # a thread needs a core whose other users take at most this much of it
SAMPLE_S = 0.05
MAX_WINDOW_S = 2.0  # older readings describe another moment (bench_render_load: a stale 60 s window kept 1 thread
# for seconds after the other process had stopped)


def choose_threads(current: int, cpus: int, others: float) -> int:
    """The automatic rule: ``min(current, max(1, floor(cpus - others + 0.25)))``.

    Args:
        current: torch's intra-op thread setting (>= 1).
        cpus: CPUs this process may run on (>= 1).
        others: CPUs' worth of work other processes are doing (>= 0; e.g. 1.0 = one core fully busy).
    """
    free = math.floor(cpus - max(0.0, others) + HEADROOM)
    return max(1, min(int(current), free))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_proc() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, busy seconds of this process) since boot, or None without /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        with open("/proc/self/stat", encoding="ascii") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # cpu user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    vals = [int(v) for v in fields[1:9]]
    busy = sum(vals) - vals[3] - vals[4]
    mine = int(own[11]) + int(own[12])  # utime, stime (fields 14, 15 of the stat line)
    return busy / tick, mine / tick


class _Meter:
    """The previous /proc reading, shared by the threads of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: tuple[float, float, float] | None = None  # (wall, busy all, busy own)


_METER = _Meter()


def busy_elsewhere() -> float:
    """CPUs' worth of work done by other processes recently (module docstring), >= 0."""
    now = time.monotonic()
    reading = _read_proc()
    if reading is None:
        try:
            return max(0.0, os.getloadavg()[0] - 1.0)
        except (AttributeError, OSError):
            return 0.0
    with _METER.lock:
        last = _METER.last
        _METER.last = (now, *reading)
    if last is None or not SAMPLE_S <= now - last[0] <= MAX_WINDOW_S:
        time.sleep(SAMPLE_S)
        last, now = (now, *reading), time.monotonic()
        reading = _read_proc() or reading
        with _METER.lock:
            _METER.last = (now, *reading)
    wall = now - last[0]
    return max(0.0, ((reading[0] - last[1]) - (reading[1] - last[2])) / wall)


def render_threads(threads: int | None = None) -> int:
    """Intra-op threads for one CPU render: ``threads`` when given, else ``$VIST3A_RENDER_THREADS`` (an int,
    ``auto`` or ``torch``), else the automatic choice (module docstring).

    Raises:
        ValueError: ``threads`` < 1, or an environment value that is none of the above.
    """
    current = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"render: threads must be >= 1 (or None for the automatic choice), got {threads}")
        return int(threads)
    env = os.environ.get(RENDER_THREADS_ENV, "auto").strip().lower()
    if env == "torch":
        return current
    if env not in ("", "auto"):
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{RENDER_THREADS_ENV}={env!r}: use an integer >= 1, 'auto' or 'torch'")
        return value
    if current <= 1:
        return current
    return choose_threads(current, _cpu_count(), busy_elsewhere())
