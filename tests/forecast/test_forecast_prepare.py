"""Data prepared once (forecast): building the datamodule and the module reads and downloads nothing
(the catalog gives the channels); ``prepare_data`` downloads, ``setup`` reads the file once per process."""
from __future__ import annotations

import numpy as np
import pytest

import tasks.forecast.data as D
from aaren_bench.data import DatasetNotFound
from aaren_bench.run import build
from aaren_bench.study import compose_config
from tests.forecast.test_forecast_data import write_csv
from tests.prepared import assert_prepared_once

TINY = ["dataset=ECL", "task.seq_len=8", "task.label_len=4", "task.pred_len=4", "task.backbone.d_model=16",
        "task.backbone.n_layers=1", "task.backbone.d_ff=32", "logger=none"]


@pytest.fixture
def counted(monkeypatch):
    """Counts of full reads of a forecasting CSV (``read_series``) and of downloads (the registry's)."""
    n = {"reads": 0, "downloads": 0}
    read_series = D.read_series

    def read(*a, **k):
        n["reads"] += 1
        return read_series(*a, **k)

    def download(url, dest, timeout=60.0):  # ECL: 321 channels, no pinned checksum
        n["downloads"] += 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        names = [f"c{i}" for i in range(320)] + ["OT"]
        write_csv(dest, n=200, channels=names, values=np.random.default_rng(0).normal(size=(200, 321)))

    monkeypatch.setattr(D, "read_series", read)
    monkeypatch.setattr("aaren_bench.data.registry._download", download)
    return n


def test_build_reads_nothing_prepare_data_downloads_setup_reads_once(tmp_path, counted):
    cfg = compose_config([*TINY, f"paths.data_root={tmp_path}"])
    built = build(cfg)
    other = build(cfg).datamodule  # a process of the run that does not prepare the data
    assert built.datamodule.n_channels == 321 and built.module.net.n_channels == 321  # the catalog's
    assert_prepared_once(built, other, counted, "downloads", missing=DatasetNotFound)
    assert len(built.datamodule.datasets["test"]) == len(other.datasets["test"]) > 0
