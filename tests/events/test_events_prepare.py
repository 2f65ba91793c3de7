"""Data prepared once (events): building the datamodule and the module reads nothing; ``prepare_data``
fetches, ``setup`` reads once per process; the time scale travels in the checkpoint, so a resumed run
keeps it even when the data changed."""
from __future__ import annotations

import math

import numpy as np
import pytest

import aaren_bench.data
from aaren_bench.run import build
from aaren_bench.study import compose_config
from tasks.events import formats, synthetic
from tasks.events.data import EventSeqs
from tasks.events.formats import save_meta_tpp_npz
from tests.prepared import assert_prepared_once, trainer

TINY = ["task=events", "logger=none", "task.backbone.d_model=16", "task.backbone.n_layers=1",
        "task.backbone.d_ff=32", "task.batch_size=4"]


def _mooc(root, scale: float = 1.0) -> EventSeqs:
    """A small file in the place of Meta TPP's mooc.npz (97 marks, as the catalog says)."""
    rng = np.random.default_rng(0)
    times = [np.cumsum(rng.uniform(0.5, 2.0, size=n)) * scale for n in (5, 7, 4, 6, 8, 5, 6, 9, 4, 7)]
    marks = [rng.integers(0, 97, size=len(t)) for t in times]
    seqs = EventSeqs.build(times, marks, t_end=30.0 * scale, num_marks=97)
    save_meta_tpp_npz(seqs, root / "events" / "meta_tpp" / "real" / "mooc.npz")
    return seqs


@pytest.fixture
def counted(monkeypatch):
    """Counts of full reads of a Meta TPP file and of fetches (download and checksum) from the registry."""
    n = {"reads": 0, "fetches": 0}
    load, fetch = formats.load_meta_tpp_npz, aaren_bench.data.fetch

    def read(*a, **k):
        n["reads"] += 1
        return load(*a, **k)

    def fetched(*a, **k):
        n["fetches"] += 1
        return fetch(*a, **k)

    monkeypatch.setattr(formats, "load_meta_tpp_npz", read)
    monkeypatch.setattr(aaren_bench.data, "fetch", fetched)
    return n


def test_build_reads_nothing_prepare_data_fetches_setup_reads_once(tmp_path, counted):
    _mooc(tmp_path)
    cfg = compose_config(["dataset=Mooc", f"paths.data_root={tmp_path}", *TINY])
    built = build(cfg)
    other = build(cfg).datamodule  # a process of the run that does not prepare the data
    assert built.datamodule.num_marks == 97 and built.module.model.mark_emb.num_embeddings == 97  # the catalog's
    assert math.isnan(built.module.model.log_scale)  # no scale before the data is read
    assert_prepared_once(built, other, counted, "fetches", missing=None)  # the file is there: nothing to download
    built.module.adopt_statistics(built.datamodule)
    assert built.module.model.scale == pytest.approx(built.datamodule.splits["train"].mean_inter_time(), rel=1e-12)


def test_missing_file_is_reported_by_prepare_data_not_by_build(tmp_path):
    from aaren_bench.data import DatasetNotFound

    built = build(compose_config(["dataset=Mooc", f"paths.data_root={tmp_path}", *TINY]))
    with pytest.raises(DatasetNotFound, match="real/mooc.npz"):
        built.datamodule.prepare_data()


def test_resumed_run_keeps_the_time_scale_it_started_with(tmp_path):
    cfg = compose_config(["dataset=Mooc", f"paths.data_root={tmp_path}", *TINY])
    _mooc(tmp_path)
    first = build(cfg)
    first_trainer = trainer(2)
    first_trainer.fit(first.module, datamodule=first.datamodule)
    scale = first.datamodule.splits["train"].mean_inter_time()
    assert first.module.model.scale == pytest.approx(scale, rel=1e-12)  # fit's setup set it
    first_trainer.save_checkpoint(tmp_path / "step2.ckpt")

    _mooc(tmp_path, scale=3.0)  # the data changed under the run: its scale is 3 times the first
    again = build(cfg)
    trainer(3).fit(again.module, datamodule=again.datamodule, ckpt_path=tmp_path / "step2.ckpt")
    assert again.datamodule.splits["train"].mean_inter_time() == pytest.approx(3 * scale, rel=1e-9)
    assert again.module.model.scale == pytest.approx(scale, rel=1e-12)
    assert again.datamodule.time_scale == pytest.approx(scale, rel=1e-12)


def test_generated_data_is_made_in_setup(monkeypatch):
    made = []
    generate = synthetic.generate_sin
    monkeypatch.setattr(synthetic, "generate_sin", lambda *a: made.append(a) or generate(*a))
    built = build(compose_config(["dataset=Sin", "dataset.n_seqs=20", "dataset.t_end=20", "dataset.source=own", *TINY]))
    built.datamodule.prepare_data()
    assert not made
    built.datamodule.setup("fit")
    assert made == [(20, 20.0, 0)] and np.isfinite(built.datamodule.splits["train"].times[0]).all()
