"""Event sequences: the in-memory form every loader produces, its checks, splits and batches, and
the datamodule that serves them (:class:`EventDataModule`).

A dataset is an :class:`EventSeqs`: for each sequence, strictly increasing absolute event
times, 0-based integer marks in ``[0, num_marks)``, and an observation window
``[t_start, t_end]`` that contains every event. The likelihood of a sequence is that of
its events *and* of seeing no further event in ``(t_last, t_end]`` (the survival term).

Bad input raises :class:`EventDataError` (a ``ValueError``) naming the sequence and what
to do; nothing is silently repaired. Times are float64 here but enter the model in float32
(``collate``), so beyond order and finiteness a window must span at most float32's largest
value (3.4e38) and every inter-event time must be at least its smallest normal one
(1.2e-38), which would otherwise become an infinite time or a zero gap. Two documented options relax the checks:
``tie_eps`` (replace zero inter-event times by a small positive gap) and ``drop_empty``
(drop sequences without events).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from aaren_bench.data.checks import F32_MAX
from aaren_bench.distributed import process_share
from aaren_bench.errors import DataError
from aaren_bench.resume import resumable_loader

__all__ = ["EventDataError", "EventDataModule", "EventSeqs", "collate", "split_sequences"]

F32_TINY = float(np.finfo(np.float32).tiny)  # 1.2e-38: a smaller positive gap is 0 or subnormal in float32


class EventDataError(DataError):
    """Event data that breaks an assumption of the model (ordering, marks, masks, ...)."""


@dataclass
class EventSeqs:
    """Variable-length marked event sequences.

    times: list of (n_s,) float64 absolute event times, strictly increasing
    marks: list of (n_s,) int64 marks in [0, num_marks)
    t_start, t_end: (S,) float64 observation window of each sequence
    end_marks: (S,) int64 or None: the mark a Meta TPP file stores at its window-end entry
        (0-based; -1 for its padding value 0). Only Meta TPP's accuracy formula reads it
        (``likelihood.metric_sums``); None (the default) counts as -1 everywhere.
    """

    times: list
    marks: list
    t_start: np.ndarray
    t_end: np.ndarray
    num_marks: int
    end_marks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.times)

    @property
    def n_events(self) -> int:
        return int(sum(len(t) for t in self.times))

    def subset(self, idx) -> "EventSeqs":
        idx = list(idx)
        return EventSeqs(
            [self.times[i] for i in idx],
            [self.marks[i] for i in idx],
            self.t_start[idx],
            self.t_end[idx],
            self.num_marks,
            None if self.end_marks is None else self.end_marks[idx],
        )

    def inter_times(self) -> list:
        """(n_s,) gaps tau_i = t_i - t_{i-1} with t_0 = t_start, per sequence."""
        return [np.diff(t, prepend=t0) for t, t0 in zip(self.times, self.t_start)]

    def mean_inter_time(self) -> float:
        gaps = np.concatenate(self.inter_times()) if len(self) else np.zeros(0)
        if gaps.size == 0:
            raise EventDataError("cannot compute a time scale from a split without events")
        return float(gaps.mean())

    @classmethod
    def build(
        cls,
        times,
        marks=None,
        t_start=None,
        t_end=None,
        num_marks: int | None = None,
        tie_eps: float | None = None,
        drop_empty: bool = False,
        source: str = "event data",
        end_marks=None,
    ) -> "EventSeqs":
        """Check and assemble sequences; see the module docstring for what is checked.

        times: list of 1-D arrays of absolute times; marks: list of int arrays (None: all 0);
        t_start / t_end: per-sequence window (None: 0 / the last event time);
        num_marks: the declared number of marks (None: max mark + 1);
        end_marks: (S,) the window-end entry's mark in a Meta TPP file (see the class), or None.
        """
        times = [np.asarray(t, dtype=np.float64).reshape(-1) for t in times]
        S = len(times)
        if S == 0:
            raise EventDataError(f"{source}: no sequences")
        marks = [np.zeros(len(t), np.int64) for t in times] if marks is None else [np.asarray(m) for m in marks]
        if len(marks) != S:
            raise EventDataError(f"{source}: {S} time sequences but {len(marks)} mark sequences")
        t_start = np.zeros(S) if t_start is None else np.broadcast_to(np.asarray(t_start, np.float64), (S,)).copy()
        t_end_given = t_end is not None
        t_end = np.zeros(S) if t_end is None else np.broadcast_to(np.asarray(t_end, np.float64), (S,)).copy()

        keep = []
        for s, (t, m) in enumerate(zip(times, marks)):
            where = f"{source}, sequence {s}"
            if len(t) == 0:
                if drop_empty:
                    continue
                raise EventDataError(
                    f"{where} has no events. Empty sequences carry no event to predict; "
                    "remove them or pass drop_empty=true (dataset.drop_empty=true) to drop them."
                )
            if m.shape != t.shape:
                raise EventDataError(f"{where}: {t.shape[0]} times but {m.shape[0]} marks")
            if not np.all(np.isfinite(t)):
                i = int(np.argmax(~np.isfinite(t)))
                raise EventDataError(
                    f"{where}: event {i} has the time {float(t[i])!r}; times must be finite numbers "
                    f"({int((~np.isfinite(t)).sum())} NaN/inf time(s) in this sequence). Fix or remove those events."
                )
            for name, v in (("start", t_start[s]), ("end", t_end[s] if t_end_given else 0.0)):
                if not np.isfinite(v):
                    raise EventDataError(f"{where}: the window {name} is {float(v)!r}; it must be a finite number")
            if not np.issubdtype(m.dtype, np.integer):
                if not np.all(np.mod(m, 1) == 0):
                    raise EventDataError(f"{where}: marks must be integers, got {m.dtype} values such as {m[:3]}")
            m = m.astype(np.int64)
            with np.errstate(over="ignore"):
                gaps = np.diff(t)  # finite times can still differ by more than float64 holds
            if np.any(gaps < 0):
                i = int(np.argmax(gaps < 0)) + 1
                raise EventDataError(
                    f"{where}: times must be increasing, but event {i} at t={t[i]!r} comes before event {i - 1} "
                    f"at t={t[i - 1]!r} (a negative inter-event time). Sort the events or fix the file."
                )
            if np.any(gaps == 0):
                if tie_eps is None:
                    i = int(np.argmax(gaps == 0)) + 1
                    raise EventDataError(
                        f"{where}: events {i - 1} and {i} share the time {t[i]!r} (a zero inter-event time, which "
                        "has zero density under the log-normal model). Pass tie_eps=<small gap> "
                        "(dataset.tie_eps=1e-6) to separate tied events by that gap."
                    )
                t = _separate_ties(t, tie_eps)
                gaps = np.diff(t)
            if np.any(gaps < F32_TINY):
                i = int(np.argmax(gaps < F32_TINY)) + 1
                raise EventDataError(
                    f"{where}: events {i - 1} and {i} are {float(gaps[i - 1]):.3g} apart, below float32's smallest "
                    f"normal number {F32_TINY:.3g}: the gap becomes 0 in training (zero density). Rescale the times "
                    "(e.g. to coarser units) or pass tie_eps=<small gap> (dataset.tie_eps) to separate such events."
                )
            if t_start[s] > t[0]:
                raise EventDataError(f"{where}: the first event t={t[0]!r} is before the window start {t_start[s]!r}")
            if not t_end_given:
                t_end[s] = t[-1]
            elif t_end[s] < t[-1]:
                raise EventDataError(f"{where}: the last event t={t[-1]!r} is after the window end {t_end[s]!r}")
            with np.errstate(over="ignore"):
                span = t_end[s] - t_start[s]
            if not span <= F32_MAX:
                raise EventDataError(
                    f"{where}: the window [{t_start[s]:.3g}, {t_end[s]:.3g}] spans {span:.3g} time units, beyond "
                    f"float32's range {F32_MAX:.3g}: event times and gaps would become inf in training. Rescale the "
                    "times (e.g. to coarser units, or relative to the window start)."
                )
            times[s], marks[s] = t, m
            keep.append(s)
        if not keep:
            raise EventDataError(f"{source}: every sequence is empty")

        all_marks = np.concatenate([marks[s] for s in keep])
        lo, hi = int(all_marks.min()), int(all_marks.max())
        if num_marks is None:
            num_marks = hi + 1
        if lo < 0 or hi >= num_marks:
            bad = lo if lo < 0 else hi
            raise EventDataError(
                f"{source}: mark {bad} is outside the declared range [0, {num_marks}) "
                f"(marks span {lo}..{hi}). Check dataset.num_marks or the file's mark indexing."
            )
        ends = None if end_marks is None else np.asarray(end_marks, np.int64).reshape(S)[keep]
        return cls([times[s] for s in keep], [marks[s] for s in keep], t_start[keep], t_end[keep], int(num_marks), ends)


def _separate_ties(t: np.ndarray, eps: float) -> np.ndarray:
    """Shift every event forward so that consecutive gaps are >= eps (documented handling of ties)."""
    if eps <= 0:
        raise EventDataError(f"tie_eps must be positive, got {eps}")
    out = t.copy()
    for i in range(1, len(out)):
        if out[i] - out[i - 1] < eps:
            out[i] = out[i - 1] + eps
    return out


def split_sequences(seqs: EventSeqs, split) -> dict[str, EventSeqs]:
    """Split by sequence, in file order (as Meta TPP does).

    split: [train, val] either as fractions (test = the rest) or as counts (> 1).
    Fractions use Meta TPP's rounding: n_train = int(S * f_train), n_val = int(S * f_val).
    """
    S = len(seqs)
    a, b = float(split[0]), float(split[1])
    if a > 1 or b > 1:
        n_tr, n_va = int(a), int(b)
    else:
        n_tr, n_va = int(S * a), int(S * b)
    if n_tr <= 0 or n_va <= 0 or n_tr + n_va >= S:
        raise EventDataError(f"split {list(split)} of {S} sequences leaves an empty train, val or test part")
    return {
        "train": seqs.subset(range(0, n_tr)),
        "val": seqs.subset(range(n_tr, n_tr + n_va)),
        "test": seqs.subset(range(n_tr + n_va, S)),
    }


# ``collate`` pads every sequence on the right: the promise the model passes to its backbone
PADDING = "right"


def collate(seqs: EventSeqs, idx) -> dict[str, torch.Tensor]:
    """Pad sequences ``idx`` into one batch (N = the longest of them).

    times (B, N) float32, time since the window start;
    dts (B, N) float32, inter-event times tau_i (tau_1 from the window start), computed in float64;
    marks (B, N) int64 (0 at padding); mask (B, N) bool, True at events;
    last_gap (B,) float32, t_end - t_last (the interval of the survival term);
    end_mark (B,) int64, the window-end entry's mark in a Meta TPP file, -1 where none.
    """
    idx = list(idx)
    B = len(idx)
    N = max(len(seqs.times[i]) for i in idx)
    times = np.zeros((B, N))
    dts = np.ones((B, N))  # padding gets 1 so that log(dt) stays finite; masked out everywhere
    marks = np.zeros((B, N), np.int64)
    mask = np.zeros((B, N), bool)
    last_gap = np.zeros(B)
    end_mark = np.full(B, -1, np.int64) if seqs.end_marks is None else seqs.end_marks[idx].astype(np.int64)
    for b, i in enumerate(idx):
        t, t0 = seqs.times[i], seqs.t_start[i]
        n = len(t)
        times[b, :n] = t - t0
        dts[b, :n] = np.diff(t, prepend=t0)
        marks[b, :n] = seqs.marks[i]
        mask[b, :n] = True
        last_gap[b] = seqs.t_end[i] - t[-1]
    f32 = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return {
        "times": f32(times),
        "dts": f32(dts),
        "marks": torch.from_numpy(marks),
        "mask": torch.from_numpy(mask),
        "last_gap": f32(last_gap),
        "end_mark": torch.from_numpy(end_mark),
    }


class _Index(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class InMemory:
    """Splits already in memory (generated or built by hand), in the place of ``datasets.EventFiles``."""

    def __init__(self, splits: dict[str, EventSeqs], source: dict | None = None):
        self.splits, self.source = splits, source
        self.num_marks = splits["train"].num_marks

    def fetch(self) -> None:
        pass

    def read(self) -> tuple[dict[str, EventSeqs], dict | None]:
        return self.splits, self.source


class EventDataModule(L.LightningDataModule):
    """The train / val / test sequences of ``files`` (a ``datasets.EventFiles``, or :class:`InMemory`
    splits): ``prepare_data`` (once per node) downloads, ``setup`` reads, once per process.

    ``num_marks`` (the catalog's, known before any read) sizes the model and is checked against
    the data. ``time_scale``, the mean inter-event time of the training split, is computed in
    ``setup``; the module copies it into the model (``EventModule.setup``) and it travels in the
    checkpoint (``state_dict``): a resumed or tested run keeps the scale it started with.
    """

    def __init__(self, files, *, num_marks: int | None = None, batch_size: int = 16, num_workers: int = 0):
        super().__init__()
        if isinstance(files, dict):
            files = InMemory(files)
        self.files, self.batch_size, self.num_workers = files, batch_size, num_workers
        self.num_marks = int(num_marks if num_marks is not None else files.num_marks)
        self.splits: dict[str, EventSeqs] | None = None
        self.data_source: dict | None = None  # what was read (datasets.Loaded.source): into the record
        self.time_scale: float | None = None

    def prepare_data(self) -> None:
        self.files.fetch()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits, self.data_source = self.files.read()
        marks = splits["train"].num_marks
        if marks != self.num_marks:
            raise EventDataError(f"the data has {marks} marks, but the catalog says {self.num_marks}: the file is not "
                                 f"the catalog's (tasks/events/catalog.py); fetch it again or correct the catalog entry")
        self.splits = splits
        self.time_scale = self.time_scale or splits["train"].mean_inter_time()  # restored from a checkpoint: kept

    def state_dict(self) -> dict:
        return {} if self.time_scale is None else {"time_scale": float(self.time_scale)}

    def load_state_dict(self, state: dict) -> None:
        if "time_scale" in state:
            self.time_scale = float(state["time_scale"])

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        seqs = self.splits[name]
        # training resumable mid-epoch (order from (seed, epoch) only); evaluation in order
        return resumable_loader(
            _Index(len(seqs)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate, seqs),  # a partial, not a lambda: worker processes pickle it
            drop_last=False,
            world=process_share(self.trainer),  # this process's share of each global batch / of the sequences
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
