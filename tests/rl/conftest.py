"""RL test fixtures: one intra-op thread (tiny models, one token at a time), and the Hugging Face
hub offline, so that a test that would reach for it fails at once instead of waiting on the network
(tests/rl/test_rl_hub.py puts it back online for its local stand-in of the hub)."""
import pytest


@pytest.fixture(autouse=True)
def _rl_one_thread(one_thread):
    yield


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
