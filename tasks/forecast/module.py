"""The LightningModule: MSE training, exact MSE/MAE over every window the validation and test loaders give."""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from tasks.forecast.metrics import forecast_metrics, update_errors

LR_SCHEDULES = ("type1", "none")


def type1_factor(epoch: int) -> float:
    """TSLib ``lradj=type1`` as its loop applies it: epochs 0 and 1 at the base rate, then halved each epoch.

    The anchor's loop calls ``adjust_learning_rate(epoch + 1)`` after every epoch (0-based), which sets
    lr0 * 0.5 ** ((epoch + 1) - 1) for the next one: epoch 1 at lr0, epoch 2 at lr0 / 2, epoch 3 at lr0 / 4.
    """
    return 0.5 ** max(epoch - 1, 0)


class ForecastModule(L.LightningModule):
    """``net``: a :class:`~tasks.forecast.model.Forecaster` (suite layout) or an
    :class:`~tasks.forecast.model.EncoderDecoder` (the anchor's), (x, x_mark, y_mark) -> forecast."""

    def __init__(self, net: nn.Module, optimizer, lr_schedule: str = "type1"):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"task.lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.net = net
        self.backbone = net.backbone
        self.optimizer_factory, self.lr_schedule = optimizer, lr_schedule
        self.eval_metrics = nn.ModuleDict({"val": forecast_metrics(), "test": forecast_metrics()})

    def parameter_split(self) -> dict[str, int]:
        """{"embedding", "backbone", "head"}: parameter counts (the run loop records them)."""
        return self.net.parameter_split()

    def forward(self, x, x_mark, y_mark):
        return self.net(x, x_mark, y_mark)

    def training_step(self, batch, batch_idx):
        x, x_mark, y, y_mark = batch
        loss = F.mse_loss(self(x, x_mark, y_mark), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(self, part: str, batch) -> None:
        """Accumulate the batch's errors; the logged metric objects are computed (over every window of
        the split, on every process) at the end of the epoch. ``val/loss`` is the validation MSE."""
        x, x_mark, y, y_mark = batch
        m = self.eval_metrics[part]
        update_errors(m, self(x, x_mark, y_mark), y)
        self.log(f"{part}/loss" if part == "val" else "test/mse", m["mse"], prog_bar=part == "val")
        self.log(f"{part}/mae", m["mae"])
        self.log(f"{part}/samples", m["samples"])

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.lr_schedule == "none":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, type1_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
