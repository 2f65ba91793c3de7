"""The suite's errors: a user can fix each of them, so each is printed as its message alone.

``train.py`` prints a :class:`SuiteError` without a traceback and exits non-zero;
``HYDRA_FULL_ERROR=1`` (or ``AAREN_DEBUG=1``) shows the traceback too.
"""
from __future__ import annotations


class SuiteError(Exception):
    """A mistake in the data, the configuration or the run folder that the message explains."""

    exit_code = 2


class ConfigError(SuiteError, ValueError):
    """A configuration that cannot run (a wrong choice, a dataset of another task, ...)."""


class DataError(SuiteError, ValueError):
    """A data file that cannot be used as it is (format, non-finite values, ...)."""


class RunFailed(SuiteError):
    """A run that did not produce a usable result (non-finite loss or metrics); the cell is marked failed."""

    exit_code = 3


class CellBusy(SuiteError):
    """Another process holds the cell's lock."""

    exit_code = 75  # EX_TEMPFAIL: a scheduler may retry later


class CheckpointMismatch(SuiteError):
    """A checkpoint that belongs to a model of another shape."""


class StorageError(SuiteError):
    """The runs root cannot be written: a full disk, a read-only or foreign folder."""

    exit_code = 74  # EX_IOERR


STORAGE_ERRNOS = {28: "no space left on the device", 30: "the file system is read-only", 13: "permission denied",
                  1: "operation not permitted", 122: "disk quota exceeded"}  # ENOSPC, EROFS, EACCES, EPERM, EDQUOT


def storage_error(e: OSError) -> StorageError | None:
    """The suite's message for a write that failed for lack of space or rights; None for other errors."""
    if e.errno not in STORAGE_ERRNOS:
        return None
    where = e.filename or "the runs folder"
    return StorageError(f"cannot write {where}: {STORAGE_ERRNOS[e.errno]}. Free space or fix the permissions, or point "
                        f"the runs root elsewhere (AAREN_RUNS=/path or paths.runs=/path), then rerun the same command: "
                        f"a cell resumes from its last checkpoint")
