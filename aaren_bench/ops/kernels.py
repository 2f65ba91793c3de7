"""The optional CUDA kernels, imported once per process.

- ``fla``: flash-linear-attention's ``chunk_linear_attn`` (linear attention, ``use_kernel``);
- ``mamba_ssm``: mamba-ssm's ``mamba_chunk_scan_combined`` (Mamba-2's SSD, ``use_kernel``).

Neither is required (``pip install -e '.[kernels]'`` on a CUDA machine adds them). The first
call of :func:`kernel` tries the import and remembers the outcome, so a missing package costs
one failed import, not one per call. :func:`available` says what imported and why not, for the
result record and ``aaren-bench gpu-check``; :data:`USED` collects the kernels that ran.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

_WHERE = {
    "fla": ("fla.ops.linear_attn", "chunk_linear_attn"),
    "mamba_ssm": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
}
USED: set[str] = set()  # names of the kernels that ran in this process


@functools.cache
def _load(name: str) -> tuple[Callable | None, str]:
    module, attr = _WHERE[name]
    try:
        return getattr(importlib.import_module(module), attr), f"{module}.{attr}"
    except Exception as err:  # ImportError, or a broken build failing at import (a CUDA/Triton mismatch)
        return None, f"{type(err).__name__}: {err}"


def kernel(name: str) -> Callable | None:
    """The kernel function ``name`` (``fla`` or ``mamba_ssm``), or None when it does not import."""
    if name not in _WHERE:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(_WHERE)}")
    return _load(name)[0]


def available() -> dict[str, tuple[bool, str]]:
    """{name: (imports, what: the function's path or the import error)}."""
    return {name: (_load(name)[0] is not None, _load(name)[1]) for name in _WHERE}
