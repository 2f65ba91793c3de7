"""Exact resume: what a checkpoint needs, beyond weights and loop counters, to continue a run
bit for bit.

A run killed at any step and resubmitted ends with the same weights and test metrics as a run
that was never interrupted (same device, same settings). Lightning's checkpoint already holds
the weights, the optimizer and scheduler states and the loop counters; three things are added:

- the order of the training data. :class:`EpochShuffle` draws the order of an epoch from
  (seed, epoch) alone, never from the global random state; :class:`ResumableLoader` is a
  ``DataLoader`` that Lightning's fit loop saves (``state_dict``: the epoch and the number of
  batches it has handed out) and restores mid-epoch (``load_state_dict``: the next epoch
  iteration skips the batches already trained on). Any sampler whose order depends on the
  epoch only (``set_epoch``) can be wrapped, e.g. RL's ``WindowSampler``.
- the random number generators (python, numpy, torch, CUDA): dropout masks and everything else
  drawn during training. :class:`RunState` saves them and sets them back right before the first
  training batch after the resume; between a checkpoint and the next batch an uninterrupted run
  draws nothing from them (the loaders carry their own generators), so the next batch sees the
  same state in both runs.
- the running sums of the training metrics logged per epoch, which Lightning does not keep
  (after a mid-epoch resume its epoch means would cover the later batches only);
- the training time already spent (``RunState.elapsed``), so the record's wall time counts
  every attempt, and the number of attempts.

Lightning runs only what is left of an epoch after a mid-epoch resume (its batch counter is in
the checkpoint); with a plain ``DataLoader`` those would be the *first* batches of a fresh
order, which is why the loader has to say where it stood.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger("aaren_bench")


def run_seed() -> int:
    """The run's seed: what ``seed_everything(cfg.seed)`` set at the start of the run (the initial
    seed of torch's default generator, which a saved and restored state keeps)."""
    return int(torch.initial_seed())


class EpochShuffle(Sampler[int]):
    """A random order of ``range(n)`` that depends only on (seed, epoch): the same in every run,
    before and after a resume, whatever else drew random numbers."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class PassThrough(Sampler[Any]):
    """A sampler wrapping ``self.sampler``: ``set_epoch`` and ``epoch`` are the wrapped one's."""

    sampler: Sampler

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))


class _Skipping(PassThrough):
    """Wraps a sampler: the next iteration starts ``skip`` items in (then skips nothing again).
    ``set_epoch`` and ``epoch`` are passed through, so Lightning sets the epoch as usual."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.skip = sampler, 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` that Lightning's fit loop can stop and restart mid-epoch.

    ``state_dict()`` is the epoch of the current pass and the number of batches handed out in it
    (Lightning does not fetch ahead from a loader of known length, so these are the batches
    trained on when a checkpoint is written); after ``load_state_dict()`` the next pass over that
    same epoch skips them, at the sampler (no data is read for nothing). The sampler's order must
    depend on the epoch only: :class:`EpochShuffle` by default (``shuffle``, ``seed``), or any
    sampler with ``set_epoch``. The loader draws worker seeds from its own generator, never from
    torch's global one (an iterator of a plain DataLoader takes one number from it).

    ``batch_size`` is the global batch; ``world=(rank, world size)`` makes this process's loader
    hand out its ``batch_size / world size`` share of every global batch of the one order
    (:class:`aaren_bench.distributed.GlobalBatchShare`), so the saved batch count means the same
    on any number of processes.
    """

    def __init__(self, dataset, *, batch_size: int = 1, shuffle: bool = True, seed: int | None = None,
                 sampler: Sampler | None = None, generator: torch.Generator | None = None,
                 world: tuple[int, int] = (0, 1), **kwargs):
        from aaren_bench.distributed import GlobalBatchShare

        seed = run_seed() if seed is None else int(seed)
        if sampler is None:
            sampler = EpochShuffle(len(dataset), seed, shuffle)
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        if kwargs.get("batch_sampler") is not None:
            raise ValueError("ResumableLoader batches its sampler itself; pass sampler= and batch_size=, not batch_sampler=")
        rank, size = world
        if size > 1:
            sampler = GlobalBatchShare(sampler, batch_size, rank, size)
            batch_size = sampler.share
        super().__init__(dataset, batch_size=batch_size, sampler=_Skipping(sampler), generator=generator, **kwargs)
        self._pass_epoch, self._handed_out, self._resume_at = 0, 0, None

    def __iter__(self):
        # a generator: nothing runs before the first batch is asked for, which is after Lightning
        # has set the sampler's epoch for this pass
        return self._batches()

    def _batches(self):
        epoch = self.sampler.epoch
        at, self._resume_at = self._resume_at, None
        skip = at["batches"] if at and at["epoch"] == epoch else 0
        self.sampler.skip = skip * self.batch_size
        self._pass_epoch, self._handed_out = epoch, skip
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._pass_epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def loader_workers(cap: int = 8) -> int:
    """Loader worker processes for this run (``task.num_workers: ${loader_workers:}``): none without
    CUDA (on a CPU run the workers would take the cores the model computes on), else the CPUs the
    job was given (``SLURM_CPUS_PER_TASK``, else this process's CPU affinity) less one for the
    training process, at most ``cap``."""
    if not torch.cuda.is_available():
        return 0
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    n = int(cpus) if cpus and cpus.isdigit() else len(os.sched_getaffinity(0))
    return max(0, min(cap, n - 1))


def resumable_loader(dataset, *, batch_size: int, shuffle: bool, world: tuple[int, int] = (0, 1),
                     **kwargs) -> DataLoader:
    """The loader of one split on process ``world = (rank, world size)``: a :class:`ResumableLoader`
    for training (``shuffle=True``; its share of each global batch), an evaluation loader in order
    otherwise (its share of the samples, none repeated: :func:`aaren_bench.distributed.eval_loader`).

    For GPU runs: batches in pinned memory when CUDA is there (the copy to the device can overlap
    compute), and worker processes kept across epochs when there are any (``num_workers``; the
    order still comes from the sampler in this process, so a resume stays exact)."""
    from aaren_bench.distributed import eval_loader

    kwargs.setdefault("pin_memory", torch.cuda.is_available())
    kwargs.setdefault("persistent_workers", kwargs.get("num_workers", 0) > 0)
    if shuffle:
        return ResumableLoader(dataset, batch_size=batch_size, world=world, **kwargs)
    return eval_loader(dataset, batch_size=batch_size, rank=world[0], world=world[1], **kwargs)


# --- random number generators ---------------------------------------------------------------
# Kept as tensors and plain numbers, so that a checkpoint loads with torch.load(weights_only=True).

def rng_states() -> dict:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        else:
            log.warning("the checkpoint holds the random state of %d CUDA devices, this machine has %d: "
                        "the CUDA random state is not restored (the resumed run is not bit-exact)",
                        len(states["cuda"]), torch.cuda.device_count())


class RunState(L.Callback):
    """Saves in every checkpoint what Lightning leaves out: the random states, the running sums of
    the training metrics logged per epoch (``self.log(..., on_epoch=True)``) and the training time
    so far. On a resume, the random states are set back right before the first training batch and
    the epoch sums of an interrupted epoch are added back after it, so that epoch's logged means
    are those of all its batches.

    ``elapsed()`` is the fit time of every attempt up to its last checkpoint plus this attempt's
    (the work a killed attempt did after its last checkpoint was done again and is not counted
    twice); ``attempts`` counts the starts of fit that trained from this cell's checkpoints.
    """

    def __init__(self):
        self.before_s, self.attempts = 0.0, 1
        self._t0: float | None = None
        self._trainer = None
        self._pending_rng: dict | None = None
        self._pending_sums: dict | None = None
        self._restored = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self._t0 is None:
            self._t0 = time.perf_counter()
        self._trainer = trainer

    def elapsed(self) -> float:
        return self.before_s + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def state_dict(self) -> dict:
        state = {"rng": rng_states(), "elapsed_s": self.elapsed(), "attempts": self.attempts}
        if self._trainer is not None:
            state["epoch_sums"] = {"epoch": int(self._trainer.current_epoch), "sums": _epoch_sums(self._trainer)}
        return state

    def load_state_dict(self, state: dict) -> None:
        if self._trainer is not None and self._trainer.state.fn != "fit":
            return  # trainer.test(ckpt_path=...) loads the weights of a checkpoint, not its run state
        self._pending_rng = state.get("rng")
        self._pending_sums = state.get("epoch_sums")
        self.before_s = float(state.get("elapsed_s", 0.0))
        self.attempts = int(state.get("attempts", 1)) + 1
        self._restored = True

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path and not self._restored:
            log.warning("%s holds no random state (written by an older version): training continues, but not "
                        "bit for bit as an uninterrupted run would", trainer.ckpt_path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # after the first batch of a resumed epoch has logged (and so registered) its metrics
        if self._pending_sums is not None:
            if self._pending_sums["epoch"] == trainer.current_epoch:  # a checkpoint of an epoch end: nothing
                _add_epoch_sums(trainer, self._pending_sums["sums"])
            self._pending_sums = None


def _epoch_results(trainer):
    return trainer.fit_loop.epoch_loop._results  # Lightning's accumulators of the training epoch's logged values


def _epoch_sums(trainer) -> dict:
    """{key: {"value", "count"}} of every tensor metric of the running training epoch logged with on_epoch=True."""
    out = {}
    for key, m in _epoch_results(trainer).items():
        if m.is_tensor and m.meta.on_epoch and not m.has_reset:
            out[key] = {"value": m.value.detach().cpu().clone(),
                        "count": m.cumulated_batch_size.detach().cpu().clone() if m.meta.is_mean_reduction else None}
    return out


def _add_epoch_sums(trainer, sums: dict) -> None:
    """Fold the sums saved before the resume into the accumulators (the earlier part first, so
    the float additions happen as in the uninterrupted run: 0 + x is x, and a + b is b + a)."""
    results = _epoch_results(trainer)
    for key, saved in sums.items():
        m = results.get(key)
        if m is None or not m.is_tensor:
            log.warning("the training metric %s of the interrupted epoch is not logged after the resume: its epoch "
                        "value covers the batches after the resume only", key)
            continue
        value = saved["value"].to(m.value.device)
        if m.meta.is_mean_reduction:
            m.value = value + m.value
            m.cumulated_batch_size = saved["count"].to(m.cumulated_batch_size.device) + m.cumulated_batch_size
        elif m.meta.is_max_reduction or m.meta.is_min_reduction:
            m.value = m.meta.reduce_fx(value, m.value)
        elif m.meta.is_sum_reduction:
            m.value = value + m.value
        m._computed = None



_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RelativeCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose state holds its checkpoints' paths relative to its folder.

    Lightning keeps absolute paths (``best_model_path``, ...) in every checkpoint, so a runs folder
    moved, or mounted elsewhere on another node, resumes pointing at files that are gone, and a
    copied folder tests the original folder's weights. Here the paths are stored relative to
    ``dirpath`` and read back against the folder the callback has now; the absolute paths of an
    older checkpoint are moved from its old folder to the current one the same way.
    """

    @property
    def state_key(self) -> str:
        key = super().state_key  # the key of a plain ModelCheckpoint: older checkpoints load into it
        return key.replace(type(self).__qualname__, "ModelCheckpoint", 1) if type(self) is RelativeCheckpoint else key

    def _relative(self, path):
        if not path or not self.dirpath or not os.path.isabs(str(path)):
            return path
        return os.path.relpath(path, self.dirpath)

    def _here(self, path, old_dir):
        if not path or not self.dirpath:
            return path
        path = str(path)
        if os.path.isabs(path):
            if not old_dir or not path.startswith(str(old_dir).rstrip(os.sep) + os.sep):
                return path  # somewhere else altogether: left as it is
            path = os.path.relpath(path, old_dir)
        return os.path.join(self.dirpath, path)

    def state_dict(self) -> dict:
        state = super().state_dict()
        for key in _PATH_KEYS:
            state[key] = self._relative(state[key])
        state["best_k_models"] = {self._relative(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = "."  # the folder the checkpoint is read from
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        old_dir = state.get("dirpath")
        old_dir = old_dir if old_dir and os.path.isabs(str(old_dir)) else None
        for key in _PATH_KEYS:
            if key in state:
                state[key] = self._here(state[key], old_dir)
        state["best_k_models"] = {self._here(k, old_dir): v for k, v in (state.get("best_k_models") or {}).items()}
        state["dirpath"] = self.dirpath  # so that Lightning restores the scores as well as the paths
        super().load_state_dict(state)


class MidEpochCheckpoint(RelativeCheckpoint):
    """A checkpoint written during an epoch (``checkpoint_every_min``: ``train_time_interval``), but
    never after the last batch of an epoch: Lightning resumes from such a checkpoint past the
    epoch's end without running it (validation, epoch-end logging and schedulers, early stopping).
    A save due there waits for the epoch-end checkpoint (or, without one, for the next batch)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the checkpoint is written to a temporary file
    beside it, flushed to disk, then renamed over the old one. A full disk or a kill mid-write
    leaves the previous checkpoint intact and a ``.<name>.<pid>.tmp`` that the next start removes;
    a torn ``best.ckpt`` or ``last.ckpt`` cannot exist."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
