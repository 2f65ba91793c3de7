"""Classifier: the LightningModule that trains a series classifier (``model.py``).

``lr_schedule``: ``none`` (constant) or ``tslib_cls`` (:func:`tslib_cls_factor`). Validation
logs ``val/acc`` and ``val/acc_tie_later`` (:meth:`Classifier.on_validation_epoch_end`).
Validation and test metrics are torchmetrics objects: accuracy, the mean cross-entropy and the
number of series (``test/samples``) over the whole split, across every process of a run.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.classify.model import SeriesClassifier

LR_SCHEDULES = ("none", "tslib_cls")


def tslib_cls_factor(epoch: int) -> float:
    """The learning-rate factor during (0-based) ``epoch`` of the Time-Series-Library's
    classification loop at a68756f.

    After each epoch whose 1-based number E is a multiple of 5 the loop calls
    ``adjust_learning_rate(E)`` with ``lradj=type1``, which sets ``lr0 * 0.5 ** (E - 1)``:
    epochs 1-5 run at lr0, 6-10 at lr0 / 16 (6.25e-5 for lr0 = 1e-3), 11-15 at lr0 / 512
    (about 2e-6), 16-20 at lr0 / 16384, and so on.
    """
    last = 5 * (epoch // 5)  # the last multiple of 5 among the epochs completed before this one
    return 1.0 if last == 0 else 0.5 ** (last - 1)


def eval_metrics(n_classes: int) -> nn.ModuleDict:
    """The metrics of an evaluated split: accuracy and mean cross-entropy over its series, and their number."""
    from torchmetrics import MeanMetric, SumMetric
    from torchmetrics.classification import MulticlassAccuracy

    # no argument checks and no NaN filtering on update: each would read the device every batch,
    # and a NaN loss must reach the record (a failed run), not be dropped with a warning
    return nn.ModuleDict({"acc": MulticlassAccuracy(num_classes=n_classes, average="micro", validate_args=False),
                          "loss": MeanMetric(nan_strategy="disable"), "samples": SumMetric(nan_strategy="disable")})


class Classifier(L.LightningModule):
    """Trains a :class:`~tasks.classify.model.SeriesClassifier` on cross-entropy and evaluates it."""

    def __init__(self, model: SeriesClassifier, optimizer, lr_schedule: str = "none"):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"task.lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model, self.optimizer_factory, self.lr_schedule = model, optimizer, lr_schedule
        self.eval_metrics = nn.ModuleDict({split: eval_metrics(model.n_classes) for split in ("val", "test")})

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, C), mask (B, N) True at real steps -> logits (B, classes)."""
        return self.model(x, mask)

    def _step(self, batch, split: str):
        x, mask, y = batch
        logits = self(x, mask)
        loss = F.cross_entropy(logits, y)
        if split == "train":  # the batch's values; batch_size makes the epoch value the mean over all series
            acc = (logits.argmax(-1) == y).float().mean()
            self.log("train/loss", loss, batch_size=len(y), on_epoch=True, on_step=True)
            self.log("train/acc", acc, batch_size=len(y), prog_bar=True, on_epoch=True, on_step=False)
            return loss
        # evaluation: metric objects, summed over every series of the split (and every process) when computed
        m = self.eval_metrics[split]
        m["acc"].update(logits.detach(), y)
        m["loss"].update(F.cross_entropy(logits.detach(), y, reduction="none"))
        m["samples"].update(torch.full_like(y, 1, dtype=torch.float32))
        self.log(f"{split}/loss", m["loss"], prog_bar=True)
        self.log(f"{split}/acc", m["acc"], prog_bar=True)
        self.log(f"{split}/samples", m["samples"])
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def on_validation_epoch_end(self):
        """``val/acc_tie_later``: the validation accuracy plus less than half a series' worth that
        grows with the epoch, so that of epochs with equal accuracy the later ranks higher.

        Selecting on it reproduces the library's EarlyStopping, for which an accuracy equal to
        the best is an improvement (it resets the patience and the later checkpoint is kept);
        on ``val/acc`` a tie is no improvement (the first best epoch is kept).
        """
        m = self.eval_metrics["val"]
        if not m["samples"].update_called:
            return
        seen = m["samples"].compute()  # every process's series (compute() adds the processes up)
        horizon = max(int(self.trainer.max_epochs or 0), self.current_epoch + 1, 1)
        later = (self.current_epoch + 1) / (horizon + 2)  # in (0, 1), increasing with the epoch
        self.log("val/acc_tie_later", m["acc"].compute() + 0.5 * later / seen, sync_dist=True)

    def test_step(self, batch, _):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.lr_schedule == "none":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, tslib_cls_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def parameter_split(self) -> dict[str, int]:
        return self.model.parameter_split()
