"""Gymnasium MuJoCo environments: sizes match D4RL, mismatches fail clearly."""
from __future__ import annotations

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from tasks.rl.envs import ENVS, EnvMismatchError, make_env  # noqa: E402


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_sizes_match_d4rl(name):
    spec = ENVS[name]
    env = make_env(name, spec.obs_dim, spec.act_dim)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (spec.obs_dim,)
    env.close()


def test_ant_has_the_data_layout():
    """111 columns: Ant-v4 without contact forces (27) and the data's 84 zero columns (tests/rl/test_rl_ant.py)."""
    env = make_env("ant", 111, 8)
    assert env.observation_space.shape == (111,)
    env.close()


def test_space_mismatch_is_clear():
    with pytest.raises(EnvMismatchError, match=r"observations: data has 11 dims, HalfCheetah-v4 gives \(17,\)"):
        make_env("halfcheetah", 11, 6)
    with pytest.raises(EnvMismatchError, match=r"27 \+ 84 contact-force columns"):
        make_env("ant", 27, 8)


def test_unknown_env():
    with pytest.raises(KeyError, match="unknown environment"):
        make_env("pendulum")
