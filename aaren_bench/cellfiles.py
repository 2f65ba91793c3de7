"""The files of a cell folder, kept safe: a lock held while the cell runs, temporary files of a
killed writer cleaned at the next start, checkpoints written whole or not at all, a failed start
leaving no folder, and a folder moved aside to rerun a cell from scratch.

Nothing here imports torch at module level: the command line uses these helpers before a run.
"""
from __future__ import annotations

import fcntl
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("aaren_bench")

# what a start writes before training does: a folder holding only these is an unstarted cell
STARTUP_FILES = {".lock", "train.log", ".hydra", "logs", "checkpoints"}
TEMP_PATTERNS = (".*.tmp", ".*.part", "*.ckpt.tmp")


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


def is_unstarted(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing a run produced: no record, no failure, no checkpoint,
    only what a start writes (lock, Hydra's log, the saved config, an empty logs folder)."""
    if not run_dir.is_dir():
        return False
    entries = list(run_dir.iterdir())
    if any(p.name not in STARTUP_FILES for p in entries):
        return False
    ckpts = run_dir / "checkpoints"
    return not (ckpts.is_dir() and any(p.suffix == ".ckpt" for p in ckpts.iterdir()))


def remove_unstarted(run_dir, keep_lock: bool = False, levels: int = 4) -> bool:
    """Remove a cell folder that a failed start left (and the empty folders of its key above it).

    ``keep_lock``: leave a folder that holds a ``.lock`` (a caller that does not hold the lock
    must never remove it: another job may be running the cell). Returns True when removed."""
    if not run_dir:
        return False
    run_dir = Path(run_dir)
    if not is_unstarted(run_dir) or (keep_lock and (run_dir / ".lock").exists()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in list(run_dir.parents)[:levels]:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
    return True


def clean_stray_temp(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed writer left (``.result.json.*.tmp``, a half-written
    checkpoint's ``*.tmp``); called by the job that holds the cell's lock. Returns what it removed."""
    found = [p for pattern in TEMP_PATTERNS for sub in ("", ".hydra", "checkpoints")
             for p in (run_dir / sub).glob(pattern) if p.is_file()]
    for p in sorted(set(found)):
        p.unlink(missing_ok=True)
        log.info("removed a temporary file left by an interrupted write: %s", p)
    return sorted(set(found))


def move_aside(run_dir: Path) -> Path | None:
    """``restart=true``: rename the cell folder to ``<cell>.old-<UTC time>`` (kept, never deleted)
    so the cell trains from scratch; the tables and the plan do not read folders moved aside."""
    if not run_dir.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = run_dir.with_name(f"{run_dir.name}{OLD_MARK}{stamp}")
    run_dir.rename(aside)
    log.info("restart=true: moved the cell's folder aside to %s; training from scratch", aside)
    return aside


OLD_MARK = ".old-"


def is_aside(path: Path) -> bool:
    """True for a path inside a folder moved aside by ``restart=true``."""
    return any(OLD_MARK in part for part in Path(path).parts)
