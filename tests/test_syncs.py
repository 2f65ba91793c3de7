"""Device-to-host reads: the counter sees every kind of read, and the hot paths make none.

A training step (forward, loss, backward, optimiser step) of every task with every backbone
makes no read of a device value, and neither does a validation batch (the metric states stay
on the device until an epoch's end). Counted on the CPU with a dispatch mode (aaren_bench.bench.syncs):
the same aten operations reach the dispatcher on a GPU, where each read stalls it.
"""
from __future__ import annotations

import pytest
import torch

from aaren_bench.bench.syncs import SyncCounter, optimizer_host_state


def test_counter_sees_every_kind_of_read():
    t = torch.arange(4.0)
    with SyncCounter() as c:
        float(t.sum())
        t.max().item()
        bool((t > 2).any())
        if t[0] == 0:
            pass
        torch.equal(t, t)
        int(t.argmax())
    assert c.total == 6, c.report()
    assert "tests/test_syncs.py" in next(iter(c.where))


def test_counter_ignores_device_side_work():
    t = torch.randn(8, 8, requires_grad=True)
    with SyncCounter() as c:
        y = torch.where(torch.isfinite(t), t, 0.0).softmax(-1)
        flag = (~torch.isfinite(y)).any()  # stays a tensor: no read
        y.sum().backward()
        t.grad.masked_fill_(flag, 0.0)
    assert c.total == 0, c.report()


def test_optimizer_step_counts_are_host_reads():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()
    with SyncCounter(host=optimizer_host_state(opt)) as c:
        p.sum().backward()
        opt.step()
    assert c.total == 0 and c.host_reads >= 1, (c.report(), c.host_reads)


# --------------------------------------------------------------------------------------
# every task with every backbone
# --------------------------------------------------------------------------------------

from aaren_bench.bench.tasksteps import MIXERS, TASK_DATASETS, sync_row  # noqa: E402


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("task", list(TASK_DATASETS))
def test_training_step_and_validation_batch_read_nothing(task, mixer, one_thread):
    row = sync_row(task, mixer, batch=4)
    assert row["train_syncs"] == 0, row["train_where"]
    if task != "rl":  # RL validates by acting: one read per environment step (the action), by design
        assert row["val_syncs"] == 0, row["val_where"]
