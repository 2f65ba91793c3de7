"""Forecasting configs: cell names, per-dataset TSLib exceptions, and a fast-dev-run through run.train."""
from __future__ import annotations

from pathlib import Path

import pytest

from aaren_bench.data import get
from aaren_bench.study import compose_config

CONF = Path(__file__).resolve().parents[2] / "conf"
DATASETS = ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange", "Traffic", "ECL"]


def cfg(*overrides):
    return compose_config(["task=forecast", *overrides])


def test_default_cell_and_paper_sizes():
    c = cfg()
    assert c.cell == "forecast/ETTh1-H192/suite/aaren/seed0"
    assert (c.model.d_model, c.model.n_heads, c.model.d_ff, c.model.n_layers) == (512, 8, 2048, 2)
    assert (c.task.seq_len, c.task.label_len, c.task.batch_size, c.task.patience, c.trainer.max_epochs) == (96, 48, 32, 3, 10)
    assert c.task.optimizer.lr == 1e-4


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_config_matches_the_registry(name):
    c = cfg(f"dataset={name}")
    assert c.dataset.name == name and c.task.name == "forecast" and get(name).task == "forecast"
    assert get(name).info["channels"] >= 1 and "n_channels" not in c.dataset, "a fact is written once: in the catalog"


@pytest.mark.parametrize(
    "name,horizon,epochs",
    [("Weather", 96, 3), ("Weather", 192, 10), ("Traffic", 720, 3), ("Exchange", 336, 1), ("Exchange", 192, 10), ("ETTh1", 96, 10)],
)
def test_tslib_epoch_exceptions(name, horizon, epochs):
    c = cfg(f"dataset={name}", f"task.pred_len={horizon}")
    assert c.trainer.max_epochs == epochs
    assert c.cell == f"forecast/{name}-H{horizon}/suite/aaren/seed0"


@pytest.mark.parametrize("model", ["aaren", "transformer"])
def test_fast_dev_run_on_real_etth1(shared_data, runs_dir, model):
    from aaren_bench.run import train

    c = cfg("dataset=ETTh1", f"model={model}", "trainer=debug", "trainer.fast_dev_run=1", "logger=none",
            "task.backbone.d_model=16", "task.backbone.n_heads=2", "task.backbone.d_ff=32", "task.backbone.n_layers=1",
            f"paths.data_root={shared_data}", f"paths.runs={runs_dir}", "trainer.enable_progress_bar=false")
    rec = train(c)
    assert set(rec["metrics"]) == {"test/mse", "test/mae", "test/samples"}
    assert all(v > 0 for v in rec["metrics"].values())
