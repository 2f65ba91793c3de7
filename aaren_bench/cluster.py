"""Running on a cluster: which process writes, what a signal does, how a local sweep goes on.

- **One writer.** Under several processes (Lightning's DDP: one SLURM task per device, or the
  processes Lightning starts itself on one machine) every process runs the same command and
  computes the same cell; only global rank zero (:func:`is_launch_zero`) takes the cell's lock
  and writes its record, config, ``failed.json`` and logs. The rank is read from the launcher's
  environment, since the lock is taken before any trainer exists.
- **Preemption.** ``scancel``, a preemption or SLURM's time limit sends SIGTERM. Lightning then
  finishes the running batch and stops with its ``SIGTERMException`` (a ``SystemExit`` with
  status 0: the job would look successful). :class:`SaveOnSignal` writes ``last.ckpt`` at that
  step first, and the run loop turns the stop into :class:`Preempted` (exit status 143, as a
  process killed by SIGTERM), so the scheduler sees a failure and the resubmitted job resumes
  from that step bit for bit (``aaren_bench.resume``).
- **Sweeps go on.** In a local ``-m`` sweep (Hydra's basic launcher runs the cells one after
  another in one process), a cell that fails, is busy or is misconfigured is reported and the
  next one runs; :class:`SweepReport` (a Hydra callback) prints what failed at the end and exits
  non-zero. Under SLURM each cell is a job of its own with its own exit status.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback as HydraCallback

from aaren_bench.errors import ConfigError, SuiteError

log = logging.getLogger("aaren_bench")


class Preempted(SuiteError):
    """The run was stopped by a signal (scancel, preemption, the time limit) after saving a checkpoint."""

    exit_code = 143  # 128 + SIGTERM: what a scheduler expects of a process ended by SIGTERM


def is_launch_zero(env=None) -> bool:
    """True in the process that is global rank zero of this run, read from the launcher's environment
    (``RANK``; SLURM's ``SLURM_PROCID`` when the job step has several tasks; Lightning's own
    ``NODE_RANK`` / ``LOCAL_RANK`` for the processes it starts); True for a single process."""
    env = os.environ if env is None else env
    if env.get("RANK") not in (None, ""):
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID") not in (None, ""):
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0") or 0) == 0 and int(env.get("LOCAL_RANK", "0") or 0) == 0


class SaveOnSignal(L.Callback):
    """On SIGTERM, write ``path`` (``last.ckpt``) at the end of the running training batch, where
    Lightning's own checkpoints are written (so a resume from it is bit-exact, as from
    :class:`aaren_bench.resume.MidEpochCheckpoint`); Lightning stops right after.

    Under several processes the signal may reach one process first: they agree at each batch end
    (one small collective, besides the one Lightning makes there) and all save at the same step.
    Not after the last batch of an epoch: Lightning resumes from such a checkpoint past the
    epoch's end without running it; the last checkpoint written before stays.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.saved = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        signalled = bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled or self.saved:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            log.warning("stopped by a signal after the last batch of epoch %d: resuming from the checkpoint written "
                        "before it", trainer.current_epoch)
            return
        trainer.save_checkpoint(self.path)  # every process takes part; rank zero writes
        self.saved = True
        log.warning("stopped by a signal at step %d: checkpoint written to %s", trainer.global_step, self.path)


def stopped_by_signal(exception: BaseException) -> bool:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exception, SIGTERMException)


# --- local sweeps ---------------------------------------------------------------------------

def hydra_mode() -> tuple[bool, str]:
    """(in a multirun, the launcher's target) of the running Hydra job; (False, "") outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return False, ""
        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, str(hc.launcher.get("_target_", ""))
    except Exception:  # noqa: BLE001 - not a Hydra job
        return False, ""


def in_local_sweep() -> bool:
    """True in a job of a ``-m`` sweep run by Hydra's basic launcher (cells one after another, in this process)."""
    multirun, launcher = hydra_mode()
    return multirun and launcher.endswith("BasicLauncher")


def check_launch(trainer_cfg) -> None:
    """A run on several devices inside a local ``-m`` sweep cannot work: Lightning starts the other
    processes with this process's command line, the whole sweep. Stop at start and say what to do."""
    devices, nodes = str(trainer_cfg.get("devices", 1)), int(trainer_cfg.get("num_nodes", 1) or 1)
    if (devices in ("1", "auto") and nodes == 1) or not in_local_sweep() or os.environ.get("SLURM_NTASKS"):
        return
    raise ConfigError(
        f"trainer.devices={devices} (num_nodes={nodes}) in a local -m sweep: Lightning would start each extra "
        f"process with the whole sweep's command line. Run each cell as its own command "
        f"(python train.py ... trainer.devices={devices}), or submit the sweep to SLURM "
        f"(hydra/launcher=slurm: one task per device)."
    )


class SweepReport(HydraCallback):
    """A Hydra callback (``hydra.callbacks`` in conf/config.yaml): counts the cells of a sweep that
    failed (``failed`` holds their overrides and reasons), prints them when the sweep ends and
    exits non-zero if there were any. Failed jobs are marked done here, after being counted, so
    that Hydra's basic sweeper does not stop at the first one."""

    def __init__(self):
        self.failed: list[tuple[str, str]] = []
        self.ran = 0

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        self.ran += 1
        if job_return.status != JobStatus.FAILED:
            return
        error = job_return._return_value
        self.failed.append((" ".join(job_return.overrides or []), f"{type(error).__name__}: {error}"))
        if in_local_sweep():
            job_return.status, job_return.return_value = JobStatus.COMPLETED, None

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.failed:
            return
        lines = [f"{len(self.failed)} of {self.ran} cell(s) of this sweep failed:"]
        lines += [f"  [{over}] {why.splitlines()[0] if why else ''}" for over, why in self.failed]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(1)
