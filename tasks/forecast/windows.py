"""Time-Series-Library splits, the train-only scaler, and stride-1 windows.

Splits (row ranges [begin, end) of the file):
- ``ett_hour``: 12 / 4 / 4 months of 30 days x 24 h: train [0, 8640), val [8640, 11520),
  test [11520, 14400); rows after 14400 are not used.
- ``ett_minute``: the same with 4 rows per hour (x4).
- ``ratio``: 70 / 20 % for train / test (``int`` rounding down), val the rest, in time order.
Validation and test ranges start ``seq_len`` rows earlier so that their first window's input
lies in the previous part. A window starting at row i of a part has input rows
[i, i + seq_len) and target rows [i + seq_len, i + seq_len + pred_len).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from aaren_bench.data.checks import F32_SQUARE_MAX, beyond
from aaren_bench.errors import DataError
from tasks.forecast.frame import ForecastDataError

SPLITS = ("ett_hour", "ett_minute", "ratio")
PARTS = ("train", "val", "test")


class SplitError(DataError):
    """The series is too short for the chosen split and window."""


def split_borders(n_rows: int, split: str, seq_len: int, pred_len: int) -> dict[str, tuple[int, int]]:
    """Row ranges {part: (begin, end)} as TSLib's data loaders, after checking every part has a window."""
    if split in ("ett_hour", "ett_minute"):
        per_hour = 1 if split == "ett_hour" else 4
        month = 30 * 24 * per_hour
        ends = (12 * month, 16 * month, 20 * month)
        if n_rows < ends[2]:
            raise SplitError(
                f"the {split} split needs {ends[2]} rows (12/4/4 months), the file has {n_rows}. Use the complete "
                f"ETT file, or dataset.split=ratio for another series."
            )
        begins = (0, ends[0] - seq_len, ends[1] - seq_len)
    elif split == "ratio":
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        begins = (0, n_train - seq_len, n_rows - n_test - seq_len)
        ends = (n_train, n_train + n_val, n_rows)
    else:
        raise ValueError(f"dataset.split must be one of {SPLITS}, got {split!r}")
    borders = {p: (b, e) for p, b, e in zip(PARTS, begins, ends)}
    for part, (b, e) in borders.items():
        if b < 0 or e - b < seq_len + pred_len:
            raise SplitError(
                f"too few rows: the {part} part spans rows [{b}, {e}) ({e - b} rows) but one window needs "
                f"seq_len + pred_len = {seq_len + pred_len} rows ({n_rows} rows in the file, split={split}). "
                f"Use a longer series or a shorter task.seq_len / task.pred_len."
            )
    return borders


def n_windows(n_rows_part: int, seq_len: int, pred_len: int) -> int:
    return n_rows_part - seq_len - pred_len + 1


@dataclass
class Scaler:
    """Per-channel standardisation with statistics of the training part only (as sklearn's StandardScaler)."""

    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,) population std; 1 where a channel is constant

    @classmethod
    def fit(cls, train: np.ndarray) -> "Scaler":
        x = train.astype(np.float64)
        std = x.std(0)
        return cls(mean=x.mean(0), std=np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(T, C) -> (T, C) float32 standardised values, computed in float64.

        A value far outside the training part's spread (a channel nearly constant in training)
        can standardise past what float32 training survives; that is an error naming the cell.
        """
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        bad = beyond(z, F32_SQUARE_MAX)
        if bad.any():
            r, c = (int(i[0]) for i in np.nonzero(bad))
            raise ForecastDataError(
                f"{int(bad.sum())} standardised value(s) exceed {F32_SQUARE_MAX:.2g} in magnitude (float32 training "
                f"squares them into inf); first at row {r}, channel {c} (file order, target last): "
                f"({x[r, c]:g} - train mean {self.mean[c]:g}) / train std {self.std[c]:g} = {z[r, c]:g}. The channel is "
                f"nearly constant in the training part but not later; fix the file or drop the channel."
            )
        return z.astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return (x * self.std + self.mean).astype(np.float32)


class WindowDataset(Dataset):
    """Stride-1 windows of one part.

    Item: x (seq_len, C), x_mark (seq_len, F), y (pred_len, C), y_mark (label_len + pred_len, F)
    (y_mark: calendar features of the last label_len input steps and the horizon, as TSLib's seq_y_mark).
    """

    def __init__(self, values: np.ndarray, marks: np.ndarray, seq_len: int, label_len: int, pred_len: int):
        if label_len > seq_len:
            raise ValueError(f"task.label_len ({label_len}) must not exceed task.seq_len ({seq_len})")
        self.values = torch.as_tensor(values, dtype=torch.float32)  # (T_part, C)
        self.marks = torch.as_tensor(marks, dtype=torch.float32)  # (T_part, F)
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.n = n_windows(len(values), seq_len, pred_len)

    def __len__(self) -> int:
        return max(self.n, 0)

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        s = i + self.seq_len
        return (
            self.values[i:s],
            self.marks[i:s],
            self.values[s : s + self.pred_len],
            self.marks[s - self.label_len : s + self.pred_len],
        )
