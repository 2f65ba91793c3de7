"""Training windows from D4RL trajectories, and the task's datamodule.

Training (Decision Transformer protocol, as min-decision-transformer): a batch element is
a window of K consecutive steps of one trajectory. The trajectory is drawn with
probability proportional to its length, the start uniformly so the window fits inside
it; a trajectory shorter than K is taken whole and right-padded (mask False). States are
normalised by the dataset's mean/std, returns-to-go divided by ``rtg_scale``.

An "epoch" is ``steps_per_epoch`` batches; the draws come from a generator seeded by
(seed, epoch), so a run (and a resumed run) sees the same batches.

Test: the dataloader yields episode indices; the module runs those episodes in the
simulator (``tasks.rl.acting``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aaren_bench.data import DatasetNotFound
from tasks.rl.d4rl import (
    D4RLFormatError,
    Trajectory,
    check_inputs,
    load_d4rl,
    normalize_states,
    returns_to_go,
    split_trajectories,
    state_stats,
)

log = logging.getLogger("aaren_bench")


class WindowSampler(Sampler):
    """Yields (trajectory index, start) pairs; ``n_samples`` per epoch."""

    def __init__(self, lengths: np.ndarray, context_len: int, n_samples: int, seed: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.p = self.lengths / self.lengths.sum()
        self.K, self.n, self.seed, self.epoch = context_len, n_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        traj = rng.choice(len(self.lengths), size=self.n, p=self.p)
        room = np.maximum(self.lengths[traj] - self.K, 0) + 1  # number of valid starts
        start = np.floor(rng.random(self.n) * room).astype(np.int64)
        return traj, start

    def __iter__(self):
        traj, start = self.draw(self.epoch)
        return iter(zip(traj.tolist(), start.tolist()))

    def __len__(self) -> int:
        return self.n


class WindowDataset(Dataset):
    """Index (trajectory, start) -> one padded window of K steps (tensors)."""

    def __init__(self, trajs: list[Trajectory], mean: np.ndarray, std: np.ndarray, context_len: int, rtg_scale: float):
        self.K = context_len
        self.states = [normalize_states(t.observations, mean, std) for t in trajs]  # (T, S) each
        self.actions = [t.actions for t in trajs]
        self.rtg = [returns_to_go(t.rewards, rtg_scale) for t in trajs]  # (T,) each, scaled

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        i, s = key
        e = min(s + self.K, len(self.rtg[i]))
        n, pad = e - s, self.K - (e - s)

        def padded(a: np.ndarray) -> torch.Tensor:
            a = torch.from_numpy(np.ascontiguousarray(a[s:e]))
            return torch.cat([a, a.new_zeros(pad, *a.shape[1:])]) if pad else a

        return {
            "states": padded(self.states[i]),  # (K, S)
            "actions": padded(self.actions[i]),  # (K, A)
            "rtg": padded(self.rtg[i]),  # (K,)
            "timesteps": torch.cat([torch.arange(s, e), torch.zeros(pad, dtype=torch.long)]),  # (K,)
            "mask": torch.arange(self.K) < n,  # (K,)
        }

    def __len__(self) -> int:  # not used by the sampler; the number of trajectories
        return len(self.rtg)


def resolve_file(cfg) -> Path:
    """The HDF5 file of ``cfg.dataset``: ``dataset.file`` when given (a relative path lives under
    ``paths.data_root``), else the registry's one way (``aaren_bench.data.fetch``).

    Nothing is written here: a dataset made in the simulator comes from
    ``aaren-bench collect --dataset <name>`` (or ``--env ... --out FILE``), run explicitly.
    """
    data_root = Path(cfg.paths.data_root).expanduser()
    file = cfg.dataset.get("file")
    if file:
        path = Path(file).expanduser()
        path = path if path.is_absolute() else data_root / path
        if not path.exists():
            raise DatasetNotFound(
                f"dataset.file={path} does not exist; write one with "
                f"`aaren-bench collect --env {cfg.dataset.env} --out {path}` or place a D4RL-layout HDF5 file there"
            )
        return path
    from aaren_bench.data import fetch

    return next(iter(fetch(cfg.dataset.name, data_root).values()))


class RLDataModule(L.LightningDataModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.trajs: list[Trajectory] | None = None

    def prepare(self) -> None:
        """Load, check and split the dataset once (``build`` needs its sizes)."""
        if self.trajs is not None:
            return
        path = resolve_file(self.cfg)
        data = load_d4rl(path)
        self.path = path
        self.trajs = split_trajectories(data)
        self.obs_dim, self.act_dim = data["observations"].shape[1], data["actions"].shape[1]
        from aaren_bench.data import get

        # the catalog's dims of the registry's file (a dataset.file of your own is checked against the env)
        info = {} if self.cfg.dataset.get("file") else get(self.cfg.dataset.name).info
        want = info.get("obs_dim"), info.get("act_dim")
        if (want[0] and want[0] != self.obs_dim) or (want[1] and want[1] != self.act_dim):
            raise D4RLFormatError(
                f"{path}: observations/actions have {self.obs_dim}/{self.act_dim} dims, "
                f"but dataset {self.cfg.dataset.name} expects {want[0]}/{want[1]}; is it the right file?"
            )
        self.mean, self.std = state_stats(self.trajs)
        check_inputs(self.trajs, self.mean, self.std, float(self.cfg.task.rtg_scale), str(path))
        lengths = np.array([len(t) for t in self.trajs])
        log.info("%s: %d transitions, %d trajectories (length %d-%d), obs %d, act %d", path.name,
                 lengths.sum(), len(lengths), lengths.min(), lengths.max(), self.obs_dim, self.act_dim)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.task
        ds = WindowDataset(self.trajs, self.mean, self.std, t.context_len, t.rtg_scale)
        lengths = np.array([len(x) for x in self.trajs])
        sampler = WindowSampler(lengths, t.context_len, t.steps_per_epoch * t.batch_size, seed=int(self.cfg.seed))
        return DataLoader(ds, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers,
                          persistent_workers=t.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        n, per = int(self.cfg.task.eval_episodes), int(self.cfg.task.eval_batch)
        return DataLoader(torch.arange(n), batch_size=per, shuffle=False)
