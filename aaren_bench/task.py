"""The task contract: what a task gives the run loop, and nothing more.

Each task package ``tasks/<name>/`` exposes ``TASK``, an instance of a :class:`Task`
subclass. The run loop (``aaren_bench.run``) builds the backbone and the optimizer
factory itself and hands them over; a task never sees the model config and the run loop
never reaches into a task's module::

    dm = task.build_datamodule(cfg)                        # data: where it is and its sizes; reads nothing
    module = task.build_module(cfg, dm, backbone, optim)   # embedding -> backbone -> head, losses
    task.test_metrics(cfg)                             # ("test/acc",): the first is the primary
    task.selection(cfg)                                # Selection("val/acc", "max") or None

Data is prepared once: building reads and downloads nothing (the sizes are the catalog's, or a
file header's); the datamodule's ``prepare_data`` (one process per node) downloads and converts,
its ``setup`` reads, once per process. Statistics that only a read gives (events' time scale,
RL's state mean/std) reach the model in the module's ``setup`` and travel in the checkpoint.
Each task package has the same files: ``catalog.py``, ``data.py`` (the datamodule), ``model.py``
(the network), ``module.py`` (the LightningModule); ``__init__.py`` maps the config to their
explicit constructor arguments.

``selection`` names the validation metric that picks the checkpoint to test (None: the
weights training ended with are tested, as in offline RL). A protocol changes it through
the task keys it sets (``task.monitor`` / ``task.monitor_mode``), never by name.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

TASKS = ("classify", "forecast", "events", "rl")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Selection:
    """The validation metric that selects the checkpoint to test, and its direction."""

    metric: str
    mode: str = "min"  # "min" | "max"

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"selection mode must be 'min' or 'max', got {self.mode!r}")


class Task(ABC):
    """Base class of the four tasks. Subclasses set ``name`` and ``metrics`` and implement the
    two builders; ``selection`` defaults to ``task.monitor`` / ``task.monitor_mode``."""

    name: str = ""
    metrics: tuple[str, ...] = ()  # the test metrics the module logs; the first is the primary

    @abstractmethod
    def build_datamodule(self, cfg) -> Any:
        """The LightningDataModule of the dataset ``cfg.dataset`` names; it reads nothing until ``setup``."""

    @abstractmethod
    def build_module(self, cfg, datamodule: Any, backbone: torch.nn.Module, optimizer: OptimizerFactory) -> Any:
        """The LightningModule; data sizes (channels, classes, marks, obs/act dims) come from the
        datamodule (the catalog's, known before any read), never from the config."""

    def test_metrics(self, cfg) -> tuple[str, ...]:
        return self.metrics

    def primary_metric(self, cfg) -> str:
        return self.test_metrics(cfg)[0]

    def selection(self, cfg) -> Selection | None:
        monitor = cfg.task.get("monitor")
        return Selection(str(monitor), str(cfg.task.get("monitor_mode", "min"))) if monitor else None

    def early_stopping(self, cfg) -> Selection | None:
        """The metric that stops training early (``task.early_stop_monitor``, default: the selection
        metric; Meta TPP checkpoints on one metric and stops on another); None without ``task.patience``."""
        if not cfg.task.get("patience"):
            return None
        monitor = cfg.task.get("early_stop_monitor")
        if monitor:
            return Selection(str(monitor), str(cfg.task.get("early_stop_mode", "min")))
        return self.selection(cfg)

    def record_extras(self, cfg, datamodule: Any, module: Any) -> dict:
        """Task-specific entries of the result record (e.g. where the data came from, an evaluation
        curve). The default: the datamodule's ``data_source`` when it has one."""
        source = getattr(datamodule, "data_source", None)
        return {"data_source": source} if source else {}


def load_task(name: str) -> Task:
    """The ``TASK`` of ``tasks.<name>``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)} (e.g. task=classify)")
    task = importlib.import_module(f"tasks.{name}").TASK
    if not isinstance(task, Task):
        raise TypeError(f"tasks.{name}.TASK must be an aaren_bench.task.Task, got {type(task).__name__}")
    return task


def optimizer_factory(optimizer_cfg) -> OptimizerFactory:
    """``task.optimizer`` (a ``_partial_`` Hydra node) -> params -> optimizer."""
    from hydra.utils import instantiate

    factory = instantiate(optimizer_cfg)
    if not callable(factory):
        raise ValueError("task.optimizer must be a partial optimizer (`_partial_: true`), e.g. "
                         "{_target_: torch.optim.Adam, _partial_: true, lr: 1e-4}")
    return factory


def parameter_split(module: torch.nn.Module, backbone: torch.nn.Module) -> dict[str, int]:
    """Parameter counts: the module's own split when it reports one (``parameter_split()``,
    e.g. embedding / head), else backbone and the rest; always with the total."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    total, bb = count(module), count(backbone)
    own = getattr(module, "parameter_split", None)
    split = dict(own()) if callable(own) else {"other": total - bb}
    split.setdefault("backbone", bb)
    split["total"] = total
    return split
