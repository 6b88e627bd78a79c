"""Every training script runs as a file (``python training/<script>.py``, how the official scripts are run) as
well as a module (``python -m training.<script>``), from any working directory, importing this checkout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

SCRIPTS = ("find_stitching_layer", "train_stitched_decoder", "align_drtune", "eval_nvs", "eval_noise_robustness",
           "lpips_weights")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_as_a_file_from_anywhere(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    path = REPO_ROOT / "training" / f"{script}.py"
    res = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout
    # loaded as a file, it imports this checkout's packages (not another installed copy)
    probe = (f"import runpy, sys; runpy.run_path({str(path)!r}, run_name='probe'); "
             "import vist3a, training; print(vist3a.__file__); print(training.__file__)")
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    want = [str(REPO_ROOT / "vist3a" / "__init__.py"), str(REPO_ROOT / "training" / "__init__.py")]
    assert res.stdout.split() == want
