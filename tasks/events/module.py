"""Lightning wrappers: the event datamodule and the THP+ training module."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from tasks.events.data import EventSeqs, collate
from tasks.events.likelihood import metric_sums, sequence_scores
from tasks.events.model import EventModel


class _Index(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class EventDataModule(L.LightningDataModule):
    def __init__(self, splits: dict[str, EventSeqs], batch_size: int = 16, num_workers: int = 0):
        super().__init__()
        self.splits, self.batch_size, self.num_workers = splits, batch_size, num_workers
        self.num_marks = splits["train"].num_marks
        self.time_scale = splits["train"].mean_inter_time()

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        seqs = self.splits[name]
        return DataLoader(
            _Index(len(seqs)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=lambda idx: collate(seqs, idx),
            drop_last=False,
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


class EventModule(L.LightningModule):
    """Trains on the mean NLL per scored event of each batch; evaluates exact split-level metrics."""

    def __init__(self, model: EventModel, optimizer):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self._sums: dict[str, list] = {}

    def forward(self, batch):
        return self.model(batch)

    def training_step(self, batch, batch_idx):
        mix, logits = self.model(batch)
        sc = sequence_scores(mix, logits, batch)
        n = sc.n_scored.sum().clamp_min(1)
        loss = -(sc.time_ll + sc.mark_ll + sc.surv_ll).sum() / n
        self.log("train/nll", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=int(n))
        return loss

    def _accumulate(self, stage: str, batch):
        mix, logits = self.model(batch)
        s = metric_sums(mix, logits, batch)
        acc = self._sums.setdefault(stage, [0.0] * len(s))
        for i, v in enumerate(s):
            acc[i] += v

    def _emit(self, stage: str):
        nll, nll_time, nll_mark, n, sq, correct = self._sums.pop(stage, [0.0] * 6)
        n = max(n, 1)
        out = {f"{stage}/nll": nll / n, f"{stage}/nll_time": nll_time / n, f"{stage}/rmse": (sq / n) ** 0.5}
        if self.model.mark_head is not None:
            out[f"{stage}/nll_mark"] = nll_mark / n
            out[f"{stage}/acc"] = correct / n
        for k, v in out.items():
            self.log(k, float(v), prog_bar=k.endswith(("/nll", "/acc")))

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
