"""Long-term forecasting (Time-Series-Library protocol, ``task=forecast``)."""
from __future__ import annotations

from aaren_bench.data import fetch, get
from aaren_bench.task import Task
from tasks.forecast.datamodule import ForecastDataModule
from tasks.forecast.frame import FREQ_FEATURES, ForecastDataError, read_series, time_features
from tasks.forecast.head import Forecaster, instance_norm
from tasks.forecast.metrics import ErrorSums, mse_mae
from tasks.forecast.module import ForecastModule
from tasks.forecast.windows import Scaler, SplitError, WindowDataset, n_windows, split_borders

__all__ = [
    "FREQ_FEATURES", "TASK", "ErrorSums", "ForecastDataError", "ForecastDataModule", "ForecastModule", "ForecastTask", "Forecaster",
    "Scaler", "SplitError", "WindowDataset", "instance_norm", "mse_mae", "n_windows", "read_series",
    "split_borders", "time_features",
]


class ForecastTask(Task):
    name = "forecast"
    metrics = ("test/mse", "test/mae")

    def build_datamodule(self, cfg) -> ForecastDataModule:
        ds, t = cfg.dataset, cfg.task
        spec = get(ds.name)
        paths = fetch(spec, cfg.paths.data_root)
        if len(paths) != 1:
            raise ValueError(f"forecasting dataset {ds.name!r} should have exactly one file, the registry lists {list(paths)}")
        return ForecastDataModule(
            path=next(iter(paths.values())),
            split=ds.split,
            seq_len=t.seq_len,
            label_len=t.label_len,
            pred_len=t.pred_len,
            freq=t.freq,
            target=ds.get("target", "OT"),
            n_channels=spec.info["channels"],
            sentinel=spec.info.get("sentinel"),
            sentinel_policy=t.get("sentinel_policy", "keep"),
            batch_size=t.batch_size,
            num_workers=t.num_workers,
        )

    def build_module(self, cfg, dm: ForecastDataModule, backbone, optimizer) -> ForecastModule:
        t = cfg.task
        net = Forecaster(backbone=backbone, n_channels=dm.n_channels, n_marks=dm.n_marks, seq_len=t.seq_len,
                         label_len=t.label_len, pred_len=t.pred_len, head=t.head, dropout=t.backbone.dropout)
        return ForecastModule(net, optimizer=optimizer, lr_schedule=t.lr_schedule)


TASK = ForecastTask()
