"""The installable pack: ComfyUI entry point without ComfyUI, registry metadata, CLI, README/CI contract."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def test_comfyui_entry_imports_without_comfyui():
    spec = importlib.util.spec_from_file_location(
        "vist3a_pack_under_test", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict) and isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) <= set(module.NODE_CLASS_MAPPINGS)
    assert (REPO_ROOT / module.WEB_DIRECTORY).is_dir()


def test_core_library_never_imports_comfyui():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_extras|comfy_api|folder_paths|nodes)\b", re.M)
    offenders = [
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "vist3a").rglob("*.py") if pattern.search(p.read_text())
    ]
    assert offenders == []


def test_comfy_registry_validation_passes(tmp_path):
    comfy = Path(sys.executable).with_name("comfy")
    if not comfy.exists():
        pytest.skip("comfy-cli is not installed (it comes with the [test] extra)")
    env = dict(os.environ, HOME=str(tmp_path))  # comfy-cli writes its config under $HOME
    run = subprocess.run(
        [str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "validation checks passed" in out and "Security warnings" not in out, out


def test_cli_help_lists_commands():
    run = subprocess.run([sys.executable, "-m", "vist3a", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "info" in run.stdout and "render" in run.stdout


def readme_block(marker):
    text = (REPO_ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].strip()


def test_readme_commands_and_ci_agree():
    main_cmd, test_cmd = readme_block("main-command"), readme_block("test-command")
    assert "-c constraints.txt" in main_cmd and "-c constraints.txt" in test_cmd
    assert "vist3a" in main_cmd and "pytest" in test_cmd
    assert "torch==2.13.0" in (REPO_ROOT / "constraints.txt").read_text().split()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "venv" in ci
