"""The RL tests run tiny models one token at a time: one intra-op thread is fastest."""
import pytest


@pytest.fixture(autouse=True)
def _rl_one_thread(one_thread):
    yield
