"""task=events through the real entry point, and split metrics that do not depend on batching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aaren_bench.run import build, train
from aaren_bench.study import compose_config
from tasks.events.likelihood import metric_sums
from tests.prepared import read

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _cfg(*overrides):
    return compose_config(["task=events", "logger=none", *overrides])


def test_default_dataset_is_sin_and_sizes_follow_meta_tpp():
    cfg = _cfg()
    assert cfg.dataset.name == "Sin" and cfg.task.monitor == "val/nll"
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (64, 2, 1)
    assert cfg.task.optimizer.lr == 1e-4 and cfg.task.batch_size == 16


@pytest.mark.parametrize("name", ["StackOverflow", "Mooc", "Reddit", "Wiki", "Uber", "Taxi", "MIMIC", "Sin"])
def test_every_dataset_config_composes_and_is_registered(name):
    from aaren_bench.data import get

    cfg = _cfg(f"dataset={name}")
    assert cfg.task.name == "events" and get(name).task == "events"


def test_missing_meta_tpp_file_says_where_to_get_it(tmp_path):
    from aaren_bench.data import DatasetNotFound

    cfg = _cfg("dataset=Mooc", f"paths.data_root={tmp_path}")
    with pytest.raises(DatasetNotFound, match="Google Drive.*real/mooc.npz"):
        build(cfg).datamodule.prepare_data()


@pytest.mark.parametrize("model", ["aaren", "transformer"])
def test_one_short_epoch_writes_a_record(model, runs_dir):
    cfg = _cfg(f"model={model}", "dataset.n_seqs=20", "dataset.t_end=30", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
               "trainer.enable_model_summary=false", f"paths.runs={runs_dir}")
    rec = train(cfg)
    m = rec["metrics"]
    assert {"test/nll", "test/nll_time", "test/rmse"} <= set(m) and "test/acc" not in m  # Sin is unmarked
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert rec["protocol"] == "suite" and rec["data_source"]["kind"] == "generated"
    saved = json.loads((runs_dir / rec["cell"] / "result.json").read_text())
    assert rec["cell"].startswith("events/Sin/suite+x")  # smaller data than the paper cell: a tagged cell
    assert saved["metrics"] == m


def test_split_metrics_are_exact_whatever_the_batch_size():
    from functools import reduce

    from tasks.events.data import collate
    from tasks.events.likelihood import add_sums, split_metrics

    cfg = _cfg("dataset.n_seqs=30", "dataset.t_end=30")
    _, dm, module, _ = read(build(cfg))
    module.eval()
    seqs = dm.splits["test"]

    def total(bs):
        with torch.no_grad():
            parts = [metric_sums(*module.model(b), b)
                     for b in (collate(seqs, range(i, min(i + bs, len(seqs)))) for i in range(0, len(seqs), bs))]
        return split_metrics(reduce(add_sums, parts), marked=False)

    one, seven = total(1), total(7)
    assert set(one) == {"nll", "nll_time", "rmse", "nll_metatpp", "rmse_metatpp"}
    for k in one:  # Meta TPP's per-sequence RMSE does not depend on batching either
        assert one[k] == pytest.approx(seven[k], rel=1e-5), k
