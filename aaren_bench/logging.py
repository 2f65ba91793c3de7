"""Loggers: CSV by default (no account), Weights & Biases online or offline on request."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("aaren_bench")


def make_logger(cfg, run_dir: Path):
    """Build the Lightning logger named by ``cfg.logger.kind``."""
    kind = cfg.logger.kind
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version="")
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
