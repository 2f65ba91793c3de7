"""Exact MSE / MAE over every window, step and channel: sums accumulated across batches."""
from __future__ import annotations

from torch import Tensor


class ErrorSums:
    """Running sums of squared and absolute errors; ``mse``/``mae`` divide by the element count.

    Unlike a mean of per-batch means, the result does not depend on the batch size or on a
    smaller last batch.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sq, self.abs, self.count = 0.0, 0.0, 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        err = pred.detach().double() - target.detach().double()
        self.sq += float(err.pow(2).sum())
        self.abs += float(err.abs().sum())
        self.count += err.numel()

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise RuntimeError("no predictions were accumulated (empty split?)")
        return {"mse": self.sq / self.count, "mae": self.abs / self.count}


def mse_mae(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """MSE and MAE of whole arrays in one call."""
    s = ErrorSums()
    s.update(pred, target)
    out = s.compute()
    return out["mse"], out["mae"]
