"""Exact MSE / MAE over every window, step and channel of a split: torchmetrics objects.

The metrics keep float64 sums of squared and absolute errors and the element count, added
over batches and (when computed) over the processes of a run: the result does not depend on
the batch size, on a smaller last batch or on how the windows were shared between devices
(unlike a mean of per-batch means). ``samples`` counts the windows.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def forecast_metrics() -> nn.ModuleDict:
    """{"mse", "mae", "samples"} for one split; update ``mse``/``mae`` with (pred, target), ``samples`` with a count."""
    from torchmetrics import MeanAbsoluteError, MeanSquaredError, SumMetric

    # no NaN filtering on the window count (a count is never NaN): the filter reads the device every batch
    metrics = nn.ModuleDict({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(),
                             "samples": SumMetric(nan_strategy="disable")})
    for name in ("mse", "mae"):
        metrics[name].set_dtype(torch.float64)  # float64 sums over millions of elements
    return metrics


def update_errors(metrics: nn.ModuleDict, pred: Tensor, target: Tensor) -> None:
    """Add a batch of forecasts (B, H, C) to a split's metrics; the errors are taken in float64."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.detach().double(), target.detach().double()
    metrics["mse"].update(pred, target)
    metrics["mae"].update(pred, target)
    metrics["samples"].update(torch.tensor(float(len(pred)), dtype=torch.float32, device=pred.device))


def mse_mae(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """MSE and MAE of whole arrays in one call."""
    m = forecast_metrics()
    update_errors(m, pred, target)
    return float(m["mse"].compute()), float(m["mae"].compute())
