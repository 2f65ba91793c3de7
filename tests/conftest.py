"""Shared fixtures: real data (skipped when absent), small thread count, a temp runs folder;
tests marked ``gpu`` skip where there is no CUDA device.

A test that reads the real datasets asks for ``shared_data``: it is marked ``data`` (so CI can
run those tests in a step of their own, ``pytest -m data``) and skips unless ``$AAREN_DATA``
names the folder. There is no guessed fallback: a fresh clone runs without a data root.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets: ``$AAREN_DATA``; the test skips when it is unset or absent."""
    value = os.environ.get("AAREN_DATA")
    if not value:
        pytest.skip("needs the real datasets: set AAREN_DATA to the folder holding them (make test-data)")
    root = Path(value).expanduser()
    if not root.is_dir():
        pytest.skip(f"AAREN_DATA={value} is not a folder: set it to the folder holding the real datasets")
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
