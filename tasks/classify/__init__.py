"""UEA multivariate time-series classification (``task=classify``)."""
from __future__ import annotations

from tasks.classify.data import UEADataModule
from tasks.classify.module import Classifier


def build(cfg):
    from aaren_bench.data.catalog_classify import uea_files

    train_path, test_path = uea_files(cfg.dataset.name, cfg.paths.data_root)
    t = cfg.task
    dm = UEADataModule(
        train_path, test_path, name=cfg.dataset.name, protocol=t.protocol, val_fraction=t.val_fraction,
        split_seed=t.split_seed, standardize=t.standardize, batch_size=t.batch_size, num_workers=t.num_workers,
        nan_policy=t.nan_policy,
    )
    module = Classifier(cfg.model, t.optimizer, n_channels=dm.n_channels, n_classes=dm.n_classes,
                        max_len=dm.max_len, readout=t.readout, embed=t.embed)
    return dm, module


__all__ = ["Classifier", "UEADataModule", "build"]
