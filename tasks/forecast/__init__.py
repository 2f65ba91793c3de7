"""Long-term forecasting (Time-Series-Library protocol): ``build(cfg) -> (datamodule, module)``."""
from __future__ import annotations

from hydra.utils import instantiate

from aaren_bench.data import fetch
from aaren_bench.nn import build_backbone
from tasks.forecast.datamodule import ForecastDataModule
from tasks.forecast.frame import FREQ_FEATURES, ForecastDataError, read_series, time_features
from tasks.forecast.head import Forecaster, instance_norm
from tasks.forecast.metrics import ErrorSums, mse_mae
from tasks.forecast.module import ForecastModule
from tasks.forecast.windows import Scaler, SplitError, WindowDataset, n_windows, split_borders

__all__ = [
    "ErrorSums", "ForecastDataError", "ForecastDataModule", "ForecastModule", "Forecaster", "Scaler", "SplitError",
    "WindowDataset", "build", "build_datamodule", "build_module", "instance_norm", "mse_mae", "n_windows",
    "read_series", "split_borders", "time_features",
]


def build_datamodule(cfg) -> ForecastDataModule:
    ds, t = cfg.dataset, cfg.task
    paths = fetch(ds.name, cfg.paths.data_root)
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
        n_channels=ds.get("n_channels"),
        sentinel=ds.get("sentinel"),
        sentinel_policy=t.get("sentinel_policy", "keep"),
        batch_size=t.batch_size,
        num_workers=t.num_workers,
    )


def build_module(cfg) -> ForecastModule:
    t = cfg.task
    net = Forecaster(
        backbone=build_backbone(cfg.model),
        n_channels=cfg.dataset.n_channels,
        n_marks=len(FREQ_FEATURES[t.freq]),
        seq_len=t.seq_len,
        label_len=t.label_len,
        pred_len=t.pred_len,
        head=t.head,
        dropout=t.backbone.dropout,
    )
    return ForecastModule(net, optimizer=instantiate(t.optimizer), lr_schedule=t.lr_schedule)


def build(cfg):
    """The datamodule and module of one forecasting cell."""
    return build_datamodule(cfg), build_module(cfg)
