"""Gymnasium MuJoCo environments matching the D4RL -v2 data, with space checks.

D4RL's data came from mujoco-py ``*-v3`` environments. Their closest maintained successors
are gymnasium's ``*-v4`` environments (same models and observation layout, the ``mujoco``
bindings instead of mujoco-py). The simulator runs headless.

Ant, made the way its data was made. D4RL's ant observations have 111 columns: 27 of
position and velocity, then 84 external contact forces (``cfrc_ext``). Under mujoco-py
with MuJoCo 2.0, which wrote the data, ``cfrc_ext`` was never filled: those 84 columns are
zero in every D4RL ant file, and so was the contact cost that the v3 reward subtracts.
Gymnasium's ``Ant-v4(use_contact_forces=True)`` fills both: its observations differ from
the data in 84 columns (the data's std there is ~0, so normalised inputs would reach
~1e6) and its reward subtracts a contact cost the data never had. So ant is evaluated
as ``Ant-v4(use_contact_forces=False)`` (27 columns; reward = forward + healthy - control
cost, as in the data) with 84 zero columns appended: the observation and the reward the
data's environment produced. ``EnvSpec.zero_pad`` says how many.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from aaren_bench.errors import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    gym_id: str
    obs_dim: int  # the data's observation size (after ``zero_pad``)
    act_dim: int
    kwargs: dict = field(default_factory=dict)
    zero_pad: int = 0  # zero columns appended to the environment's observation (ant: contact forces)


ENVS: dict[str, EnvSpec] = {
    "halfcheetah": EnvSpec("HalfCheetah-v4", 17, 6),
    "hopper": EnvSpec("Hopper-v4", 11, 3),
    "walker2d": EnvSpec("Walker2d-v4", 17, 6),
    "ant": EnvSpec("Ant-v4", 111, 8, {"use_contact_forces": False}, zero_pad=84),
}


class EnvMismatchError(ConfigError):
    """The environment's observation or action space does not fit the dataset."""


def zero_pad(env, n: int):
    """``env`` with ``n`` zero columns appended to every observation (reset and step)."""
    import gymnasium as gym

    space = env.observation_space
    padded = gym.spaces.Box(np.concatenate([space.low, np.zeros(n, space.dtype)]),
                            np.concatenate([space.high, np.zeros(n, space.dtype)]), dtype=space.dtype)
    return gym.wrappers.TransformObservation(env, lambda obs: np.concatenate([obs, np.zeros(n, obs.dtype)]), padded)


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
    if spec.zero_pad:
        env = zero_pad(env, spec.zero_pad)
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
        hint = " (D4RL ant data is 111-d: 27 + 84 contact-force columns)" if name == "ant" else ""
        raise EnvMismatchError(
            f"environment {name!r} does not match the dataset: " + "; ".join(problems) + hint
            + ". Check dataset.env in the dataset config."
        )
    low, high = env.action_space.low, env.action_space.high
    if not (np.allclose(low, -1.0) and np.allclose(high, 1.0)):
        raise EnvMismatchError(f"{env.spec.id}: actions must lie in [-1, 1] (the policy head is tanh); got [{low}, {high}]")
