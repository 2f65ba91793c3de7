"""Shared fixtures: real data (skipped when absent), small thread count, a temp runs folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets ($AAREN_DATA, else ../shared/data beside the checkout)."""
    root = Path(os.environ.get("AAREN_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data folder not found at {root}: set AAREN_DATA to a folder holding the shared datasets")
    return root


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """A temporary runs folder, so tests never write into the checkout."""
    d = tmp_path / "runs"
    monkeypatch.setenv("AAREN_RUNS", str(d))
    return d


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models (two threads mostly wait for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
