"""Training windows from D4RL trajectories, where the file comes from, and the task's datamodule.

Training (Decision Transformer): a batch element is a window of K consecutive steps of one
trajectory. Which trajectory and where the window starts are the protocol's
(``task.sampling``, ``task.window_start``; docs/protocol/rl.md):

- ``sampling: length`` (kzl DT's ``get_batch``): trajectories drawn with replacement, with
  probability proportional to their length, so every transition weighs the same.
  ``sampling: uniform`` (min-DT's shuffled ``DataLoader(drop_last=True)`` over trajectories):
  passes over the trajectories in a fresh random order, each pass cut to whole batches
  (a pass shorter than one batch is kept whole); every trajectory weighs the same.
- ``window_start: fit`` (min-DT): the start is uniform over the positions where the
  window fits; a trajectory shorter than K is taken whole. ``window_start: any`` (kzl DT):
  the start is uniform over every step, and a window running past the end is cut there.
  A short window is right-padded (mask False); padding never reaches a valid output.

States are normalised by the dataset's mean/std (constant columns held at 0:
``tasks.rl.d4rl.StateStats``), returns-to-go divided by ``rtg_scale``.

An "epoch" is ``steps_per_epoch`` batches (an anchor's training iteration; with
``task.eval_curve`` the policy is evaluated after each). The draws come from generators
seeded by (seed, epoch) and (seed, pass), so a run and a resumed run see the same batches.

Evaluation: the dataloaders yield episode indices; the module runs those episodes in the
simulator (``tasks.rl.acting``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aaren_bench.data import DatasetNotFound
from aaren_bench.distributed import eval_loader, process_share
from aaren_bench.errors import ConfigError
from aaren_bench.resume import ResumableLoader
from tasks.rl.d4rl import (
    D4RLFormatError,
    StateStats,
    Trajectory,
    check_inputs,
    load_d4rl,
    returns_to_go,
    split_trajectories,
    state_stats,
)

log = logging.getLogger("aaren_bench")

SAMPLINGS = ("length", "uniform")
WINDOW_STARTS = ("fit", "any")
SOURCES = ("auto", "d4rl", "hub")


class WindowSampler(Sampler):
    """Yields (trajectory index, start) pairs; ``n_samples`` (whole batches) per epoch."""

    def __init__(self, lengths: np.ndarray, context_len: int, n_samples: int, seed: int, batch_size: int = 1,
                 sampling: str = "length", window_start: str = "fit"):
        if sampling not in SAMPLINGS:
            raise ConfigError(f"task.sampling must be one of {SAMPLINGS}; got {sampling!r}")
        if window_start not in WINDOW_STARTS:
            raise ConfigError(f"task.window_start must be one of {WINDOW_STARTS}; got {window_start!r}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.p = self.lengths / self.lengths.sum()
        self.K, self.n, self.seed, self.epoch = context_len, n_samples, seed, 0
        self.sampling, self.window_start = sampling, window_start
        N = len(self.lengths)
        self.pass_len = (N // batch_size) * batch_size or N  # min-DT's drop_last; a pass below one batch stays whole

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _passes(self, first: int, count: int) -> np.ndarray:
        """Trajectory indices of the ``count`` samples from position ``first`` of the stream of passes."""
        m, out, p = self.pass_len, [], first // self.pass_len
        skip = first - p * m
        while sum(len(x) for x in out) < skip + count:
            out.append(np.random.default_rng([self.seed, p, 1]).permutation(len(self.lengths))[:m])
            p += 1
        return np.concatenate(out)[skip:skip + count]

    def draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.sampling == "length":
            traj = rng.choice(len(self.lengths), size=self.n, p=self.p)
        else:
            traj = self._passes(epoch * self.n, self.n)
        L_ = self.lengths[traj]
        room = np.maximum(L_ - self.K, 0) + 1 if self.window_start == "fit" else L_  # number of valid starts
        start = np.floor(rng.random(self.n) * room).astype(np.int64)
        return traj, start

    def __iter__(self):
        traj, start = self.draw(self.epoch)
        return iter(zip(traj.tolist(), start.tolist()))

    def __len__(self) -> int:
        return self.n


# ``WindowDataset`` pads a short window on the right: the promise the model passes to its backbone
PADDING = "right"


class WindowDataset(Dataset):
    """Index (trajectory, start) -> one padded window of K steps (tensors)."""

    def __init__(self, trajs: list[Trajectory], stats: StateStats, context_len: int, rtg_scale: float):
        self.K = context_len
        self.states = [stats.normalize(t.observations) for t in trajs]  # (T, S) each
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


@dataclass(frozen=True)
class RLFile:
    """Which HDF5 file a run reads: ``file`` (a D4RL-layout file; relative: under ``data_root``),
    else the catalog's dataset ``name`` by ``source`` (``auto`` | ``d4rl`` | ``hub``); ``env`` names
    the environment in messages."""

    data_root: Path
    name: str
    env: str = ""
    file: str | None = None
    source: str = "auto"


def given_file(where: RLFile) -> Path:
    """``where.file`` as a path (relative: under the data root); it must exist."""
    path = Path(where.file).expanduser()
    path = path if path.is_absolute() else Path(where.data_root).expanduser() / path
    if not path.exists():
        raise DatasetNotFound(
            f"dataset.file={path} does not exist; write one with "
            f"`aaren-bench collect --env {where.env} --out {path}` or place a D4RL-layout HDF5 file there"
        )
    return path


def resolve_file(where: RLFile, download: bool = True) -> tuple[Path, dict]:
    """The HDF5 file and where it came from (stored in the result record).

    - ``file`` when given (a relative path lives under ``data_root``);
    - a dataset made here (``halfcheetah-collected``): its file in the data root, written
      beforehand by ``aaren-bench collect --dataset <name>``; nothing is written here;
    - a D4RL dataset, by ``source``: ``auto`` (the canonical file if present, else a
      verified Hugging Face hub copy, else a D4RL download, else a hub conversion:
      ``tasks.rl.hub.locate``), ``d4rl`` (the canonical file only) or ``hub`` (the hub copy
      only). When no source gives it, the error names both sources and where each file goes.

    ``download=False`` (a process that did not prepare the data) finds what is there and
    downloads or converts nothing.
    """
    from aaren_bench.data import fetch, get, sha256sum
    from tasks.rl import hub

    data_root = Path(where.data_root).expanduser()
    if where.file:
        path = given_file(where)
        return path, {"source": "file", "file": str(path), "sha256": sha256sum(path)}
    spec = get(where.name)
    if where.source not in SOURCES:
        raise ConfigError(f"dataset.source must be one of {SOURCES}; got {where.source!r}")
    recipe = spec.info.get("collect")
    if recipe:
        if where.source == "hub":
            raise ConfigError(f"dataset {spec.name!r} is made on this machine (aaren-bench collect), not on the hub; "
                              f"drop dataset.source=hub")
        path = next(iter(fetch(spec, data_root, download=False).values()))
        return path, {"source": "aaren-bench collect", "file": spec.files[0].path, "recipe": dict(recipe),
                      "sha256": sha256sum(path)}
    if where.source == "hub":
        path = hub.fetch_from_hub(spec, data_root) if download else hub.hub_paths(spec, data_root)[0]
        if not path.exists():
            raise DatasetNotFound(f"{path} is not there: the process that prepares the data (Lightning's "
                                  f"prepare_data) converts it; run `python -m tasks.rl.hub {spec.name}` once")
        return path, hub.verify_hub_copy(spec, data_root)
    return hub.locate(spec, data_root, use_hub=where.source == "auto", download=download)


class RLDataModule(L.LightningDataModule):
    """Training windows of one D4RL-layout file and the evaluation episodes' indices.

    ``file``: which file (:class:`RLFile`, or a path). ``prepare_data`` (once per node) finds it,
    downloading or converting what is missing; ``setup`` reads it once: trajectories, the state
    statistics, the longest trajectory. ``obs_dim``/``act_dim``: the catalog's (or the file
    header's) dimensions, known before any read and checked against the data (None: the
    file's). The statistics travel in the checkpoint (``state_dict``): a resumed run keeps
    the ones it started with. ``batch_size`` is the global batch (shared between processes);
    the evaluation's ``eval_episodes`` are shared between processes, each run once.
    """

    def __init__(self, file: RLFile | str | Path, *, rtg_scale: float, obs_dim: int | None = None,
                 act_dim: int | None = None, context_len: int = 20, batch_size: int = 64, steps_per_epoch: int = 100,
                 seed: int = 0, sampling: str = "length", window_start: str = "fit", num_workers: int = 0,
                 eval_episodes: int = 10, eval_batch: int = 10, eval_curve: bool = False):
        super().__init__()
        if not isinstance(file, RLFile):
            file = RLFile(data_root=Path("."), name=Path(file).stem, file=str(file))
        self.file, self.obs_dim, self.act_dim = file, obs_dim, act_dim
        self.rtg_scale, self.context_len, self.batch_size = float(rtg_scale), int(context_len), int(batch_size)
        self.steps_per_epoch, self.seed, self.num_workers = int(steps_per_epoch), int(seed), int(num_workers)
        self.sampling, self.window_start = str(sampling), str(window_start)
        self.eval_episodes, self.eval_batch, self.eval_curve = int(eval_episodes), int(eval_batch), bool(eval_curve)
        self.path: Path | None = None
        self.data_source: dict | None = None
        self.trajs: list[Trajectory] | None = None
        self.stats: StateStats | None = None

    def prepare_data(self) -> None:
        """Find the file, downloading or converting it when missing (one process per node)."""
        self.path, self.data_source = resolve_file(self.file, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Read, check and split the file, once per process."""
        if self.trajs is not None:
            return
        if self.path is None:  # a process that did not prepare the data: find it, download nothing
            self.path, self.data_source = resolve_file(self.file, download=False)
        self._read(self.path)

    def _read(self, path: Path) -> None:
        data = load_d4rl(path)
        self.trajs = split_trajectories(data)
        dims = data["observations"].shape[1], data["actions"].shape[1]
        if (self.obs_dim or dims[0], self.act_dim or dims[1]) != dims:
            raise D4RLFormatError(
                f"{path}: observations/actions have {dims[0]}/{dims[1]} dims, "
                f"but the dataset expects {self.obs_dim}/{self.act_dim}; is it the right file?"
            )
        self.obs_dim, self.act_dim = dims
        self.stats = self.stats or state_stats(self.trajs)  # restored from a checkpoint: kept
        if self.stats.constant.any():
            cols = np.nonzero(self.stats.constant)[0]
            log.warning("%s: %d observation column(s) are constant in the data (%s): they carry no information and "
                        "are held at 0 after normalisation, in training and at evaluation", path.name, len(cols),
                        _ranges(cols))
        check_inputs(self.trajs, self.stats, self.rtg_scale, str(path))
        lengths = np.array([len(t) for t in self.trajs])
        log.info("%s: %d transitions, %d trajectories (length %d-%d), obs %d, act %d", path.name,
                 lengths.sum(), len(lengths), lengths.min(), lengths.max(), self.obs_dim, self.act_dim)

    def state_dict(self) -> dict:
        """The state statistics the model was trained with (into the checkpoint)."""
        s = self.stats  # tensors: a checkpoint is loaded with weights_only, which refuses numpy arrays
        return {} if s is None else {k: torch.from_numpy(np.asarray(v)) for k, v in
                                     (("state_mean", s.mean), ("state_std", s.std), ("state_constant", s.constant))}

    def load_state_dict(self, state: dict) -> None:
        """A resumed or tested run normalises with the checkpoint's statistics, not the data's."""
        if "state_mean" in state:
            self.stats = StateStats(*(state[k].cpu().numpy() for k in ("state_mean", "state_std", "state_constant")))

    @property
    def longest_episode(self) -> int:
        """Steps of the longest trajectory (its time steps must fit the model's embedding)."""
        return max(len(t) for t in self.trajs)

    def train_dataloader(self) -> DataLoader:
        ds = WindowDataset(self.trajs, self.stats, self.context_len, self.rtg_scale)
        lengths = np.array([len(x) for x in self.trajs])
        sampler = WindowSampler(lengths, self.context_len, self.steps_per_epoch * self.batch_size, seed=self.seed,
                                batch_size=self.batch_size, sampling=self.sampling, window_start=self.window_start)
        # resumable mid-epoch: the window order depends on (seed, epoch) only (aaren_bench/resume.py);
        # under several processes each takes its share of every global batch of that order
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, seed=self.seed,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               world=process_share(self.trainer))

    def _episodes(self) -> DataLoader:
        """Episode indices; under several processes each runs its share, none twice."""
        rank, world = process_share(self.trainer)
        return eval_loader(torch.arange(self.eval_episodes), batch_size=self.eval_batch, rank=rank, world=world)

    def val_dataloader(self):
        """The evaluation after every epoch (``task.eval_curve``); none without it."""
        return self._episodes() if self.eval_curve else []

    def test_dataloader(self) -> DataLoader:
        return self._episodes()


def _ranges(cols: np.ndarray) -> str:
    """[27, 28, ..., 110, 115] -> '27-110, 115'"""
    out, start = [], None
    for i, c in enumerate(cols):
        if start is None:
            start = c
        if i + 1 == len(cols) or cols[i + 1] != c + 1:
            out.append(f"{start}-{c}" if c > start else f"{c}")
            start = None
    return ", ".join(out)
