"""Loggers: CSV by default (no account), Weights & Biases online or offline on request.

A resumed run continues its logs: ``logs/metrics.csv`` keeps the rows of the earlier attempts up
to the checkpoint the run resumes from (the rows a killed attempt wrote after it are logged again
by the resumed run, so they are dropped), and the wandb run of the cell is continued.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger("aaren_bench")


def make_logger(cfg, run_dir: Path, resume_step: int | None = None):
    """Build the Lightning logger named by ``cfg.logger.kind``. ``resume_step``: the global step of
    the checkpoint this run resumes from (None: a fresh start, earlier logs are replaced)."""
    kind = cfg.logger.kind
    if kind == "csv":
        return ResumableCSVLogger(save_dir=str(run_dir), name="logs", version="", resume_step=resume_step)
    if kind == "wandb":
        import hashlib

        from lightning.pytorch.loggers import WandbLogger
        from omegaconf import OmegaConf

        # a stable id per cell and run folder: a resumed (requeued, resubmitted) cell continues its run
        run_id = hashlib.sha1(f"{run_dir.resolve()}".encode()).hexdigest()[:16]

        return WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.get("entity"),
            group=cfg.logger.group,
            name=cfg.logger.name,
            tags=list(cfg.logger.tags),
            save_dir=str(run_dir),
            offline=bool(cfg.logger.offline),
            id=run_id,
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    if kind == "none":
        return False
    raise ValueError(f"unknown logger kind {kind!r}; use logger=csv, logger=wandb, logger=wandb_offline or logger=none")


def finish_logger(logger) -> None:
    """Close a wandb run so that the next run of a multirun starts a fresh one."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()



class ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one, on a resume, keeps the
    rows logged before global step ``resume_step`` (each row carries the ``step`` it was logged at)."""

    def __init__(self, log_dir: str, resume_step: int | None):
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._resume_step is None:
            super()._check_log_dir_exists()  # a fresh start: the old file goes
        else:
            self._keep_rows_before(self._resume_step)

    def _keep_rows_before(self, step: int) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if _step(r) < step]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
        self.metrics_keys = keys  # new rows are appended under the same header (a new key rewrites it)
        if len(kept) < len(rows):
            log.info("%s: kept the %d rows logged before step %d; the resumed run logs the %d after it again",
                     path, len(kept), step, len(rows) - len(kept))


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")  # an unreadable row is dropped (nan < step is False)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``; on a resume (``resume_step``: the checkpoint's global step) it
    continues ``metrics.csv`` instead of replacing it."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ContinuedWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment
