"""The split-level event metrics as a torchmetrics object.

:class:`EventMetrics` keeps the float64 sums of :class:`tasks.events.likelihood.MetricSums`
(ours and Meta TPP's) as metric states; ``compute`` adds them over every process of a run and
divides them as :func:`tasks.events.likelihood.split_metrics` says. So a split's NLL, RMSE and
accuracy are those of every sequence in it, whatever the batch size or the number of devices
that shared it; ``samples`` is the number of sequences. ``update`` keeps the sums on the
device (no read per batch); ``compute`` reads them once.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from tasks.events.likelihood import MetricSums, metric_sum_tensors, split_metrics


class EventMetrics(Metric):
    """``update(mix, mark_logits, batch)`` per batch; ``compute()`` -> {name: value} of the split so far."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, marked: bool, **kwargs):
        super().__init__(**kwargs)
        self.marked = bool(marked)
        for name in (*MetricSums._fields, "samples"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mix, mark_logits: Tensor | None, batch: dict) -> None:
        sums = metric_sum_tensors(mix, mark_logits, batch)  # on the device: a batch reads nothing
        for name, value in zip(MetricSums._fields, sums):
            setattr(self, name, getattr(self, name) + value.to(device=self.device, dtype=torch.float64))
        self.samples += batch["mask"].shape[0]

    def compute(self) -> dict[str, float]:
        sums = MetricSums(*(float(getattr(self, name)) for name in MetricSums._fields))
        return {**split_metrics(sums, marked=self.marked), "samples": float(self.samples)}
