"""Event forecasting (``task=events``): THP+ (Meta TPP's Transformer Hawkes baseline) and its Aaren twin.

``build(cfg) -> (EventDataModule, EventModule)``; see docs/protocol/events.md for the
protocol and every departure from Meta TPP.
"""
from __future__ import annotations

import hydra

from aaren_bench.nn import build_backbone
from tasks.events.datasets import load_splits
from tasks.events.model import EventModel
from tasks.events.module import EventDataModule, EventModule

__all__ = ["build"]


def build(cfg):
    splits = load_splits(cfg.dataset, data_root=cfg.paths.get("data_root") if "paths" in cfg else None)
    dm = EventDataModule(splits, batch_size=cfg.task.batch_size, num_workers=cfg.task.num_workers)
    model = EventModel(
        build_backbone(cfg.model),
        num_marks=dm.num_marks,
        time_scale=dm.time_scale,
        n_components=cfg.task.get("n_components", 8),
        time_encoding=cfg.task.get("time_encoding", "absolute"),
    )
    module = EventModule(model, hydra.utils.instantiate(cfg.task.optimizer), monitor=cfg.task.monitor)
    return dm, module
