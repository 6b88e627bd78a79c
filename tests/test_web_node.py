"""Runs the pure-JS unit tests of the previewer (tests/test_web_*.mjs: PLY parser, depth sort) with node's test runner.

Skipped when node (>= 18) is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = sorted(Path(__file__).resolve().parent.glob("test_web_*.mjs"))
NODE = shutil.which("node")


def _node_major() -> int:
    try:
        out = subprocess.run([NODE, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


@pytest.mark.skipif(NODE is None or _node_major() < 18, reason="node >= 18 is not installed")
@pytest.mark.parametrize("script", TESTS, ids=[p.name for p in TESTS])
def test_node_unit_tests(script):
    proc = subprocess.run(
        [NODE, "--test", str(script)], check=False, capture_output=True, text=True, timeout=120, cwd=script.parent.parent
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
