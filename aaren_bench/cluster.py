"""Running on a cluster: which process writes, what a signal does, how a local sweep goes on.

- **One writer.** Under several processes (Lightning's DDP: one SLURM task per device, or the
  processes Lightning starts itself on one machine) every process runs the same command and
  computes the same cell; only global rank zero (:func:`is_launch_zero`) takes the cell's lock
  and writes its record, config, ``failed.json`` and logs. The rank is read from the launcher's
  environment, since the lock is taken before any trainer exists.
- **Followers learn rank zero's decision.** Under SLURM (or torchrun) every process starts at
  once; the others wait for what rank zero decided about the cell (:class:`RankZeroDecision`,
  a small file under ``<runs>/.launch/``, named by the launch): run it, skip it (done) or stop
  (busy, refused, misconfigured, with rank zero's exit status). A follower that hears nothing
  within ``AAREN_FOLLOW_TIMEOUT_S`` seconds (default 300) stops with a message. Processes that
  Lightning starts itself exist only once rank zero decided to run, so they do not wait.
- **Preemption.** ``scancel``, a preemption or SLURM's time limit sends SIGTERM (to every task of
  the job). :class:`SaveOnSignal` lets the running batch finish, writes ``last.ckpt`` at that step
  (all processes agree on the step) and stops with Lightning's ``SIGTERMException`` (a
  ``SystemExit`` with status 0: the job would look successful); the run loop turns the stop
  into :class:`Preempted` (exit status 143, as a process killed by SIGTERM), so the scheduler sees a failure and the resubmitted job resumes
  from that step bit for bit (``aaren_bench.resume``).
- **Sweeps go on.** In a local ``-m`` sweep (Hydra's basic launcher runs the cells one after
  another in one process), a cell that fails, is busy or is misconfigured is reported and the
  next one runs; :class:`SweepReport` (a Hydra callback) prints what failed at the end and exits
  non-zero. Under SLURM each cell is a job of its own with its own exit status.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback as HydraCallback

from aaren_bench.errors import ConfigError, SuiteError
from aaren_bench.results import write_json_atomic

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


# --- the other processes follow rank zero -----------------------------------------------------

DECISIONS = ".launch"  # under the runs root: one small file per launch of several processes
FOLLOW_TIMEOUT_S = 300.0


class Stopped(SuiteError):
    """Rank zero of this launch stopped the cell (busy, refused, misconfigured): a follower exits as it did."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = int(exit_code)


class NoDecision(SuiteError):
    """A follower heard nothing from rank zero of its launch in time."""


def launch_id(env=None) -> str | None:
    """A name that the processes of one launch share and no other launch has: SLURM's job, step and
    restart count (a requeued job is a new launch), or torchrun's run id, restart count and rendezvous
    port. None for a single process and for processes that Lightning starts itself."""
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID") and env.get("SLURM_PROCID"):
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID') or 0}.{env.get('SLURM_RESTART_COUNT') or 0}"
    if env.get("TORCHELASTIC_RUN_ID") and env.get("RANK") not in (None, ""):
        return (f"torchrun-{env['TORCHELASTIC_RUN_ID']}.{env.get('TORCHELASTIC_RESTART_COUNT') or 0}"
                f".{env.get('MASTER_PORT') or 0}")
    return None


def follow_timeout(env=None) -> float:
    env = os.environ if env is None else env
    raw = env.get("AAREN_FOLLOW_TIMEOUT_S") or FOLLOW_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"AAREN_FOLLOW_TIMEOUT_S={raw!r} must be a number of seconds") from None


class RankZeroDecision:
    """What global rank zero decided about its cell, told to the other processes of its launch.

    Rank zero (a context manager around its part of the run loop) writes
    ``<runs>/.launch/<launch id>.json`` once: ``run``, ``skip`` (the cell is done) or ``stop``,
    with the exit status and message of the error that left the block before it said ``run``.
    The file of a launch that ran to the end is removed (its followers have read it, or they could
    not have trained with rank zero); the others are removed by a later launch after the timeout.
    Without a launch id (one process) it does nothing.
    """

    def __init__(self, runs_root: str | Path, cell: str, env=None):
        self.launch, self.cell, self.told = launch_id(env), cell, None
        self.folder = Path(runs_root) / DECISIONS
        self.path = self.folder / f"{self.launch}.json" if self.launch else None
        self.timeout = follow_timeout(env)

    def tell(self, decision: str, exit_code: int = 0, message: str = "") -> None:
        if self.path is None or self.told:
            return
        self._clean_old()
        write_json_atomic(self.path, {"cell": self.cell, "decision": decision, "exit_code": int(exit_code),
                                      "message": message, "time": time.time()})
        self.told = decision

    def _clean_old(self) -> None:
        for p in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                if time.time() - p.stat().st_mtime > 2 * self.timeout:
                    p.unlink()
            except OSError:
                pass  # removed by another launch meanwhile

    def __enter__(self) -> RankZeroDecision:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is not None and not self.told:
            self.tell("stop", exit_status(error), f"{type(error).__name__}: {error}")
        elif error is None and self.told == "run" and self.path is not None:
            self.path.unlink(missing_ok=True)
            try:
                self.folder.rmdir()  # only when no other launch's file is there
            except OSError:
                pass


def exit_status(error: BaseException) -> int:
    """The exit status a process ends with after ``error`` (a suite error's own, 1 for others)."""
    code = error.code if isinstance(error, SystemExit) else getattr(error, "exit_code", 1)
    return code if isinstance(code, int) and code else 1


def await_decision(runs_root: str | Path, cell: str, env=None, poll_s: float = 0.2) -> str:
    """A follower: wait for rank zero's decision about ``cell`` and return ``run`` or ``skip``;
    raise :class:`Stopped` (rank zero's exit status) or, after the timeout, :class:`NoDecision`."""
    launch = launch_id(env)
    if launch is None:
        return "run"  # started by rank zero's Lightning after it took the lock
    path, timeout = Path(runs_root) / DECISIONS / f"{launch}.json", follow_timeout(env)
    since, deadline = time.time() - timeout, time.monotonic() + timeout
    while (told := _fresh(path, since)) is None:
        if time.monotonic() > deadline:
            raise NoDecision(
                f"global rank zero of launch {launch} said nothing about cell {cell} within {timeout:g} s "
                f"(no new {path}): it may have failed or been killed before deciding; see its log. Set "
                f"AAREN_FOLLOW_TIMEOUT_S to wait longer (a slow shared file system).")
        time.sleep(poll_s)
    if told.get("cell") != cell:
        raise ConfigError(f"rank zero of launch {launch} runs cell {told.get('cell')}, this process {cell}: every "
                          f"process of a run needs the same command and configuration")
    if told["decision"] == "stop":
        raise Stopped(f"global rank zero stopped cell {cell} (exit status {told['exit_code']}): {told['message']}",
                      told["exit_code"])
    return told["decision"]


def _fresh(path: Path, since: float) -> dict | None:
    """The decision in ``path`` if written after ``since``; None when absent or left by an older launch
    of the same name (job ids start over on a new cluster)."""
    try:
        told = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return told if float(told.get("time", 0)) >= since else None


def quiet_follower_log() -> None:
    """A follower writes no log file (Hydra's ``train.log`` in the cell folder is rank zero's); it still prints."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()


class SaveOnSignal(L.Callback):
    """On SIGTERM, write ``path`` (``last.ckpt``) at the end of the running training batch, where
    Lightning's own checkpoints are written (so a resume from it is bit-exact, as from
    :class:`aaren_bench.resume.MidEpochCheckpoint`), and stop training (Lightning's
    ``SIGTERMException``).

    While training runs, SIGTERM only sets a flag here: Lightning's own handler makes a collective
    call from inside the signal handler under several processes (Lightning 2.6), which meets
    whatever collective the other processes are in (each SLURM task gets the signal at its own
    moment): processes then disagree, one stops without a checkpoint and the others fail or
    hang. Here the processes agree at each batch end (one small collective, besides the one
    Lightning makes there) and all save and stop at the same step. Not after the last batch of
    an epoch: Lightning resumes from such a checkpoint past the epoch's end without running it;
    the last checkpoint written before stays. Before training starts (setup, data) and while
    testing, Lightning's handler is in place.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.saved = False
        self.signalled = False
        self._before = None

    def _note(self, signum, frame) -> None:
        self.signalled = True  # no collective, no I/O: acted on at the next batch end

    def on_train_start(self, trainer, pl_module) -> None:
        self._before = signal.getsignal(signal.SIGTERM)  # Lightning's, registered at the start of fit
        signal.signal(signal.SIGTERM, self._note)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._before is not None:
            signal.signal(signal.SIGTERM, self._before)
            self._before = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        signalled = self.signalled or bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            log.warning("stopped by a signal after the last batch of epoch %d: resuming from the checkpoint written "
                        "before it", trainer.current_epoch)
        else:
            trainer.save_checkpoint(self.path)  # every process takes part; rank zero writes
            self.saved = True
            log.warning("stopped by a signal at step %d: checkpoint written to %s", trainer.global_step, self.path)
        raise SIGTERMException()  # every process, at the same step


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
