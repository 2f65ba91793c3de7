"""Offline RL (``task=rl``): Decision Transformer / Decision Aaren on D4RL -v2 data.

The datamodule finds the dataset's HDF5 file (D4RL's, or the Hugging Face hub's copy),
checks its layout and splits trajectories; the module wraps the backbone in the Decision
model. Training minimises action MSE on sampled windows; evaluation runs episodes in the
gymnasium MuJoCo simulator and logs the D4RL normalised score, after every epoch when the
protocol records a curve (``task.eval_curve``) and in the test. The record carries where
the data came from and the evaluation curve (``record_extras``).
"""
from __future__ import annotations

from pathlib import Path

from aaren_bench.errors import ConfigError
from aaren_bench.task import Task
from tasks.rl.d4rl import d4rl_dims
from tasks.rl.data import RLDataModule, RLFile, given_file
from tasks.rl.envs import EnvMismatchError, env_spec
from tasks.rl.model import DecisionModel
from tasks.rl.module import DecisionModule, Evaluation

__all__ = ["TASK", "RLTask", "evaluation", "rl_file", "target_returns"]


def rl_file(cfg) -> RLFile:
    ds = cfg.dataset
    return RLFile(data_root=Path(cfg.paths.data_root).expanduser(), name=str(ds.name), env=str(ds.env),
                  file=ds.get("file"), source=str(ds.get("source") or "auto"))


def target_returns(cfg) -> tuple[float, ...]:
    """The protocol's targets for this env (``task.target_returns.<env>``, e.g. kzl DT's two), else
    the dataset's ``target_return``."""
    per_env = cfg.task.get("target_returns") or {}
    targets = per_env.get(str(cfg.dataset.env)) if hasattr(per_env, "get") else None
    if targets is None:
        return (float(cfg.dataset.target_return),)
    targets = tuple(float(x) for x in targets)
    if not targets:
        raise ValueError(f"task.target_returns.{cfg.dataset.env} is empty; give at least one target return")
    return targets


def evaluation(cfg) -> Evaluation:
    """How the simulator runs episodes (conf/task/rl.yaml, the protocol, the dataset's target)."""
    t = cfg.task
    return Evaluation(env=str(cfg.dataset.env), targets=target_returns(cfg), rtg_scale=float(t.rtg_scale),
                      context_len=int(t.context_len), acting=str(t.acting), episodes=int(t.eval_episodes),
                      max_ep_len=int(t.max_ep_len), debug_ep_len=int(t.debug_ep_len), eval_seed=int(t.eval_seed),
                      seed=int(cfg.seed), threads=int(t.eval_threads), final_is_test=not t.get("monitor"))


class RLTask(Task):
    name = "rl"
    metrics = ("test/normalized_score", "test/return")

    def build_datamodule(self, cfg) -> RLDataModule:
        """Nothing is read or downloaded here: the file is found in ``prepare_data`` and read in ``setup``;
        the dimensions are the catalog's (a ``dataset.file``'s: its header's)."""
        from aaren_bench.data import get

        where, t = rl_file(cfg), cfg.task
        if where.file:
            obs_dim, act_dim = d4rl_dims(given_file(where))
        else:
            info = get(where.name).info
            obs_dim, act_dim = info["obs_dim"], info["act_dim"]
        spec = env_spec(where.env)
        if (obs_dim, act_dim) != (spec.obs_dim, spec.act_dim):
            raise EnvMismatchError(
                f"{where.file or where.name} has {obs_dim}-d observations and {act_dim}-d actions, but env "
                f"{where.env!r} ({spec.gym_id}) has {spec.obs_dim} and {spec.act_dim}; set dataset.env to the env "
                f"the data came from"
            )
        return RLDataModule(where, obs_dim=obs_dim, act_dim=act_dim, rtg_scale=float(t.rtg_scale),
                            context_len=int(t.context_len), batch_size=int(t.batch_size),
                            steps_per_epoch=int(t.steps_per_epoch), seed=int(cfg.seed),
                            sampling=str(t.get("sampling", "length")), window_start=str(t.get("window_start", "fit")),
                            num_workers=int(t.num_workers), eval_episodes=int(t.eval_episodes),
                            eval_batch=int(t.eval_batch), eval_curve=bool(t.get("eval_curve")))

    def build_module(self, cfg, dm: RLDataModule, backbone, optimizer) -> DecisionModule:
        """The state statistics reach the model's buffers in ``DecisionModule.setup``, after the data is read."""
        if cfg.task.get("monitor") and not cfg.task.get("eval_curve"):
            raise ConfigError(f"task.monitor={cfg.task.monitor} selects a checkpoint by its evaluation, but "
                              f"task.eval_curve is off, so nothing is evaluated during training; set "
                              f"task.eval_curve=true or task.monitor=null")
        model = DecisionModel(backbone, dm.obs_dim, dm.act_dim, int(cfg.task.max_timestep),
                              embed_dropout=float(cfg.task.get("embed_dropout", 0.0)))
        return DecisionModule(model, optimizer, evaluation(cfg), warmup_steps=int(cfg.task.warmup_steps))

    def record_extras(self, cfg, datamodule: RLDataModule, module: DecisionModule) -> dict:
        """Where the data came from, and the evaluations: targets, the reported statistic, the curve."""
        return {"data_source": datamodule.data_source, "evaluation": module.evaluation_summary()}


TASK = RLTask()
