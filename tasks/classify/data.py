"""UEA data: read ``.ts`` files, check them, pad with a mask, split, standardise.

The task keys that shape the splits (docs/protocol/classify.md; the protocol files in
conf/task_protocol/ set them):
- ``validation``: ``holdout`` (the suite's) a stratified part of TRAIN validates; ``test``
  (the Time-Series-Library's) the TEST split doubles as validation, so early stopping and
  model selection see the test set.
- ``statistics``: ``train`` (the suite's) every split standardised with the training part's
  mean and std; ``per_split`` (the library's) each split with its own. ``std_ddof``: 0 (the
  population std) or 1 (pandas' sample std, the library's).
- ``instance_norm_datasets``: datasets whose series are then normalised one by one
  (:func:`instance_norm`; the library does it for EthanolConcentration only).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from aaren_bench.data.checks import F32_MAX, F32_SQUARE_MAX, beyond, refetch_hint
from aaren_bench.distributed import process_share
from aaren_bench.errors import DataError
from aaren_bench.resume import resumable_loader

log = logging.getLogger("aaren_bench")

NAN_POLICIES = ("interpolate", "error")
VALIDATIONS = ("holdout", "test")
STATISTICS = ("train", "per_split")


@dataclass
class Series:
    """Variable-length multivariate series of one split."""

    values: list[np.ndarray]  # each (length_i, channels), float32
    labels: np.ndarray  # (n,) str; each item a plain Python str when listed (str(label))

    @property
    def channels(self) -> int:
        return self.values[0].shape[1]


class UEADataError(DataError):
    """A UEA ``.ts`` file (or a TRAIN/TEST pair) cannot be used as it is; the message says what to do."""


def read_ts(path: Path, nan_policy: str = "interpolate") -> Series:
    """Read a UEA ``.ts`` file with sktime's reader; check shapes and missing values.

    Missing values are NaN, inf/-inf, and numbers beyond float32's range (they would become
    inf in training). nan_policy: ``interpolate`` (linear inside a series, then the nearest
    value at the ends, with a warning) or ``error``.
    """
    from sktime.datasets import load_from_tsfile

    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"task.nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    path = Path(path)
    try:
        X, y = load_from_tsfile(str(path), return_data_type="nested_univ")
    except Exception as e:  # sktime raises several types for a malformed, binary or empty file
        raise UEADataError(f"could not read {path} as a UEA .ts file ({type(e).__name__}: {e}). The file may be "
                           f"truncated, corrupt or not a .ts file at all: {_refetch(path)}.") from e
    if len(X) == 0 or X.shape[1] == 0:
        raise UEADataError(f"{path} holds no series (or no dimensions) after its @data line: {_refetch(path)}.")
    values, n_nan, n_inf, n_series = [], 0, 0, 0
    for i in range(len(X)):
        chans = [np.asarray(X.iloc[i, c], dtype=np.float64) for c in range(X.shape[1])]
        lengths = {len(c) for c in chans}
        if len(lengths) != 1:
            raise UEADataError(f"{path}: series {i} has dimensions of different lengths {sorted(lengths)}")
        arr = np.stack(chans, axis=1)  # (length, channels)
        missing = beyond(arr, F32_MAX)  # NaN, inf, or inf once cast to float32
        if missing.any():
            nan = np.isnan(arr)
            if nan_policy == "error":
                step, dim = (int(a[0]) for a in np.nonzero(missing))
                kind = "a NaN value" if nan[step, dim] else "an infinite value (inf/-inf, or beyond float32's range)"
                raise UEADataError(
                    f"{path}: series {i}, dimension {dim} has {kind} at step {step} ({float(arr[step, dim])!r}); "
                    f"{int(missing.sum())} missing value(s) in that series. Fix the file, or pass "
                    f"task.nan_policy=interpolate to fill missing values by linear interpolation."
                )
            n_series, n_nan, n_inf = n_series + 1, n_nan + int(nan.sum()), n_inf + int((missing & ~nan).sum())
            arr = _interpolate(np.where(missing, np.nan, arr), f"{path}: series {i}")
        values.append(arr.astype(np.float32))
    if n_series:
        msg = (f"{path.name}: {n_series} series had missing values ({n_nan} NaN, {n_inf} inf or beyond float32's "
               f"range), filled by linear interpolation (task.nan_policy=interpolate; =error refuses them)")
        warnings.warn(msg, stacklevel=2)
    return Series(values, np.asarray([str(label) for label in y]))


def _refetch(path: Path) -> str:
    return refetch_hint(path, "classify")


def _interpolate(arr: np.ndarray, where: str = "a series") -> np.ndarray:
    out = arr.copy()
    t = np.arange(len(arr))
    for c in range(arr.shape[1]):
        ok = ~np.isnan(arr[:, c])
        if not ok.any():
            raise UEADataError(f"{where}, dimension {c} has no finite value: nothing to interpolate from. "
                               f"Fix or remove that series.")
        out[:, c] = np.interp(t, t[ok], arr[ok, c])
    return out


# every batch's mask is padded on the right (``pad``): the promise the model passes to its backbone
PADDING = "right"


def pad(values: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to ``max_len``: x (n, max_len, channels) with zeros, mask (n, max_len) True = real."""
    n, C = len(values), values[0].shape[1]
    x = np.zeros((n, max_len, C), dtype=np.float32)
    mask = np.zeros((n, max_len), dtype=bool)
    for i, v in enumerate(values):
        L_ = min(len(v), max_len)
        x[i, :L_] = v[:L_]
        mask[i, :L_] = True
    return x, mask


def fit_scaler(x: np.ndarray, mask: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) over the real (unpadded) time steps of every series.

    ``ddof=1`` gives the sample std (the Time-Series-Library standardises with pandas'
    ``DataFrame.std()`` over the rows of a split, i.e. its real steps, before padding).
    A constant channel gets std 1 (it standardises to 0, as the library's ``/ (std + eps)``).
    """
    real = x[mask].astype(np.float64)  # (total steps, channels); float32 sums and squares overflow
    mean, std = real.mean(0), real.std(0, ddof=ddof if len(real) > ddof else 0)
    return mean, np.where(std > 0, std, 1.0)


def standardize(x: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: np.ndarray, where: str) -> np.ndarray:
    """(n, L, C) -> (n, L, C) float32: (x - mean) / std at real steps, 0 at padding, computed in float64.

    A value far outside the statistics' spread (a dimension nearly constant in the training
    part) can standardise past what float32 training survives: an error naming the series.
    """
    z = np.where(mask[..., None], (x.astype(np.float64) - mean) / std, 0.0)
    bad = beyond(z, F32_SQUARE_MAX)
    if bad.any():
        i, step, c = (int(a[0]) for a in np.nonzero(bad))
        raise UEADataError(
            f"{where}: {int(bad.sum())} standardised value(s) exceed {F32_SQUARE_MAX:.2g} in magnitude (float32 "
            f"training squares them into inf); first at series {i}, dimension {c}, step {step}: ({x[i, step, c]:g} "
            f"- mean {mean[c]:g}) / std {std[c]:g}. The dimension is nearly constant in the training part; "
            f"fix the data or pass task.standardize=false."
        )
    return z.astype(np.float32)


def instance_norm(x: np.ndarray, mask: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """(n, L, C) -> (n, L, C) float32: each series normalised by itself, 0 at padding.

    The Time-Series-Library's ``UEAloader.instance_norm`` (EthanolConcentration only, after
    the split's standardisation, on the real steps of one series ``(length, C)``): it
    subtracts each channel's mean over time, then divides each STEP by the spread across
    the channels at that step, ``sqrt(var over channels (ddof 0) + 1e-5)`` (its ``var`` is
    taken over dimension 1, the channels, not over time). Reproduced as it is.
    """
    m = mask[..., None]  # (n, L, 1)
    x64 = x.astype(np.float64)
    steps = np.maximum(m.sum(1, keepdims=True), 1)  # (n, 1, 1)
    centred = x64 - np.where(m, x64, 0.0).sum(1, keepdims=True) / steps  # channel means over real steps
    spread = np.sqrt(centred.var(axis=2, keepdims=True) + eps)  # (n, L, 1): across channels, per step
    return np.where(m, centred / spread, 0.0).astype(np.float32)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of each class to validation (at least one when the class has 2+)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        va.extend(idx[:k])
        tr.extend(idx[k:])
    return np.sort(np.array(tr, dtype=int)), np.sort(np.array(va, dtype=int))


class UEADataModule(L.LightningDataModule):
    """The splits of one UEA dataset.

    Two ways to give the files: ``train_path`` and ``test_path`` (read at once), or ``files``, the
    registry's files of the dataset (:class:`aaren_bench.data.RegistryFiles`) with ``sizes``, the
    catalog's ``channels``, ``classes`` and ``max_len``: then the files are downloaded and verified
    in ``prepare_data`` (once per node), read in ``setup`` and checked against those sizes, and
    building the model reads nothing.
    """

    def __init__(self, train_path: Path | None = None, test_path: Path | None = None, *, name: str,
                 files=None, sizes: dict | None = None, validation: str = "holdout",
                 val_fraction: float = 0.2, split_seed: int = 0, standardize: bool = True,
                 statistics: str = "train", std_ddof: int = 0, instance_norm: bool = False,
                 batch_size: int = 16, num_workers: int = 0, nan_policy: str = "interpolate"):
        super().__init__()
        if validation not in VALIDATIONS:
            raise ValueError(f"task.validation must be one of {VALIDATIONS}, got {validation!r}")
        if statistics not in STATISTICS:
            raise ValueError(f"task.statistics must be one of {STATISTICS}, got {statistics!r}")
        if std_ddof not in (0, 1):
            raise ValueError(f"task.std_ddof must be 0 or 1, got {std_ddof!r}")
        if (train_path is None) == (files is None) or (files is not None and not sizes):
            raise ValueError("give train_path and test_path, or files (the registry's) with the catalog's sizes")
        self.name, self.validation, self.statistics = name, validation, statistics
        self.val_fraction, self.split_seed, self.standardize = val_fraction, split_seed, standardize
        self.std_ddof, self.instance_norm = int(std_ddof), bool(instance_norm)
        self.batch_size, self.num_workers, self.nan_policy = batch_size, num_workers, nan_policy
        self.files, self.sizes = files, dict(sizes or {})
        self._train = self._test = None
        if files is None:
            self._read(Path(train_path), Path(test_path))
        else:
            self.n_channels, self.max_len = int(self.sizes["channels"]), int(self.sizes["max_len"])

    def _read(self, train_path: Path, test_path: Path) -> None:
        """Read and check both files; set the classes, the channels and the longest length."""
        train, test = read_ts(train_path, self.nan_policy), read_ts(test_path, self.nan_policy)
        name = self.name
        if train.channels != test.channels:
            raise UEADataError(f"{name}: TRAIN has {train.channels} dimensions but TEST has {test.channels}; "
                             f"the two files do not belong to the same dataset")
        self.classes = sorted({str(c) for c in train.labels})  # plain str: they are printed and recorded
        unknown = sorted({str(c) for c in test.labels} - set(self.classes))
        if unknown:
            raise UEADataError(
                f"{name}: TEST has labels never seen in TRAIN: {', '.join(map(repr, unknown))} (TRAIN's classes: "
                f"{', '.join(map(repr, self.classes[:30]))}{', ...' if len(self.classes) > 30 else ''}). "
                f"Check that the two files belong to the same dataset (fetch them again if they should)."
            )
        self.max_len = max(len(v) for v in train.values + test.values)
        self.n_channels = train.channels
        self._train, self._test = train, test

    def _check_sizes(self) -> None:
        """The files' sizes against the catalog's, with which the model was built; shorter series are
        padded to the catalog's length (a subset of the data), longer ones are refused."""
        found = {"channels": self.n_channels, "classes": len(self.classes), "max_len": self.max_len}
        wrong = {k: (v, found[k]) for k, v in self.sizes.items()
                 if k in found and (int(v) < found[k] if k == "max_len" else int(v) != found[k])}
        if wrong:
            raise UEADataError(
                f"{self.name}: the files do not have the catalog's sizes ("
                + ", ".join(f"{k}: catalog {a}, files {b}" for k, (a, b) in wrong.items())
                + "); fix the entry in tasks/classify/catalog.py, or fetch the right files"
            )
        self.max_len = int(self.sizes.get("max_len", self.max_len))

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self._train is not None else int(self.sizes["classes"])

    def prepare_data(self) -> None:
        if self.files is not None:  # download and verify, once per node (Lightning calls it on one process)
            self.files.fetch()

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        if self._train is None:  # the registry's files: read here, once, and checked against the catalog
            paths = self.files.paths()
            self._read(paths[f"{self.name}/{self.name}_TRAIN.ts"], paths[f"{self.name}/{self.name}_TEST.ts"])
            self._check_sizes()
        to_idx = {c: i for i, c in enumerate(self.classes)}
        xtr, mtr = pad(self._train.values, self.max_len)
        ytr = np.array([to_idx[c] for c in self._train.labels])
        xte, mte = pad(self._test.values, self.max_len)
        yte = np.array([to_idx[c] for c in self._test.labels])
        if self.validation == "holdout":
            tr, va = stratified_split(self._train.labels, self.val_fraction, self.split_seed)
            parts = {"train": (xtr[tr], mtr[tr], ytr[tr]), "val": (xtr[va], mtr[va], ytr[va]), "test": (xte, mte, yte)}
        else:  # the anchor's: no validation part, TEST validates (model selection sees the test set)
            parts = {"train": (xtr, mtr, ytr), "val": (xte, mte, yte), "test": (xte, mte, yte)}
        if not self.standardize:
            scalers = dict.fromkeys(parts)
        elif self.statistics == "train":
            stats = fit_scaler(*parts["train"][:2], ddof=self.std_ddof)
            scalers = dict.fromkeys(parts, stats)
        else:  # the anchor's: each split by its own statistics (val and test are the same series then)
            scalers = {k: fit_scaler(x, m, ddof=self.std_ddof) for k, (x, m, _) in parts.items()}
        for split, (x, m, y) in parts.items():
            if scalers[split] is not None:
                x = standardize(x, m, *scalers[split], where=f"{self.name} ({split} part)")
            if self.instance_norm:
                x = instance_norm(x, m)
            ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(y).long())
            setattr(self, f"{split}_set", ds)
        log.info("%s: %d train / %d val / %d test series, %d channels, length <= %d, %d classes "
                 "(validation %s, %s statistics%s)", self.name, len(self.train_set), len(self.val_set),
                 len(self.test_set), self.n_channels, self.max_len, self.n_classes, self.validation,
                 self.statistics, ", instance-normalised" if self.instance_norm else "")

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        # training: an order drawn from (seed, epoch) that a resumed run continues mid-epoch
        # under several processes: this one's share of each global batch / of the evaluated series
        return resumable_loader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                                drop_last=False, persistent_workers=self.num_workers > 0,
                                world=process_share(self.trainer))

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)
