"""Data prepared once: building a classifier reads no file (the catalog gives its sizes); the files
are fetched in prepare_data and read once in setup, against the catalog's sizes."""
from __future__ import annotations

import numpy as np
import pytest

import tasks.classify.data as D
from aaren_bench.study import compose_config
from tasks.classify import TASK
from tests.classify.test_data import write_ts


def test_building_reads_nothing_and_setup_reads_each_file_once(tmp_path, monkeypatch):
    reads = []
    real = D.read_ts
    monkeypatch.setattr(D, "read_ts", lambda path, *a, **k: reads.append(path.name) or real(path, *a, **k))
    cfg = compose_config(["dataset=JapaneseVowels", f"paths.data_root={tmp_path}"])  # bundled in sktime
    dm = TASK.build_datamodule(cfg)
    assert (dm.n_channels, dm.n_classes, dm.max_len) == (12, 9, 29) and reads == []  # the catalog's sizes
    dm.prepare_data()
    dm.setup()
    assert sorted(reads) == ["JapaneseVowels_TEST.ts", "JapaneseVowels_TRAIN.ts"]
    assert len(dm.test_set) == 370 and dm.n_classes == 9
    dm.setup()
    assert len(reads) == 2


def test_files_that_disagree_with_the_catalog(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "Heartbeat").mkdir()
    for split in ("TRAIN", "TEST"):  # 3 channels where the catalog says 61
        write_ts(tmp_path / "Heartbeat" / f"Heartbeat_{split}.ts", [rng.normal(size=(5, 3)) for _ in range(4)],
                 ["a", "b", "a", "b"], name="Heartbeat")
    dm = TASK.build_datamodule(compose_config(["dataset=Heartbeat", f"paths.data_root={tmp_path}"]))
    with pytest.raises(D.UEADataError, match=r"Heartbeat: the files do not have the catalog's sizes \(channels: "
                                             r"catalog 61, files 3\); fix the entry in tasks/classify/catalog.py"):
        dm.setup()
