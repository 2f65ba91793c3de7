"""The THP+ training module: loss, exact split-level metrics and the optimizer."""
from __future__ import annotations

import lightning as L
import torch

from aaren_bench.distributed import global_mean, global_sum
from tasks.events.likelihood import end_mark_ll, sequence_scores
from tasks.events.metrics import EventMetrics
from tasks.events.model import EventModel

LOSSES = ("mean", "sum")


class EventModule(L.LightningModule):
    """Trains on the batch's NLL; evaluates exact split-level metrics, ours and Meta TPP's.

    loss="mean": the NLL per scored event of the batch (the suite's); "sum": the batch's summed
    NLL (Meta TPP's). l2 > 0 adds 0.5 * l2 * ||theta||^2 over every parameter to that loss at each
    training step (Meta TPP's penalty, with its optimizer's own decay set to 0); validation and
    test never include it. score_end_mark: the loss also scores the mark of the window-end
    entry given the last event (Meta TPP's loss does; ``likelihood.end_mark_ll``).
    """

    def __init__(self, model: EventModel, optimizer, loss: str = "mean", l2: float = 0.0,
                 score_end_mark: bool = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"task.loss must be one of {LOSSES}, got {loss!r}")
        if l2 < 0:
            raise ValueError(f"task.l2 must be >= 0, got {l2}")
        self.model = model
        self.optimizer_factory = optimizer
        self.loss_reduction, self.l2, self.score_end_mark = loss, float(l2), bool(score_end_mark)
        # split-level sums (ours and Meta TPP's), added over every process when computed
        marked = model.mark_head is not None
        self.eval_metrics = torch.nn.ModuleDict({"val": EventMetrics(marked), "test": EventMetrics(marked)})

    def setup(self, stage: str) -> None:
        """The time scale the datamodule computed in its ``setup`` (or restored from a checkpoint,
        which then restores the same buffer) into the model."""
        self.adopt_statistics(self.trainer.datamodule)

    def adopt_statistics(self, dm) -> None:
        """``dm``: an :class:`~tasks.events.data.EventDataModule` after ``setup`` (None: nothing to take)."""
        if dm is not None and getattr(dm, "time_scale", None) is not None:
            self.model.set_time_scale(dm.time_scale)

    def forward(self, batch):
        return self.model(batch)

    def l2_penalty(self) -> torch.Tensor:
        """0.5 * l2 * sum of squared parameters (every parameter, as Meta TPP)."""
        return 0.5 * self.l2 * sum((p**2).sum() for p in self.parameters())

    def training_step(self, batch, batch_idx):
        mix, logits = self.model(batch)
        sc = sequence_scores(mix, logits, batch)
        n = sc.n_scored.sum().clamp_min(1)
        nll_sum = -(sc.time_ll + sc.mark_ll + sc.surv_ll).sum()
        if self.score_end_mark:
            nll_sum = nll_sum - end_mark_ll(logits, batch).sum()
        # per event (or summed) over the global batch, whatever the number of processes sharing it
        loss = global_mean(self, nll_sum, n) if self.loss_reduction == "mean" else global_sum(self, nll_sum)
        if self.l2:
            loss = loss + self.l2_penalty()
        # batch_size as a device tensor: the epoch mean is weighted by events without reading n on the host
        self.log("train/nll", nll_sum.detach() / n, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, batch_size=n)
        return loss

    def _accumulate(self, stage: str, batch):
        self.eval_metrics[stage].update(*self.model(batch), batch)

    def _emit(self, stage: str):
        metric = self.eval_metrics[stage]
        if not metric.update_called:
            return
        values = metric.compute()  # the same on every process: sync_dist only keeps Lightning from warning
        metric.reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k in ("nll", "acc"), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._accumulate("val", batch)

    def on_validation_epoch_end(self):
        self._emit("val")

    def test_step(self, batch, batch_idx):
        self._accumulate("test", batch)

    def on_test_epoch_end(self):
        self._emit("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())
