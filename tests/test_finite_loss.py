"""The non-finite loss check names the first bad step without reading the device every step."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aaren_bench.bench.syncs import SyncCounter
from aaren_bench.errors import RunFailed
from aaren_bench.run import FiniteLoss


def _feed(cb: FiniteLoss, losses, trainer):
    for i, x in enumerate(losses):
        trainer.global_step = i + 1  # as after the optimiser step
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(x)}, None, i)


def test_first_bad_step_is_named_at_the_epoch_end_without_reads_per_step():
    cb, trainer = FiniteLoss(every=100), SimpleNamespace(global_step=0, current_epoch=0)
    with SyncCounter() as syncs:
        _feed(cb, [1.0, 0.5, float("nan"), float("inf"), 0.3], trainer)
    assert syncs.total == 0, syncs.report()
    with pytest.raises(RunFailed, match=r"training loss is nan at step 3 \(seen at step 5"):
        cb.on_train_epoch_end(trainer, None)


def test_read_at_the_cadence_and_before_a_checkpoint():
    trainer = SimpleNamespace(global_step=0, current_epoch=0)
    cb = FiniteLoss(every=2)
    with pytest.raises(RunFailed, match="at step 1 "):
        _feed(cb, [float("inf"), 1.0, 1.0], trainer)  # read at step 2
    cb = FiniteLoss(every=100)
    _feed(cb, [1.0, float("nan")], trainer)
    with pytest.raises(RunFailed, match="at step 2 "):
        cb.on_save_checkpoint(trainer, None, {})


def test_finite_losses_pass():
    cb, trainer = FiniteLoss(every=1), SimpleNamespace(global_step=0, current_epoch=0)
    _feed(cb, [1.0, 2.0], trainer)
    cb.on_train_end(trainer, None)
