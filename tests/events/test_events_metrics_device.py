"""The events metric object keeps its sums on the device and gives the host sums' metrics.

``metric_sum_tensors`` (what a validation batch runs, no read of the device) and
``metric_sums`` (the same sums read into Python numbers, checked against hand computations in
test_events_likelihood.py) agree field by field, and ``EventMetrics`` over several batches of
unequal length gives exactly ``split_metrics`` of the added host sums.
"""
from __future__ import annotations

import functools

import pytest
import torch

from aaren_bench.bench.syncs import SyncCounter
from tasks.events.data import EventSeqs, collate
from tasks.events.likelihood import MetricSums, Mixture, add_sums, metric_sum_tensors, metric_sums, split_metrics
from tasks.events.metrics import EventMetrics


def _batches(marked: bool):
    seqs = EventSeqs.build([[1.0, 1.5, 4.0], [2.0, 6.0], [0.5, 0.9, 3.0, 7.5], [8.0]],
                           [[0, 2, 1], [1, 1], [2, 0, 0, 1], [2]], t_start=0.0, t_end=10.0, num_marks=3)
    g = torch.Generator().manual_seed(0)
    out = []
    for idx in ([0, 1], [2, 3]):
        b = collate(seqs, idx)
        B, N = b["mask"].shape
        mix = Mixture(torch.log_softmax(torch.randn(B, N, 2, generator=g), -1), torch.randn(B, N, 2, generator=g),
                      torch.rand(B, N, 2, generator=g) + 0.5)
        out.append((mix, torch.randn(B, N, 3, generator=g) if marked else None, b))
    return out


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_device_sums_equal_host_sums_and_read_nothing(marked):
    for mix, logits, b in _batches(marked):
        with SyncCounter() as reads:
            dev = metric_sum_tensors(mix, logits, b)
        assert reads.total == 0, reads.report()
        host = metric_sums(mix, logits, b)
        for name, d, h in zip(MetricSums._fields, dev, host):
            assert isinstance(d, torch.Tensor) and d.dim() == 0, name
            assert type(h) is (float if d.is_floating_point() else int), name
            assert d.item() == h, name


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_metric_object_equals_split_metrics_of_host_sums(marked):
    batches = _batches(marked)
    metric = EventMetrics(marked)
    with SyncCounter() as reads:
        for mix, logits, b in batches:
            metric.update(mix, logits, b)
    assert reads.total == 0, reads.report()
    want = split_metrics(functools.reduce(add_sums, [metric_sums(*x) for x in batches]), marked=marked)
    got = metric.compute()
    assert got.pop("samples") == 4.0
    assert got == pytest.approx(want, rel=1e-12, abs=0)
