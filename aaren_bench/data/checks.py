"""Facts shared by the task data readers: float32 limits, and what to tell a user whose file is unreadable.

Every task reads its files in float64 (or float32) and trains in float32. Two limits follow:

- ``F32_MAX`` (3.4e38): a larger magnitude becomes ``inf`` when cast to float32, so a raw
  value beyond it is treated like ``inf``.
- ``F32_SQUARE_MAX`` (1.8e19): the network squares what it is fed (layer-norm variances,
  MSE losses); a magnitude beyond it makes that square ``inf``. Inputs after the task's
  own scaling (standardised values, scaled returns-to-go) must stay below it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aaren_bench.data.registry import all_specs

F32_MAX = float(np.finfo(np.float32).max)
F32_SQUARE_MAX = math.sqrt(F32_MAX)

__all__ = ["F32_MAX", "F32_SQUARE_MAX", "beyond", "refetch_hint"]


def beyond(x: np.ndarray, limit: float) -> np.ndarray:
    """Boolean mask of the entries that are NaN, inf, or larger in magnitude than ``limit``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.abs(x) <= limit)


def refetch_hint(path: str | Path, task: str | None = None) -> str:
    """What to do about an unreadable file at ``path``, naming its dataset when the registry knows it.

    A registered file with a URL: delete it and ``aaren-bench fetch <name>`` again (fetch keeps an
    existing file). A registered file without a URL: the registry's note on how to obtain it.
    Anything else: check or replace the file.
    """
    p = Path(path).as_posix()
    for spec in all_specs(task):
        for f in spec.files:
            if p == f.path or p.endswith("/" + f.path):
                if f.url:
                    root = p[: -len(f.path)].rstrip("/") or "."
                    return f"delete it and fetch it again: `aaren-bench fetch {spec.name} --data-root {root}`"
                if spec.note:
                    return f"replace it with a good copy ({spec.note})"
    return "check the file, or replace it with a good copy (re-download or write it again)"
