"""The rasteriser's CPU thread choice (vist3a.render.threads): the automatic rule, the precedence of the argument,
the environment variable and the rule, the busy-CPU measurement, and that the images do not depend on the choice.
No timing: the choice logic is checked on given inputs (bench/bench_render_load.py measures what it buys)."""

import pytest
import torch

from vist3a.cameras import Cameras
from vist3a.gaussians import Gaussians
from vist3a.render import api, render, render_threads, threads
from vist3a.rotations import normalize_quat


@pytest.mark.parametrize(("current", "cpus", "others", "expected"), [
    (2, 2, 0.0, 2),     # idle 2-core machine: torch's 2 threads
    (2, 2, 0.2, 2),     # a little background work: still 2
    (2, 2, 0.3, 1),     # more than a quarter core busy elsewhere: drop a thread
    (2, 2, 1.0, 1),     # one core busy (the case): 1 thread
    (2, 2, 5.0, 1),     # overloaded: never below 1
    (1, 2, 0.0, 1),     # never more than torch's setting
    (16, 16, 3.0, 13),  # big machine: the free cores
    (8, 16, 3.0, 8),
])
def test_choose_threads(current, cpus, others, expected):
    assert threads.choose_threads(current, cpus, others) == expected


@pytest.fixture
def machine(monkeypatch):
    """A fake 2-core machine with torch at 2 threads and one core busy elsewhere."""
    monkeypatch.delenv(threads.RENDER_THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "_cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1.0)
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)


def test_auto_caps_on_a_busy_machine_and_not_on_an_idle_one(machine, monkeypatch):
    assert render_threads() == 1
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)
    assert render_threads() == 2


def test_argument_beats_environment_beats_rule(machine, monkeypatch):
    monkeypatch.setenv(threads.RENDER_THREADS_ENV, "3")
    assert render_threads() == 3
    assert render_threads(2) == 2
    monkeypatch.setenv(threads.RENDER_THREADS_ENV, "torch")
    assert render_threads() == 2  # torch's setting, no adaptation despite the busy core
    monkeypatch.setenv(threads.RENDER_THREADS_ENV, "auto")
    assert render_threads() == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_environment_value_is_refused(machine, monkeypatch, bad):
    monkeypatch.setenv(threads.RENDER_THREADS_ENV, bad)
    with pytest.raises(ValueError, match="VIST3A_RENDER_THREADS"):
        render_threads()


def test_bad_argument_is_refused(machine):
    with pytest.raises(ValueError, match="threads must be >= 1"):
        render_threads(0)


def test_busy_elsewhere_excludes_this_process(monkeypatch):
    """Other processes' CPU = all CPUs' busy time minus this process's, over the window since the last call."""
    readings = iter([(100.0, 10.0), (101.8, 10.9)])  # (busy all CPUs, busy this process) in seconds
    clock = iter([50.0, 51.0])
    monkeypatch.setattr(threads, "_read_proc", lambda: next(readings))
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads, "_METER", threads._Meter())
    threads._METER.last = None
    # first call: no previous reading -> it samples (sleep patched out) over the next reading
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.busy_elsewhere() == pytest.approx((1.8 - 0.9) / 1.0)


def test_busy_elsewhere_without_proc_uses_the_load_average(monkeypatch):
    monkeypatch.setattr(threads, "_read_proc", lambda: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert threads.busy_elsewhere() == pytest.approx(1.5)


def _scene(n=3000, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.5,
        scales=torch.exp(torch.randn(n, 3, generator=gen) * 0.3) * 0.03,
        rotations=normalize_quat(torch.randn(n, 4, generator=gen)),
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        sh=torch.randn(n, 4, 3, generator=gen) * 0.3,
    )


def test_render_uses_the_choice_and_restores_torch(monkeypatch):
    seen = []
    inner = api._render_prepared

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(api, "_render_prepared", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cams = Cameras.orbit(1, radius=3.0, width=32, height=32)
        render(_scene(200), cams, backend="torch", threads=1)
        monkeypatch.setattr(api, "render_threads", lambda t: 1)  # the automatic choice on a busy machine
        render(_scene(200), cams, backend="torch")
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


def _renders(configs):
    cams = Cameras.orbit(1, radius=3.0, width=16, height=16)
    scene = _scene(300)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        outs = [render(scene, cams, backend="torch", threads=t, chunk_elements=c) for t, c in configs]
    finally:
        torch.set_num_threads(before)
    assert float(outs[0].alpha.max()) > 0.5  # the scene covers the view
    for out in outs[1:]:
        for key in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(out, key), getattr(outs[0], key), rtol=1e-5, atol=1e-5)


def test_images_do_not_depend_on_chunks():
    _renders([(1, 1 << 21), (1, 1 << 10)])


@pytest.mark.slow
def test_images_do_not_depend_on_threads():
    """Marked slow: on a loaded 2-core machine a two-thread render stalls at its parallel regions (seconds even for
    this 16x16 view), which is what the automatic choice avoids."""
    _renders([(1, 1 << 21), (2, 1 << 21)])
