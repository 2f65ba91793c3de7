"""The forecasting datamodule: registry file -> checked series -> scaled parts -> window loaders."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from aaren_bench.data import RegistryFiles
from aaren_bench.distributed import process_share
from aaren_bench.errors import DataError
from aaren_bench.resume import resumable_loader
from tasks.forecast.frame import FREQ_FEATURES, read_series, time_features
from tasks.forecast.windows import Scaler, WindowDataset, split_borders

log = logging.getLogger("aaren_bench")


class ForecastDataModule(L.LightningDataModule):
    """Windows of one dataset under the Time-Series-Library protocol.

    ``path`` is the CSV, or the registry's files of the dataset (:class:`aaren_bench.data.RegistryFiles`):
    downloaded and verified in ``prepare_data`` (once per node), read in ``setup``. The scaler is
    fitted on the training rows only and applied to every part; metrics are computed in that
    scaled space. ``features``: ``M`` every channel, ``S`` the target alone (``n_channels`` is
    then 1). ``drop_last`` {part: bool}: whether that part's loader drops a last smaller batch
    (default: none does).
    """

    def __init__(
        self,
        path: str | Path | RegistryFiles,
        split: str,
        seq_len: int = 96,
        label_len: int = 48,
        pred_len: int = 192,
        freq: str = "h",
        target: str = "OT",
        n_channels: int | None = None,
        sentinel: float | None = None,
        sentinel_policy: str = "keep",
        batch_size: int = 32,
        num_workers: int = 0,
        features: str = "M",
        drop_last: dict[str, bool] | None = None,
    ):
        super().__init__()
        self.files = path if isinstance(path, RegistryFiles) else None
        self.path = None if self.files else Path(path)
        self.split, self.freq = split, freq
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        # the file's channel count (the catalog's) is checked by read_series; the model sees n_channels
        self.n_channels = 1 if features == "S" else n_channels
        self.n_marks = len(FREQ_FEATURES[freq])
        self.read_kw = dict(target=target, n_channels=n_channels, sentinel=sentinel, sentinel_policy=sentinel_policy,
                            features=features)
        self.drop_last = dict(drop_last or {})
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict[str, WindowDataset] = {}
        self.scaler: Scaler | None = None
        self.borders: dict[str, tuple[int, int]] = {}

    def prepare_data(self) -> None:
        if self.files is not None:  # download and verify, once per node (Lightning calls it on one process)
            self.files.fetch()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.path is None:
            paths = self.files.paths()
            if len(paths) != 1:
                raise ValueError(f"forecasting dataset {self.files.name!r} should have exactly one file, the registry "
                                 f"lists {list(paths)}")
            self.path = next(iter(paths.values()))
        series = read_series(self.path, **self.read_kw)
        self.columns = series.columns
        try:  # the split and the scaling judge the file: their errors name it
            self.borders = split_borders(len(series.values), self.split, self.seq_len, self.pred_len)
            b, e = self.borders["train"]
            self.scaler = Scaler.fit(series.values[b:e])
            scaled = self.scaler.transform(series.values)  # (T, C)
        except DataError as err:
            raise type(err)(f"{self.path}: {err}") from None
        marks = time_features(series.dates, self.freq)  # (T, F)
        for part, (b, e) in self.borders.items():
            self.datasets[part] = WindowDataset(scaled[b:e], marks[b:e], self.seq_len, self.label_len, self.pred_len)
        log.info(
            "%s: windows train/val/test = %s", self.path.name, "/".join(str(len(d)) for d in self.datasets.values())
        )

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        # training: an order drawn from (seed, epoch) that a resumed run continues mid-epoch
        return resumable_loader(
            self.datasets[part],
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=bool(self.drop_last.get(part, False)),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            world=process_share(self.trainer),  # this process's share of each global batch / of the windows
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
