"""UEA multivariate time-series classification (``task=classify``)."""
from __future__ import annotations

from aaren_bench.task import Task
from tasks.classify.data import UEADataModule
from tasks.classify.model import SeriesClassifier
from tasks.classify.module import Classifier


class ClassifyTask(Task):
    name = "classify"
    metrics = ("test/acc", "test/loss")

    def build_datamodule(self, cfg) -> UEADataModule:
        """The files are fetched in ``prepare_data`` and read in ``setup``; the model's sizes are the catalog's."""
        from aaren_bench.data import RegistryFiles, get

        info = get(cfg.dataset.name).info
        t = cfg.task
        return UEADataModule(
            name=cfg.dataset.name, files=RegistryFiles(cfg.dataset.name, cfg.paths.data_root),
            sizes={k: info[k] for k in ("channels", "classes", "max_len")}, validation=t.validation,
            val_fraction=t.val_fraction, split_seed=t.split_seed, standardize=t.standardize, statistics=t.statistics,
            std_ddof=t.std_ddof, instance_norm=cfg.dataset.name in (t.instance_norm_datasets or ()),
            batch_size=t.batch_size, num_workers=t.num_workers, nan_policy=t.nan_policy,
        )

    def build_module(self, cfg, dm: UEADataModule, backbone, optimizer) -> Classifier:
        t = cfg.task
        model = SeriesClassifier(backbone, n_channels=dm.n_channels, n_classes=dm.n_classes, max_len=dm.max_len,
                                 readout=t.readout, embed=t.embed, dropout=t.backbone.dropout,
                                 mask_padding=t.mask_padding, final_norm=t.final_norm)
        return Classifier(model, optimizer, lr_schedule=t.lr_schedule)


TASK = ClassifyTask()

__all__ = ["TASK", "ClassifyTask"]
