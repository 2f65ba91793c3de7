"""Offline RL (``task=rl``): Decision Transformer / Decision Aaren on D4RL -v2 data.

The datamodule finds the dataset's HDF5 file (D4RL's, or the Hugging Face hub's copy),
checks its layout and splits trajectories; the module wraps the backbone in the Decision
model. Training minimises action MSE on sampled windows; evaluation runs episodes in the
gymnasium MuJoCo simulator and logs the D4RL normalised score, after every epoch when the
protocol records a curve (``task.eval_curve``) and in the test. The record carries where
the data came from and the evaluation curve (``record_extras``).
"""
from __future__ import annotations

from aaren_bench.errors import ConfigError
from aaren_bench.task import Task
from tasks.rl.data import RLDataModule, resolve_file
from tasks.rl.envs import EnvMismatchError, env_spec
from tasks.rl.model import DecisionModel
from tasks.rl.module import DecisionModule, Evaluation

__all__ = ["TASK", "RLTask"]


class RLTask(Task):
    name = "rl"
    metrics = ("test/normalized_score", "test/return")

    def build_datamodule(self, cfg) -> RLDataModule:
        from aaren_bench.data import get

        path, source = resolve_file(cfg)
        info = {} if cfg.dataset.get("file") else get(cfg.dataset.name).info  # the catalog's dims of this dataset
        t = cfg.task
        dm = RLDataModule(path, source=source, expect_dims=(info.get("obs_dim"), info.get("act_dim")),
                          rtg_scale=float(t.rtg_scale), context_len=int(t.context_len), batch_size=int(t.batch_size),
                          steps_per_epoch=int(t.steps_per_epoch), seed=int(cfg.seed),
                          sampling=str(t.get("sampling", "length")), window_start=str(t.get("window_start", "fit")),
                          num_workers=int(t.num_workers), eval_episodes=int(t.eval_episodes),
                          eval_batch=int(t.eval_batch), eval_curve=bool(t.get("eval_curve")))
        dm.prepare()
        spec = env_spec(cfg.dataset.env)
        if (dm.obs_dim, dm.act_dim) != (spec.obs_dim, spec.act_dim):
            raise EnvMismatchError(
                f"{dm.path} has {dm.obs_dim}-d observations and {dm.act_dim}-d actions, but env {cfg.dataset.env!r} "
                f"({spec.gym_id}) has {spec.obs_dim} and {spec.act_dim}; set dataset.env to the env the data came from"
            )
        return dm

    def build_module(self, cfg, dm: RLDataModule, backbone, optimizer) -> DecisionModule:
        if cfg.task.get("monitor") and not cfg.task.get("eval_curve"):
            raise ConfigError(f"task.monitor={cfg.task.monitor} selects a checkpoint by its evaluation, but "
                              f"task.eval_curve is off, so nothing is evaluated during training; set "
                              f"task.eval_curve=true or task.monitor=null")
        model = DecisionModel(backbone, dm.obs_dim, dm.act_dim, int(cfg.task.max_timestep),
                              embed_dropout=float(cfg.task.get("embed_dropout", 0.0)))
        model.set_state_stats(dm.stats)
        model.check_horizon(dm.longest_episode)
        return DecisionModule(model, optimizer, Evaluation.from_cfg(cfg), warmup_steps=int(cfg.task.warmup_steps))

    def record_extras(self, cfg, datamodule: RLDataModule, module: DecisionModule) -> dict:
        """Where the data came from, and the evaluations: targets, the reported statistic, the curve."""
        return {"data_source": datamodule.data_source, "evaluation": module.evaluation_summary()}


TASK = RLTask()
