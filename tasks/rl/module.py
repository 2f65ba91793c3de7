"""The offline-RL LightningModule: action MSE in training, simulator episodes in test."""
from __future__ import annotations

import logging

import hydra
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


class DecisionModule(L.LightningModule):
    def __init__(self, cfg, model: DecisionModel):
        super().__init__()
        self.cfg, self.model = cfg, model
        self.env_name = cfg.dataset.env
        self._returns: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._wall = 0.0

    @property
    def backbone(self):
        return self.model.backbone

    def training_step(self, batch, batch_idx):
        pred = self.model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])
        loss = masked_mse(pred, batch["actions"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def configure_optimizers(self):
        t = self.cfg.task
        opt = hydra.utils.instantiate(t.optimizer)(self.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(int(t.warmup_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation in the simulator ----------------------------------------------------
    def make_agent(self, mode: str | None = None) -> Agent:
        t = self.cfg.task
        return Agent(self.model, float(self.cfg.dataset.target_return), float(t.rtg_scale), int(t.context_len),
                     mode or t.acting, max_ep_len=int(t.max_ep_len))

    def on_test_epoch_start(self) -> None:
        self._returns, self._lengths, self._wall = [], [], 0.0

    def test_step(self, batch, batch_idx):
        episodes = batch.tolist()
        max_len = int(self.cfg.task.max_ep_len)
        if self.trainer.fast_dev_run:  # a smoke test: short episodes, no record is written
            max_len, episodes = min(max_len, int(self.cfg.task.debug_ep_len)), episodes[:2]
            log.info("fast_dev_run: evaluation cut to %d episodes of %d steps", len(episodes), max_len)
        envs = [make_env(self.env_name, self.model.obs_dim, self.model.act_dim, max_len) for _ in episodes]
        seeds = [int(self.cfg.task.eval_seed) + 1000 * int(self.cfg.seed) + i for i in episodes]
        threads = torch.get_num_threads()
        torch.set_num_threads(int(self.cfg.task.eval_threads))
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
