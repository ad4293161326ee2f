"""Shared test setup: fixed threads, no network, W&B off unless a test turns it on, a private
synthetic-data cache per session, and the path of the optional shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _session_setup(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    if "SFD_CACHE" not in os.environ:
        os.environ["SFD_CACHE"] = str(tmp_path_factory.mktemp("sfd_cache"))
    yield


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (tiny MLPs are fastest so, and immune to OpenMP
    spinning on a busy CPU); restores the previous count. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
