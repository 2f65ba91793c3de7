"""UEA multivariate time-series classification (``task=classify``)."""
from __future__ import annotations

from aaren_bench.task import Task
from tasks.classify.data import UEADataModule
from tasks.classify.module import Classifier


class ClassifyTask(Task):
    name = "classify"
    metrics = ("test/acc", "test/loss")

    def build_datamodule(self, cfg) -> UEADataModule:
        from tasks.classify.catalog import uea_files

        train_path, test_path = uea_files(cfg.dataset.name, cfg.paths.data_root)
        t = cfg.task
        return UEADataModule(
            train_path, test_path, name=cfg.dataset.name, validation=t.validation, val_fraction=t.val_fraction,
            split_seed=t.split_seed, standardize=t.standardize, statistics=t.statistics, std_ddof=t.std_ddof,
            instance_norm=cfg.dataset.name in (t.instance_norm_datasets or ()), batch_size=t.batch_size,
            num_workers=t.num_workers, nan_policy=t.nan_policy,
        )

    def build_module(self, cfg, dm: UEADataModule, backbone, optimizer) -> Classifier:
        t = cfg.task
        return Classifier(backbone, optimizer, n_channels=dm.n_channels, n_classes=dm.n_classes, max_len=dm.max_len,
                          readout=t.readout, embed=t.embed, dropout=t.backbone.dropout, mask_padding=t.mask_padding,
                          final_norm=t.final_norm, lr_schedule=t.lr_schedule)


TASK = ClassifyTask()

__all__ = ["TASK", "Classifier", "ClassifyTask", "UEADataModule"]
