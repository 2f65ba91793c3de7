"""Offline RL (``task=rl``): Decision Transformer / Decision Aaren on D4RL -v2 data.

``build(cfg) -> (datamodule, module)``: reads the dataset's HDF5 file (checking its
layout), splits trajectories, and wraps ``build_backbone(cfg.model)`` in the Decision
model. Training minimises action MSE on sampled windows; test runs episodes in the
gymnasium MuJoCo simulator and logs the D4RL normalised score.
"""
from __future__ import annotations

from aaren_bench.nn import build_backbone
from tasks.rl.data import RLDataModule
from tasks.rl.envs import env_spec
from tasks.rl.model import DecisionModel
from tasks.rl.module import DecisionModule

__all__ = ["build"]


def build(cfg):
    """The task's datamodule and LightningModule for ``cfg`` (Hydra config)."""
    spec = env_spec(cfg.dataset.env)
    dm = RLDataModule(cfg)
    dm.prepare()
    if (dm.obs_dim, dm.act_dim) != (spec.obs_dim, spec.act_dim):
        from tasks.rl.envs import EnvMismatchError

        raise EnvMismatchError(
            f"{dm.path} has {dm.obs_dim}-d observations and {dm.act_dim}-d actions, but env {cfg.dataset.env!r} "
            f"({spec.gym_id}) has {spec.obs_dim} and {spec.act_dim}; set dataset.env to the env the data came from"
        )
    model = DecisionModel(build_backbone(cfg.model), dm.obs_dim, dm.act_dim, int(cfg.task.max_timestep))
    model.set_state_stats(dm.mean, dm.std)
    return dm, DecisionModule(cfg, model)
