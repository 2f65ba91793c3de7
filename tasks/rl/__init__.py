"""Offline RL (``task=rl``): Decision Transformer / Decision Aaren on D4RL -v2 data.

The datamodule reads the dataset's HDF5 file (checking its layout) and splits trajectories;
the module wraps the backbone in the Decision model. Training minimises action MSE on
sampled windows; test runs episodes in the gymnasium MuJoCo simulator and logs the D4RL
normalised score.
"""
from __future__ import annotations

from aaren_bench.task import Task
from tasks.rl.data import RLDataModule
from tasks.rl.envs import EnvMismatchError, env_spec
from tasks.rl.model import DecisionModel
from tasks.rl.module import DecisionModule, Evaluation

__all__ = ["TASK", "RLTask"]


class RLTask(Task):
    name = "rl"
    metrics = ("test/normalized_score", "test/return")

    def build_datamodule(self, cfg) -> RLDataModule:
        dm = RLDataModule(cfg)
        dm.prepare()
        spec = env_spec(cfg.dataset.env)
        if (dm.obs_dim, dm.act_dim) != (spec.obs_dim, spec.act_dim):
            raise EnvMismatchError(
                f"{dm.path} has {dm.obs_dim}-d observations and {dm.act_dim}-d actions, but env {cfg.dataset.env!r} "
                f"({spec.gym_id}) has {spec.obs_dim} and {spec.act_dim}; set dataset.env to the env the data came from"
            )
        return dm

    def build_module(self, cfg, dm: RLDataModule, backbone, optimizer) -> DecisionModule:
        model = DecisionModel(backbone, dm.obs_dim, dm.act_dim, int(cfg.task.max_timestep))
        model.set_state_stats(dm.mean, dm.std)
        return DecisionModule(model, optimizer, Evaluation.from_cfg(cfg), warmup_steps=int(cfg.task.warmup_steps))


TASK = RLTask()
