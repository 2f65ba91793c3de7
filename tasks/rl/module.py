"""The offline-RL LightningModule: action MSE in training, simulator episodes in evaluation.

Evaluation runs ``task.eval_episodes`` episodes per target return (``Evaluation.targets``;
the first is the reported one, the others are recorded beside it):

- with ``task.eval_curve``, after every epoch (an anchor's training iteration): the
  validation loop. Each point goes to the logger (``val/normalized_score``, ...) and to
  ``curve``, which travels in checkpoints and ends up in the result record
  (``RLTask.record_extras``). Its episodes reset with seeds drawn from (eval_seed, seed,
  step), fresh at every evaluation, as the anchors' unseeded resets are.
- in ``trainer.test``: the reported evaluation (episode i resets with eval_seed + 1000
  seed + i). Without model selection the test is the evaluation of the last weights, so
  the curve's final point is the test itself (the validation at the last step is skipped,
  not run twice). With selection (protocol=mindt: ``task.monitor: val/normalized_score``)
  the best checkpoint of the curve is evaluated again with fresh episodes, as min-DT's
  README numbers were made; the test then also logs the curve's last and best points.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric

from aaren_bench.distributed import global_mean
from tasks.rl.acting import Agent, EpisodeStats, run_episodes
from tasks.rl.d4rl import normalized_score
from tasks.rl.envs import make_env
from tasks.rl.model import DecisionModel

log = logging.getLogger("aaren_bench")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mean=torch.div) -> torch.Tensor:
    """Mean squared error over valid steps: pred/target (B, T, A), mask (B, T). ``mean(total, count)``
    divides (over several processes: :func:`aaren_bench.distributed.global_mean`)."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    return mean(((pred - target) ** 2 * m).sum(), (m.sum() * pred.shape[-1]).clamp_min(1.0))


def warmup_lambda(warmup_steps: int):
    """Linear warm-up from 1/warmup to 1 over ``warmup_steps``, then constant (as DT)."""
    return lambda step: min((step + 1) / max(warmup_steps, 1), 1.0)


@dataclass(frozen=True)
class Evaluation:
    """How episodes are run in the simulator (conf/task/rl.yaml, the protocol, the dataset's target)."""

    env: str
    targets: tuple[float, ...]  # returns-to-go at t = 0; the first is the reported one
    rtg_scale: float
    context_len: int
    acting: str = "window"  # window | stream
    episodes: int = 10  # per target
    max_ep_len: int = 1000
    debug_ep_len: int = 50  # under fast_dev_run
    eval_seed: int = 10000  # test episode i of seed s resets with eval_seed + 1000 s + i
    seed: int = 0
    threads: int = 1
    final_is_test: bool = True  # no model selection: the test evaluates the last weights

    @property
    def target_return(self) -> float:
        return self.targets[0]


def summarize(env: str, returns: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    scores = normalized_score(env, returns)
    return {"normalized_score": float(scores.mean()), "normalized_score_std": float(scores.std()),
            "return": float(returns.mean()), "return_std": float(returns.std()),
            "episode_length": float(lengths.mean()), "episodes": float(len(returns))}


def _label(target: float) -> str:
    return f"{target:g}"


class EpisodeResults(Metric):
    """The episodes of one evaluation, by (target, episode index): return, length and how many times
    each ran, plus the slowest process's acting time. The states are summed over the processes
    that shared the episodes (the time: its maximum), so every process computes the whole
    evaluation; ``compute`` refuses an episode that ran twice."""

    full_state_update = False

    def __init__(self, n_targets: int, n_episodes: int, **kwargs):
        super().__init__(**kwargs)
        for name in ("returns", "lengths", "runs"):
            self.add_state(name, default=torch.zeros(n_targets, n_episodes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("wall_s", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, target: int, episodes: list[int], stats: EpisodeStats) -> None:
        idx = torch.as_tensor(episodes, dtype=torch.long, device=self.device)
        as64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)  # noqa: E731
        self.returns[target, idx] += as64(stats.returns)
        self.lengths[target, idx] += as64(stats.lengths)
        self.runs[target, idx] += 1
        self.wall_s += stats.wall_s

    def compute(self) -> dict:
        """{"returns": [per target: (n,) array of the episodes that ran], "lengths": likewise, "wall_s"}."""
        runs = self.runs.cpu().numpy()
        if (runs > 1).any():
            raise RuntimeError(f"{int((runs > 1).sum())} evaluation episode(s) ran more than once; the processes "
                               f"of this run shared the episodes wrongly")
        done = runs == 1
        returns, lengths = self.returns.cpu().numpy(), self.lengths.cpu().numpy()
        return {"returns": [r[d] for r, d in zip(returns, done)], "lengths": [n[d] for n, d in zip(lengths, done)],
                "wall_s": float(self.wall_s)}


class DecisionModule(L.LightningModule):
    def __init__(self, model: DecisionModel, optimizer, evaluation: Evaluation, warmup_steps: int = 10000):
        super().__init__()
        self.model, self.optimizer_factory, self.evaluation = model, optimizer, evaluation
        self.warmup_steps = warmup_steps
        self.env_name = evaluation.env
        self.curve: list[dict] = []  # one point per evaluation: step, epoch, per target scores
        # the episodes of the running evaluation, gathered from every process when computed
        shape = (len(evaluation.targets), evaluation.episodes)
        self.episode_results = torch.nn.ModuleDict({"val": EpisodeResults(*shape), "test": EpisodeResults(*shape)})

    def setup(self, stage: str) -> None:
        """The datamodule's state statistics into the model's buffers (read in its ``setup``, or
        restored with a checkpoint, which then restores the same buffers), and the horizon check."""
        self.adopt_statistics(self.trainer.datamodule)

    def adopt_statistics(self, dm) -> None:
        """``dm``: an :class:`~tasks.rl.data.RLDataModule` after ``setup`` (None: nothing to take)."""
        if dm is not None and getattr(dm, "stats", None) is not None:
            self.model.set_state_stats(dm.stats)
            self.model.check_horizon(dm.longest_episode)

    def parameter_split(self) -> dict[str, int]:
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        bb = count(self.model.backbone.parameters())
        head = count(self.model.head.parameters())
        return {"embedding": count(self.parameters()) - bb - head, "backbone": bb, "head": head}

    def training_step(self, batch, batch_idx):
        pred = self.model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])
        # per valid step of the global batch, whatever the number of processes sharing it
        loss = masked_mse(pred, batch["actions"], batch["mask"], mean=lambda total, count: global_mean(self, total, count))
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(int(self.warmup_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation in the simulator ----------------------------------------------------
    def make_agent(self, mode: str | None = None, target: float | None = None) -> Agent:
        e = self.evaluation
        return Agent(self.model, e.target_return if target is None else target, e.rtg_scale, e.context_len,
                     mode or e.acting, max_ep_len=e.max_ep_len)

    def _run_batch(self, stage: str, episodes: list[int], seeds: list[int]) -> None:
        """Run these episodes once per target, in lockstep; add them to the stage's results."""
        e = self.evaluation
        max_len = e.max_ep_len
        if self.trainer.fast_dev_run:  # a smoke test: short episodes, no record is written
            max_len, episodes, seeds = min(max_len, e.debug_ep_len), episodes[:2], seeds[:2]
            log.info("fast_dev_run: evaluation cut to %d episodes of %d steps", len(episodes), max_len)
        threads = torch.get_num_threads()
        torch.set_num_threads(e.threads)
        try:
            for k, target in enumerate(e.targets):
                envs = [make_env(self.env_name, self.model.obs_dim, self.model.act_dim, max_len) for _ in episodes]
                try:
                    stats = run_episodes(self.make_agent(target=target), envs, seeds, max_len)
                finally:
                    for env in envs:
                        env.close()
                self.episode_results[stage].update(k, episodes, stats)
        finally:
            torch.set_num_threads(threads)

    def _point(self, results: dict) -> dict:
        """Every process's episodes (``EpisodeResults.compute``) -> one evaluation point (first target's
        figures at top level)."""
        by_target = {_label(target): summarize(self.env_name, returns, lengths)
                     for target, returns, lengths in zip(self.evaluation.targets, results["returns"], results["lengths"])}
        first = by_target[_label(self.evaluation.targets[0])]
        return {"step": int(self.global_step), "epoch": int(self.current_epoch), **first, "by_target": by_target}

    def _gather(self, stage: str) -> dict | None:
        """The stage's episodes from every process (None when none ran), and a fresh start for the next."""
        metric = self.episode_results[stage]
        if not metric.update_called:
            return None
        results = metric.compute()
        metric.reset()
        return results

    def _log_point(self, stage: str, point: dict) -> None:
        # the same values on every process (gathered): sync_dist only keeps Lightning from warning
        for k in ("normalized_score", "normalized_score_std", "return", "return_std", "episode_length", "episodes"):
            self.log(f"{stage}/{k}", point[k], sync_dist=True)
        if len(point["by_target"]) > 1:
            for label, figures in point["by_target"].items():
                for k in ("normalized_score", "return"):
                    self.log(f"{stage}/{k}@{label}", figures[k], sync_dist=True)

    def _skip_validation(self) -> bool:
        """No episodes in the sanity check, and none at the last step when the test evaluates those weights."""
        if self.trainer.sanity_checking:
            return True
        last = self.trainer.max_steps is not None and 0 < self.trainer.max_steps <= self.global_step
        return self.evaluation.final_is_test and last and not self.trainer.fast_dev_run

    def validation_step(self, batch, batch_idx):
        if self._skip_validation():
            return
        e = self.evaluation
        episodes = batch.tolist()
        seeds = [int(np.random.SeedSequence([e.eval_seed, e.seed, int(self.global_step), i]).generate_state(1)[0])
                 for i in episodes]
        self._run_batch("val", episodes, seeds)

    def on_validation_epoch_end(self) -> None:
        results = self._gather("val")
        if results is None:
            return
        point = self._point(results)
        self.curve.append(point)
        self._log_point("val", point)

    def test_step(self, batch, batch_idx):
        e = self.evaluation
        episodes = batch.tolist()
        self._run_batch("test", episodes, [e.eval_seed + 1000 * e.seed + i for i in episodes])

    def on_test_epoch_end(self) -> None:
        results = self._gather("test")
        point = self._point(results)
        point["test"] = True
        self._log_point("test", point)
        steps = sum(float(n.sum()) for n in results["lengths"])  # every process's, over the slowest one's time
        self.log("test/env_steps_per_s", steps / max(results["wall_s"], 1e-9), sync_dist=True)
        if self.evaluation.final_is_test and (not self.curve or self.curve[-1]["step"] < point["step"]):
            self.curve.append(point)  # the last weights' evaluation closes the curve
        if len(self.curve) > 1 or not self.evaluation.final_is_test:  # both statistics, whichever one is reported
            best = max(self.curve, key=lambda p: p["normalized_score"])
            self.log("test/last_eval_normalized_score", self.curve[-1]["normalized_score"], sync_dist=True)
            self.log("test/best_eval_normalized_score", best["normalized_score"], sync_dist=True)
            self.log("test/best_eval_step", float(best["step"]), sync_dist=True)

    def evaluation_summary(self) -> dict:
        """For the result record: targets, what the test reports, and the evaluation curve."""
        e = self.evaluation
        out = {"targets": list(e.targets), "reported_target": e.targets[0], "episodes_per_target": e.episodes,
               "reported": "last" if e.final_is_test else "best checkpoint of the curve, evaluated again",
               "curve": self.curve}
        if self.curve:
            out["last"] = self.curve[-1]
            out["best"] = max(self.curve, key=lambda p: p["normalized_score"])
        return out

    # the curve travels in checkpoints: a resumed run keeps its earlier points, and testing the
    # best checkpoint (which holds the curve as it was then) does not shorten it
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rl_eval_curve"] = list(self.curve)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("rl_eval_curve") or []
        if len(saved) > len(self.curve):
            self.curve = list(saved)
