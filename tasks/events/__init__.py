"""Event forecasting (``task=events``): THP+ (Meta TPP's Transformer Hawkes baseline) and its Aaren twin.

See docs/protocol/events.md for the protocol and every departure from Meta TPP.
"""
from __future__ import annotations

from aaren_bench.task import Task
from tasks.events.datasets import load_splits
from tasks.events.model import EventModel
from tasks.events.module import EventDataModule, EventModule

__all__ = ["TASK", "EventsTask"]


class EventsTask(Task):
    name = "events"
    metrics = ("test/nll", "test/rmse", "test/acc", "test/nll_time", "test/nll_mark")

    def test_metrics(self, cfg) -> tuple[str, ...]:
        return self.metrics  # unmarked datasets log no acc / nll_mark: the record shows what was logged

    def build_datamodule(self, cfg) -> EventDataModule:
        from omegaconf import OmegaConf

        from aaren_bench.data import get

        # the catalog's facts (marks, split) first, the dataset config's reading settings over them
        info = get(cfg.dataset.name).info
        facts = {k: list(v) if isinstance(v, tuple) else v for k, v in info.items()
                 if k == "num_marks" or (k == "split" and isinstance(v, (tuple, list)))}
        ds = OmegaConf.merge(OmegaConf.create(facts), cfg.dataset)
        splits = load_splits(ds, data_root=cfg.paths.data_root)
        return EventDataModule(splits, batch_size=cfg.task.batch_size, num_workers=cfg.task.num_workers)

    def build_module(self, cfg, dm: EventDataModule, backbone, optimizer) -> EventModule:
        model = EventModel(backbone, num_marks=dm.num_marks, time_scale=dm.time_scale,
                           n_components=cfg.task.get("n_components", 8),
                           time_encoding=cfg.task.get("time_encoding", "absolute"))
        return EventModule(model, optimizer)


TASK = EventsTask()
