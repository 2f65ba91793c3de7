"""One run: config -> task (datamodule + module) -> fit -> test -> one result record.

``train(cfg)`` is what ``train.py`` calls for every Hydra job. The run folder is
deterministic (``<runs>/<cell>``): checkpoints, logs and the record all live there, so a
resubmitted job resumes from ``checkpoints/last.ckpt`` and a finished one is skipped.
"""
from __future__ import annotations

import fcntl
import importlib
import logging
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from aaren_bench.logging import finish_logger, make_logger
from aaren_bench.results import is_done, load_record, result_path, write_json_atomic

log = logging.getLogger("aaren_bench")

TASKS = ("classify", "forecast", "events", "rl")


def load_task(name: str):
    """The task package ``tasks.<name>``; it exposes ``build(cfg) -> (datamodule, module)``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)} (e.g. task=classify)")
    return importlib.import_module(f"tasks.{name}")


def check_config(cfg: DictConfig) -> None:
    if cfg.dataset.task != cfg.task.name:
        raise ValueError(
            f"dataset {cfg.dataset.name!r} belongs to task={cfg.dataset.task}, but task={cfg.task.name} was chosen; "
            f"run with task={cfg.dataset.task} dataset={cfg.dataset.name}"
        )


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__}
    try:
        out["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _quiet_duplicate_logs() -> None:
    """Lightning prints through its own handler and again through Hydra's root handler: keep one."""
    root_handlers = logging.getLogger().handlers
    if root_handlers:
        for name in ("lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    lg.removeHandler(h)


@contextmanager
def cell_lock(run_dir: Path):
    """Hold an exclusive lock on ``<run_dir>/.lock`` while the cell runs; yields False when
    another process (another SLURM job of a resubmitted sweep) holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} pid {os.getpid()} job {os.environ.get('SLURM_JOB_ID', '-')}\n".encode())
        yield True
    finally:
        os.close(fd)  # releases the lock


def usable_checkpoint(path: Path) -> bool:
    """True when ``path`` loads; a torn file (killed while copying it into place) is moved aside."""
    if not path.exists():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception as e:  # noqa: BLE001 - any failure to load means: do not resume from it
        bad = path.with_suffix(".ckpt.unreadable")
        path.replace(bad)
        log.warning("cannot load %s (%s); moved to %s, training starts over", path, e, bad)
        return False


def make_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = cfg.task.get("monitor")  # null: no model selection, the last weights are tested
    cbs = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best" if monitor else "last",
            monitor=monitor,
            mode=cfg.task.get("monitor_mode", "min"),
            save_top_k=1 if monitor else 0,
            save_last=True,
            enable_version_counter=False,
        )
    ]
    every = cfg.get("checkpoint_every_min")
    if every:  # last.ckpt also every N minutes of training, so a kill loses at most N minutes
        cbs.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor=None, save_top_k=0, save_last=True,
                                   train_time_interval=timedelta(minutes=float(every)), enable_version_counter=False))
    if cfg.task.get("patience") and monitor:
        cbs.append(EarlyStopping(monitor=cfg.task.monitor, mode=cfg.task.monitor_mode, patience=cfg.task.patience))
    return cbs


def train(cfg: DictConfig) -> dict:
    """Run one cell and return its record (or the existing record when it is done)."""
    check_config(cfg)
    _quiet_duplicate_logs()
    run_dir = Path(cfg.run_dir).resolve()
    if cfg.skip_done and is_done(run_dir):
        log.info("already done, skipping: %s (delete it or pass skip_done=false to rerun)", result_path(run_dir))
        return load_record(result_path(run_dir))

    if cfg.trainer.get("fast_dev_run"):
        return _run(cfg, run_dir, debug=True)
    with cell_lock(run_dir) as held:
        if not held:
            log.warning("cell %s is running in another process (lock %s is held): not starting it twice",
                        cfg.cell, run_dir / ".lock")
            return None
        if cfg.skip_done and is_done(run_dir):  # finished while this job waited in the queue
            return load_record(result_path(run_dir))
        return _run(cfg, run_dir, debug=False)


def _run(cfg: DictConfig, run_dir: Path, debug: bool) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    task = load_task(cfg.task.name)
    datamodule, module = task.build(cfg)
    n_params = sum(p.numel() for p in module.parameters())
    backbone_params = sum(p.numel() for p in module.backbone.parameters())

    logger = False if debug else make_logger(cfg, run_dir)
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        logger=logger,
        callbacks=[] if debug else make_callbacks(cfg, run_dir),  # a smoke run leaves no checkpoint
        enable_checkpointing=not debug,
        default_root_dir=str(run_dir),
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if not debug and usable_checkpoint(last) else None
    if resume:
        log.info("resuming from %s", resume)

    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        fit_s = time.perf_counter() - t0
        best = None if debug else (trainer.checkpoint_callback.best_model_path or None)
        if not debug and not cfg.task.get("monitor"):
            best = None  # no model selection: test the weights training ended with
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
        record = {
            "schema": 1,
            "task": cfg.task.name,
            "dataset": cfg.dataset.name,
            "variant": cfg.task.get("variant", ""),
            "model": cfg.model.name,
            "seed": int(cfg.seed),
            "cell": cfg.cell,
            "metrics": metrics,
            "epochs": int(trainer.current_epoch),
            "global_steps": int(trainer.global_step),
            "best_checkpoint": best,
            "params": {"total": n_params, "backbone": backbone_params},
            "wall_time_s": {"fit": fit_s, "total": time.perf_counter() - t0},
            "device": str(trainer.strategy.root_device),
            "versions": versions(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "command": " ".join(sys.argv),
        }
        if debug:
            print(f"\n[{cfg.cell}] smoke run (fast_dev_run) ok: {_summary(metrics)}; no record written")
            return record
        path = write_json_atomic(result_path(run_dir), record)
    finally:
        finish_logger(logger)
    print(f"\n[{cfg.cell}] test: {_summary(metrics)}\nresult written to {path}")
    return record


def _summary(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "no metrics"
