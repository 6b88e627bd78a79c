"""Shared test setup: offline hub, small thread count, paths to the shared golden data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """`../shared` beside the checkout (or $VIST3A_SHARED), where the golden data lives; None if absent."""
    env = os.environ.get("VIST3A_SHARED")
    path = Path(env) if env else REPO_ROOT.parent / "shared"
    return path if (path / "golden").is_dir() else None


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    root = shared_dir()
    if root is None:
        message = "golden data not found: put the project's shared/ folder beside the checkout or set VIST3A_SHARED"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI must check the goldens, never skip them)")
        pytest.skip(message)
    return root / "golden"


@pytest.fixture
def single_thread():
    """One torch thread for tests on small tensors: avoids OpenMP stalls when the 2 CPU cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
