"""Event forecasting (``task=events``): THP+ (Meta TPP's Transformer Hawkes baseline) and its Aaren twin.

See docs/protocol/events.md for the protocol and every departure from Meta TPP.
"""
from __future__ import annotations

from aaren_bench.task import Task
from tasks.events.data import EventDataModule
from tasks.events.datasets import EventFiles
from tasks.events.model import EventModel
from tasks.events.module import EventModule

__all__ = ["TASK", "EventsTask"]


class EventsTask(Task):
    """Selection and early stopping come from ``task.monitor`` / ``task.early_stop_monitor``
    (conf/task/events.yaml, conf/task_protocol/events-<protocol>.yaml)."""

    name = "events"
    # ours, then Meta TPP's formulas of the same quantities (tasks/events/likelihood.py)
    metrics = ("test/nll", "test/rmse", "test/acc", "test/nll_time", "test/nll_mark",
               "test/nll_metatpp", "test/rmse_metatpp", "test/acc_metatpp")

    def test_metrics(self, cfg) -> tuple[str, ...]:
        return self.metrics  # unmarked datasets log no acc / nll_mark: the record shows what was logged

    def build_datamodule(self, cfg) -> EventDataModule:
        """Nothing is read here: the files are fetched in ``prepare_data`` and read in ``setup``; the number
        of marks is the catalog's."""
        from omegaconf import OmegaConf

        from aaren_bench.data import get

        # the catalog's facts (marks, split) first, the dataset config's reading settings over them
        info = get(cfg.dataset.name).info
        facts = {k: list(v) if isinstance(v, tuple) else v for k, v in info.items()
                 if k in ("num_marks", "meta_tpp") or (k == "split" and isinstance(v, (tuple, list)))}
        settings = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(facts), cfg.dataset), resolve=True)
        files = EventFiles(settings, data_root=cfg.paths.data_root)
        return EventDataModule(files, num_marks=files.num_marks, batch_size=cfg.task.batch_size,
                               num_workers=cfg.task.num_workers)

    def build_module(self, cfg, dm: EventDataModule, backbone, optimizer) -> EventModule:
        """The time scale reaches the model in ``EventModule.setup``, after the data is read."""
        t = cfg.task
        model = EventModel(backbone, num_marks=dm.num_marks,
                           n_components=t.get("n_components", 8),
                           time_encoding=t.get("time_encoding", "absolute"),
                           time_encoding_at=t.get("time_encoding_at", "input"),
                           scale_floor=float(t.get("scale_floor", 1e-4)))
        return EventModule(model, optimizer, loss=t.get("loss", "mean"), l2=float(t.get("l2", 0.0) or 0.0),
                           score_end_mark=bool(t.get("score_end_mark", False)))


TASK = EventsTask()
