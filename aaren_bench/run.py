"""One run: config -> task (datamodule + module around a built backbone) -> fit -> test -> one record.

``train(cfg)`` is what ``train.py`` calls for every Hydra job. The run folder is the cell's
key (``aaren_bench.study.Cell``) under the runs root: checkpoints, logs, the saved config
and the record live there, so a resubmitted job resumes from ``checkpoints/last.ckpt`` (written
at every epoch end and every ``checkpoint_every_min`` minutes) and a finished one is skipped.
A resumed run ends as the uninterrupted one would have, bit for bit (``aaren_bench.resume``);
its ``logs/metrics.csv`` continues and its record's wall time counts every attempt. A run whose loss or test metrics are not finite is a failure:
``failed.json`` says why, the job exits non-zero and a rerun runs the cell again.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from aaren_bench.cellfiles import cell_lock, clean_stray_temp, move_aside, remove_unstarted
from aaren_bench.cluster import (
    Preempted,
    RankZeroDecision,
    SaveOnSignal,
    await_decision,
    check_launch,
    in_local_sweep,
    is_launch_zero,
    quiet_follower_log,
    stopped_by_signal,
)
from aaren_bench.distributed import device_batch
from aaren_bench.errors import (
    CellBusy,
    CheckpointMismatch,
    ConfigError,
    RunFailed,
    SuiteError,
    storage_error,
)
from aaren_bench.logging import finish_logger, make_logger
from aaren_bench.results import (
    FAILED_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
    is_done,
    load_record,
    read_record,
    result_path,
    write_json_atomic,
)
from aaren_bench.resume import AtomicCheckpointIO, MidEpochCheckpoint, RelativeCheckpoint, RunState
from aaren_bench.schema import validate
from aaren_bench.study import Cell, measuring_overrides, run_overrides
from aaren_bench.task import Task, load_task, optimizer_factory, parameter_split

log = logging.getLogger("aaren_bench")


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
    if logging.getLogger().handlers:
        for name in ("lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    lg.removeHandler(h)


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


def check_checkpoint_shapes(path: Path, module: torch.nn.Module) -> int:
    """A checkpoint of a model of another shape: say what differs and how to start over.
    Returns the checkpoint's global step."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    state = ckpt.get("state_dict", {})
    own = module.state_dict()
    diff = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if diff or missing or extra:
        lines = diff[:5] + [f"missing in the checkpoint: {', '.join(missing[:5])}"] * bool(missing)
        lines += [f"not in the model: {', '.join(extra[:5])}"] * bool(extra)
        raise CheckpointMismatch(
            f"{path} belongs to a model of another shape than this run's:\n  " + "\n  ".join(lines)
            + f"\nThe configuration of this cell changed since it was started. To start it over, delete "
              f"{path.parent} (or the whole cell folder {path.parents[1]}); to keep it, rerun with the old settings."
        )
    return int(ckpt.get("global_step", 0))


def _kernels_record() -> dict:
    from aaren_bench.ops.kernels import USED, available

    return {name: {"imports": ok, "ran": name in USED} for name, (ok, _) in available().items()}


class FiniteLoss(L.Callback):
    """Stop at the first non-finite training loss, naming its step, without a host read per step.

    The step and loss of the first non-finite loss are kept on the loss's device (``torch.where``
    with the step as a kernel argument: no copy, no sync); the host reads them every ``every``
    steps, at each epoch end, before every checkpoint is written (a diverged model is never
    saved) and when training ends. On a GPU a read per step would stall it at every step.
    """

    def __init__(self, every: int = 50):
        if every < 1:
            raise ValueError(f"FiniteLoss(every={every}): read the flag every >= 1 steps")
        self.every = every
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None  # (step, loss); step -1: none yet

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        if self._first is None:
            self._first = (torch.full((), -1, dtype=torch.long, device=loss.device), torch.zeros((), device=loss.device))
        step, value = self._first
        new = (step < 0) & ~torch.isfinite(loss).all()
        self._first = (torch.where(new, trainer.global_step, step), torch.where(new, loss.reshape(-1)[0], value))
        if trainer.global_step % self.every == 0:
            self.check(trainer)

    def check(self, trainer) -> None:
        """Raise :class:`RunFailed` if a non-finite loss was seen (one host read)."""
        if self._first is None or int(self._first[0]) < 0:
            return
        step, value = int(self._first[0]), float(self._first[1])
        raise RunFailed(
            f"training loss is {value} at step {step} (seen at step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}); the run diverged. Lower task.optimizer.lr, check the data for extreme "
            f"values, or clip gradients (task.grad_clip)."
        )

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.check(trainer)

    def on_train_end(self, trainer, pl_module):
        self.check(trainer)


def make_callbacks(cfg: DictConfig, run_dir: Path, task: Task) -> list:
    from lightning.pytorch.callbacks import EarlyStopping

    sel = task.selection(cfg)  # None: no model selection, the last weights are tested
    ckpts = str(run_dir / "checkpoints")
    cbs = [FiniteLoss(), RunState()]  # RunState: random states and elapsed time, so a resume continues bit for bit
    cbs.append(SaveOnSignal(run_dir / "checkpoints" / "last.ckpt"))  # SIGTERM: last.ckpt at that step
    if sel:  # best.ckpt, the weights tested; the first ModelCheckpoint is trainer.checkpoint_callback
        cbs.append(RelativeCheckpoint(dirpath=ckpts, filename="best", monitor=sel.metric, mode=sel.mode, save_top_k=1,
                                   enable_version_counter=False))
    if cfg.trainer.get("max_steps") in (None, -1):
        # last.ckpt at every epoch end (Lightning's save_last=True writes it only when a best checkpoint
        # was written in the same step, and never at an epoch end without a monitored metric)
        cbs.append(RelativeCheckpoint(dirpath=ckpts, filename="last", monitor=None, save_top_k=1,
                                   save_on_train_epoch_end=True, enable_version_counter=False))
    else:
        # training counted in steps (RL): Lightning resumes from an epoch-end checkpoint one batch off
        # (it replays that epoch's end), so last.ckpt is written mid-epoch (below) and when training ends
        cbs.append(RelativeCheckpoint(dirpath=ckpts, filename="last", monitor=None, save_top_k=0, save_last=True,
                                   enable_version_counter=False))
    every = cfg.get("checkpoint_every_min")
    if every:  # last.ckpt also every N minutes of training, so a kill loses at most N minutes
        cbs.append(MidEpochCheckpoint(dirpath=ckpts, monitor=None, save_top_k=0, save_last=True,
                                      train_time_interval=timedelta(minutes=float(every)), enable_version_counter=False))
    stop = task.early_stopping(cfg)
    if stop:
        cbs.append(EarlyStopping(monitor=stop.metric, mode=stop.mode, patience=cfg.task.patience))
    return cbs


class Built(NamedTuple):
    task: Task
    datamodule: Any
    module: L.LightningModule
    backbone: torch.nn.Module


def build(cfg: DictConfig) -> Built:
    """(task, datamodule, module, backbone) of a cell: the task contract, nothing else."""
    from aaren_bench.nn import build_backbone

    task = load_task(cfg.task.name)
    datamodule = task.build_datamodule(cfg)
    backbone = build_backbone(cfg.model)
    module = task.build_module(cfg, datamodule, backbone, optimizer_factory(cfg.task.optimizer))
    return Built(task, datamodule, module, backbone)


def _identity(cfg: DictConfig) -> tuple[Cell, list[str]]:
    overrides = run_overrides(cfg)
    return Cell.from_cfg(cfg, overrides), overrides


def train(cfg: DictConfig) -> dict | None:
    """Run one cell and return its record (or the existing record when it is done)."""
    validate(cfg)  # the schema: every key's type and range, and the relations between keys
    _quiet_duplicate_logs()
    if not is_launch_zero():
        quiet_follower_log()  # the cell's log file is rank zero's
    check_launch(cfg.trainer)
    _check_global_batch(cfg)
    cell, overrides = _identity(cfg)
    if cell.key != cfg.cell:
        raise ConfigError(f"cell={cfg.cell!r} was set by hand; the key is built from the run ({cell.key})")
    run_dir = Path(cfg.run_dir).resolve()
    if cell.tag:
        log.info("this run changes what is measured (%s): it is cell %s, not a paper cell",
                 ", ".join(measuring_overrides(overrides)) or f"tag={cell.tag}", cell.key)
    if not is_launch_zero():  # another process of this run: global rank zero holds the lock and writes
        return _follow(cfg, cell, overrides, run_dir)
    with RankZeroDecision(cfg.paths.runs, cell.key) as decision:  # the other processes wait for what it says
        return _lead(cfg, cell, overrides, run_dir, decision)


def _lead(cfg: DictConfig, cell: Cell, overrides: list[str], run_dir: Path, decision: RankZeroDecision) -> dict:
    """Global rank zero: take the cell's lock, run (or skip) the cell, and tell the other processes."""
    _, unreadable = read_record(result_path(run_dir))
    if unreadable:
        log.warning("%s %s: the cell is not done and runs again", result_path(run_dir), unreadable)
    if cfg.trainer.get("fast_dev_run"):
        decision.tell("run")
        return _smoke(cfg, cell, overrides, run_dir)
    if cfg.get("restart"):
        _restart(run_dir, cell)
    elif cfg.skip_done and is_done(run_dir):
        decision.tell("skip")
        return _skip(run_dir, overrides)
    with cell_lock(run_dir) as held:
        if not held:  # another job runs the cell: leave its folder and its lock alone
            raise CellBusy(f"cell {cell.key} is running in another process (lock {run_dir / '.lock'} is held: "
                           f"{(run_dir / '.lock').read_text().strip()}); not starting it twice")
        clean_stray_temp(run_dir)
        if cfg.skip_done and not cfg.get("restart") and is_done(run_dir):  # finished while this job was queued
            decision.tell("skip")
            return _skip(run_dir, overrides)
        decision.tell("run")
        try:
            return _run(cfg, cell, overrides, run_dir, debug=False)
        except BaseException:
            remove_unstarted(run_dir)  # a start that failed before training leaves no folder (this job holds the lock)
            raise


def _check_global_batch(cfg: DictConfig) -> None:
    """``task.batch_size`` is the global batch: it must split evenly over devices x nodes (refused at start)."""
    devices, nodes = cfg.trainer.get("devices", 1), int(cfg.trainer.get("num_nodes", 1) or 1)
    if str(devices).isdigit() and cfg.task.get("batch_size"):
        device_batch(int(cfg.task.batch_size), int(devices) * nodes)


def _follow(cfg: DictConfig, cell: Cell, overrides: list[str], run_dir: Path) -> None:
    """A process other than global rank zero: it waits for rank zero's decision (run, skip, or stop with
    rank zero's exit status), then runs the same cell on its share of the data, taking no lock and
    writing nothing (no record, config or log file)."""
    if await_decision(cfg.paths.runs, cell.key) == "skip":
        return None
    _run(cfg, cell, overrides, run_dir, debug=bool(cfg.trainer.get("fast_dev_run")), writer=False)
    return None


def _smoke(cfg: DictConfig, cell: Cell, overrides: list[str], run_dir: Path) -> dict:
    """``trainer=debug`` (fast_dev_run): a few batches of everything; no checkpoint, no record, and
    no folder left behind. A finished cell is smoke-run too; its record stays as it is."""
    if is_done(run_dir):
        log.info("trainer=debug: a smoke run of the finished cell %s (a few batches, no checkpoint); its record "
                 "%s is left as it is", cell.key, result_path(run_dir))
    try:
        return _run(cfg, cell, overrides, run_dir, debug=True)
    finally:
        remove_unstarted(run_dir, keep_lock=True)


def _restart(run_dir: Path, cell: Cell) -> None:
    """``restart=true``: move a finished (or failed) cell's folder aside, kept as ``<cell>.old-<time>``,
    so the cell trains from scratch; refused while another job runs it. A cell without a record
    or a failure is left as it is, so a requeued ``restart=true`` job resumes its own training
    instead of starting over again."""
    ended = run_dir / RESULT_FILE, run_dir / FAILED_FILE
    if not any(p.exists() for p in ended):
        log.info("restart=true: %s has no record or failure to set aside; running it as usual", cell.key)
        return
    with cell_lock(run_dir) as held:
        if not held:
            raise CellBusy(f"cell {cell.key} is running in another process (lock {run_dir / '.lock'}); "
                           f"restart=true moves its folder only when no job runs it")
        aside = move_aside(run_dir)
    print(f"[{cell.key}] restart=true: the previous run is kept in {aside}; training from scratch")


def _skip(run_dir: Path, overrides: list[str]) -> dict:
    rec = load_record(result_path(run_dir))
    before = set(rec.get("overrides") or [])
    now = set(overrides)
    if rec.get("overrides") is not None and before != now:
        log.warning("cell %s is done with other overrides than this run's: it was run with [%s], this run asks for "
                    "[%s] (none of which changes what is measured). Skipping; pass restart=true to run it again "
                    "from scratch.", rec.get("cell"), " ".join(sorted(before)), " ".join(sorted(now)))
    else:
        log.info("already done, skipping: %s (restart=true trains it again from scratch, the old folder kept aside)",
                 result_path(run_dir))
    return rec


def _save_config(cfg: DictConfig, overrides: list[str], run_dir: Path) -> None:
    """``.hydra/config.yaml``, ``overrides.yaml`` and (in a Hydra job) ``hydra.yaml``, written when
    the run really starts (``hydra.output_subdir`` is off, so a skipped rerun rewrites nothing)."""
    from hydra.core.hydra_config import HydraConfig

    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    texts = {"config.yaml": OmegaConf.to_yaml(cfg), "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(overrides)))}
    if HydraConfig.initialized():  # the job's Hydra node as it is (launcher, job id), unresolved
        node = OmegaConf.to_container(HydraConfig.get(), resolve=False)
        texts["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": node}))
    for name, text in texts.items():
        tmp = d / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, d / name)


def _run(cfg: DictConfig, cell: Cell, overrides: list[str], run_dir: Path, debug: bool, writer: bool = True) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    task, datamodule, module, backbone = build(cfg)
    params = parameter_split(module, backbone)
    log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in params.items()))

    if not debug and writer:  # global rank zero alone writes in the cell folder
        _save_config(cfg, overrides, run_dir)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if not debug and (usable_checkpoint(last) if writer else last.exists()) else None
    resume_step = None
    if resume:
        resume_step = check_checkpoint_shapes(last, module)
        log.info("resuming from %s (step %d)", resume, resume_step)
    logger = False if debug or not writer else make_logger(cfg, run_dir, resume_step=resume_step)
    callbacks = [FiniteLoss()] if debug else make_callbacks(cfg, run_dir, task)  # a smoke run leaves no checkpoint
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=not debug,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],  # a checkpoint is whole or absent, never torn
    )
    run_state = next((c for c in callbacks if isinstance(c, RunState)), None)

    t0 = time.perf_counter()
    try:
        try:
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            except SystemExit as e:  # Lightning's stop at SIGTERM exits 0: a killed job must not look successful
                if not stopped_by_signal(e):
                    raise
                raise Preempted(f"stopped by a signal (scancel, preemption, time limit) at step {trainer.global_step}; "
                                f"run the same command to resume from {last}") from None
            # the fit time of every attempt (up to its last checkpoint) when resumed
            fit_s = run_state.elapsed() if run_state else time.perf_counter() - t0
            attempts = run_state.attempts if run_state else 1
            t_test = time.perf_counter()
            sel = task.selection(cfg)
            best = (trainer.checkpoint_callback.best_model_path or None) if (sel and not debug) else None
            tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
            test_s = time.perf_counter() - t_test
        except RunFailed as e:
            if not debug and writer:
                _mark_failed(run_dir, cell, str(e))
            raise
        metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
        primary = task.primary_metric(cfg)
        record = {
            "schema": SCHEMA_VERSION,
            "cell": cell.key,
            "task": cell.task,
            "dataset": cell.dataset,
            "variant": cell.variant,
            "horizon": cell.horizon,
            "protocol": cell.protocol,
            "tag": cell.tag,
            "model": cell.model,
            "seed": cell.seed,
            "metrics": metrics,
            "primary_metric": primary,
            "selection": None if task.selection(cfg) is None else vars(task.selection(cfg)),
            "overrides": sorted(overrides),
            "measuring_overrides": measuring_overrides(overrides),
            "epochs": int(trainer.current_epoch),
            "global_steps": int(trainer.global_step),
            "best_checkpoint": os.path.relpath(best, run_dir) if best else None,  # relative: the folder may move
            "params": params,
            "wall_time_s": {"fit": fit_s, "test": test_s, "total": fit_s + test_s},  # all attempts of the cell
            "attempts": attempts,
            "device": str(trainer.strategy.root_device),
            "world_size": int(trainer.world_size),  # devices x nodes
            "precision": str(cfg.trainer.get("precision")),
            # float32 matrix products as run: "high" is TF32 on a GPU that has it (10-bit mantissa)
            "matmul_precision": torch.get_float32_matmul_precision(),
            "kernels": _kernels_record(),  # the optional CUDA kernels: which import, which ran
            "versions": versions(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "command": " ".join(sys.argv),
        }
        record.update(task.record_extras(cfg, datamodule, module))
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if primary not in metrics:
            bad[primary] = "not logged"
        if bad:
            msg = (f"test metrics are not finite or missing: {bad}; the run is not a result. "
                   f"Check the training curve in {run_dir / 'logs'}, lower the learning rate or fix the data.")
            if not debug and writer:
                _mark_failed(run_dir, cell, msg, record)
            raise RunFailed(msg)
        if not writer:
            return record
        if debug:
            print(f"\n[{cell.key}] smoke run (fast_dev_run) ok: {_summary(metrics)}; no record written")
            return record
        path = write_json_atomic(result_path(run_dir), record)
    finally:
        finish_logger(logger)
    print(f"\n[{cell.key}] test: {_summary(metrics)}\nresult written to {path}")
    return record


def _mark_failed(run_dir: Path, cell: Cell, reason: str, record: dict | None = None) -> None:
    """``failed.json``: the cell is not done; ``aaren-bench plan`` shows it as failed, a rerun runs it again."""
    write_json_atomic(run_dir / FAILED_FILE, {"cell": cell.key, "reason": reason, "time": time.time(),
                                              "record": record})


def _summary(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "no metrics"


def main_entry(cfg: DictConfig) -> float | None:
    """``train.py``'s body: run the cell, print a suite error as its message (no traceback) and exit
    non-zero; return the primary test metric for a Hydra sweeper."""
    try:
        try:
            record = train(cfg)
        except OSError as e:  # a full disk, a read-only runs root: the suite's message
            err = storage_error(e)
            if err is None:
                raise
            raise err from e
    except SuiteError as e:
        if os.environ.get("AAREN_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        if in_local_sweep():  # reported, and the sweep goes on (cluster.SweepReport sums it up)
            raise
        print("(set AAREN_DEBUG=1 or HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(e.exit_code)
    if not record:
        return None
    return record["metrics"].get(record.get("primary_metric") or "")
