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
