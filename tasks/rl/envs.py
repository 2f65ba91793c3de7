"""Gymnasium MuJoCo environments matching the D4RL -v2 data, with space checks.

D4RL's data came from mujoco-py ``*-v3`` environments (ant: ``Ant-v2``-style 111-d
observations with contact forces). Their closest maintained successors are gymnasium's
``*-v4`` environments (same models and observation layout, the ``mujoco`` bindings
instead of mujoco-py); ``Ant-v4`` needs ``use_contact_forces=True`` for the 111-d
observation (``Ant-v5`` gives 105 or 27). The simulator runs headless.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from aaren_bench.errors import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    gym_id: str
    obs_dim: int
    act_dim: int
    kwargs: dict = field(default_factory=dict)


ENVS: dict[str, EnvSpec] = {
    "halfcheetah": EnvSpec("HalfCheetah-v4", 17, 6),
    "hopper": EnvSpec("Hopper-v4", 11, 3),
    "walker2d": EnvSpec("Walker2d-v4", 17, 6),
    "ant": EnvSpec("Ant-v4", 111, 8, {"use_contact_forces": True}),
}


class EnvMismatchError(ConfigError):
    """The environment's observation or action space does not fit the dataset."""


def env_spec(name: str) -> EnvSpec:
    if name not in ENVS:
        raise KeyError(f"unknown environment {name!r}; choose one of {sorted(ENVS)}")
    return ENVS[name]


def make_env(name: str, obs_dim: int | None = None, act_dim: int | None = None, max_episode_steps: int | None = None):
    """Build the gymnasium environment of a D4RL env name and check its spaces.

    obs_dim / act_dim: the dataset's sizes; a mismatch raises :class:`EnvMismatchError`.
    """
    try:
        import gymnasium as gym
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("offline RL evaluation needs gymnasium[mujoco]: pip install 'aaren-bench[rl]'") from e
    spec = env_spec(name)
    kwargs = dict(spec.kwargs)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date.*")  # v4 is chosen on purpose (see module doc)
        env = gym.make(spec.gym_id, **kwargs)
    check_spaces(env, name, obs_dim, act_dim)
    return env


def check_spaces(env, name: str, obs_dim: int | None, act_dim: int | None) -> None:
    """Raise :class:`EnvMismatchError` when env and data disagree on sizes or bounds."""
    got_obs, got_act = env.observation_space.shape, env.action_space.shape
    problems = []
    if obs_dim is not None and got_obs != (obs_dim,):
        problems.append(f"observations: data has {obs_dim} dims, {env.spec.id} gives {got_obs}")
    if act_dim is not None and got_act != (act_dim,):
        problems.append(f"actions: data has {act_dim} dims, {env.spec.id} gives {got_act}")
    if problems:
        hint = " (ant needs Ant-v4 with use_contact_forces=True: 111 dims)" if name == "ant" else ""
        raise EnvMismatchError(
            f"environment {name!r} does not match the dataset: " + "; ".join(problems) + hint
            + ". Check dataset.env in the dataset config."
        )
    low, high = env.action_space.low, env.action_space.high
    if not (np.allclose(low, -1.0) and np.allclose(high, 1.0)):
        raise EnvMismatchError(f"{env.spec.id}: actions must lie in [-1, 1] (the policy head is tanh); got [{low}, {high}]")
