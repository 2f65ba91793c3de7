"""The offline-RL LightningModule: action MSE in training, simulator episodes in test."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from tasks.rl.acting import Agent, run_episodes
from tasks.rl.d4rl import normalized_score
from tasks.rl.envs import make_env
from tasks.rl.model import DecisionModel

log = logging.getLogger("aaren_bench")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid steps: pred/target (B, T, A), mask (B, T)."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


def warmup_lambda(warmup_steps: int):
    """Linear warm-up from 1/warmup to 1 over ``warmup_steps``, then constant (as DT)."""
    return lambda step: min((step + 1) / max(warmup_steps, 1), 1.0)


@dataclass(frozen=True)
class Evaluation:
    """How the test runs episodes in the simulator (conf/task/rl.yaml, the dataset's target)."""

    env: str
    target_return: float
    rtg_scale: float
    context_len: int
    acting: str = "window"  # window | stream
    episodes: int = 10
    max_ep_len: int = 1000
    debug_ep_len: int = 50  # under fast_dev_run
    eval_seed: int = 10000  # episode i of seed s resets with eval_seed + 1000 s + i
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_cfg(cls, cfg) -> "Evaluation":
        t = cfg.task
        return cls(env=str(cfg.dataset.env), target_return=float(cfg.dataset.target_return),
                   rtg_scale=float(t.rtg_scale), context_len=int(t.context_len), acting=str(t.acting),
                   episodes=int(t.eval_episodes), max_ep_len=int(t.max_ep_len), debug_ep_len=int(t.debug_ep_len),
                   eval_seed=int(t.eval_seed), seed=int(cfg.seed), threads=int(t.eval_threads))


class DecisionModule(L.LightningModule):
    def __init__(self, model: DecisionModel, optimizer, evaluation: Evaluation, warmup_steps: int = 10000):
        super().__init__()
        self.model, self.optimizer_factory, self.evaluation = model, optimizer, evaluation
        self.warmup_steps = warmup_steps
        self.env_name = evaluation.env
        self._returns: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._wall = 0.0

    def parameter_split(self) -> dict[str, int]:
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        bb = count(self.model.backbone.parameters())
        head = count(self.model.head.parameters())
        return {"embedding": count(self.parameters()) - bb - head, "backbone": bb, "head": head}

    def training_step(self, batch, batch_idx):
        pred = self.model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])
        loss = masked_mse(pred, batch["actions"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(int(self.warmup_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation in the simulator ----------------------------------------------------
    def make_agent(self, mode: str | None = None) -> Agent:
        e = self.evaluation
        return Agent(self.model, e.target_return, e.rtg_scale, e.context_len, mode or e.acting, max_ep_len=e.max_ep_len)

    def on_test_epoch_start(self) -> None:
        self._returns, self._lengths, self._wall = [], [], 0.0

    def test_step(self, batch, batch_idx):
        episodes = batch.tolist()
        e = self.evaluation
        max_len = e.max_ep_len
        if self.trainer.fast_dev_run:  # a smoke test: short episodes, no record is written
            max_len, episodes = min(max_len, e.debug_ep_len), episodes[:2]
            log.info("fast_dev_run: evaluation cut to %d episodes of %d steps", len(episodes), max_len)
        envs = [make_env(self.env_name, self.model.obs_dim, self.model.act_dim, max_len) for _ in episodes]
        seeds = [e.eval_seed + 1000 * e.seed + i for i in episodes]
        threads = torch.get_num_threads()
        torch.set_num_threads(e.threads)
        try:
            stats = run_episodes(self.make_agent(), envs, seeds, max_len)
        finally:
            torch.set_num_threads(threads)
            for env in envs:
                env.close()
        self._returns.append(stats.returns)
        self._lengths.append(stats.lengths)
        self._wall += stats.wall_s

    def on_test_epoch_end(self) -> None:
        returns, lengths = np.concatenate(self._returns), np.concatenate(self._lengths)
        scores = normalized_score(self.env_name, returns)
        metrics = {
            "test/normalized_score": scores.mean(),
            "test/normalized_score_std": scores.std(),
            "test/return": returns.mean(),
            "test/return_std": returns.std(),
            "test/episode_length": lengths.mean(),
            "test/episodes": float(len(returns)),
            "test/env_steps_per_s": lengths.sum() / max(self._wall, 1e-9),
        }
        for k, v in metrics.items():
            self.log(k, float(v))
