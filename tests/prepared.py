"""A built cell as the trainer's hooks leave it before the first step, for tests that look inside
without a trainer: the data prepared (``prepare_data``) and read (``setup``), and the statistics
read with it handed to the module (``adopt_statistics``, in the tasks that have data statistics)."""
from __future__ import annotations

from aaren_bench.run import Built


def read(built: Built) -> Built:
    built.datamodule.prepare_data()
    built.datamodule.setup("fit")
    adopt = getattr(built.module, "adopt_statistics", None)
    if adopt is not None:
        adopt(built.datamodule)
    return built


def assert_prepared_once(built: Built, other, counted: dict, fetched: str, missing: type[Exception] | None) -> None:
    """``built`` (one process of a run that prepares the data) and ``other``'s datamodule (one that
    does not): nothing read or ``fetched`` while building; ``other`` finds nothing before
    ``prepare_data`` (raising ``missing``; None: nothing to download) and fetches nothing;
    ``prepare_data`` fetches once; ``setup`` reads once per process, however often it is called.
    ``counted``: {"reads": ..., fetched: ...}, kept up to date by the test's spies."""
    import pytest

    assert counted == {"reads": 0, fetched: 0}
    if missing is not None:
        with pytest.raises(missing):
            other.setup("fit")
        assert counted == {"reads": 0, fetched: 0}
    built.datamodule.prepare_data()
    assert counted == {"reads": 0, fetched: 1}
    built.datamodule.setup("fit")
    built.datamodule.setup("test")
    other.setup("fit")
    assert counted == {"reads": 2, fetched: 1}


def trainer(steps: int):
    """A bare CPU trainer of ``steps`` optimiser steps: no logger, checkpoints or validation."""
    import lightning as L

    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
