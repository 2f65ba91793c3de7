"""Settle the CPU vector-math library's dispatch once, in one thread, before any parallel call.

On the CPU, ATen computes ``exp``, ``log`` (and most other float transcendentals) of a
contiguous tensor with MKL's vector math library (VML, ``vmsExp`` / ``vmsLn`` in mode
``VML_HA``), in parallel pieces of at least 2048 elements: with two threads, a tensor of 4096
elements or more is split in two and each thread calls VML on its half.

VML picks its kernel per call from a table indexed by CPU type and accuracy,
``row = cpu + 6 * (accuracy - 1)`` (LA = 1, HA = 2, EP = 3). The CPU type is detected lazily, on
the first VML call of the process, into one static variable, and that initialisation is not
thread safe: the detecting thread first stores the raw CPU code, then overwrites it with the
mapped CPU index (mkl_vml_serv_cpu_detect in MKL 2024.2, as linked into torch 2.13's CPU build).
A second thread that makes its first VML call between those two stores reads the raw code
as if it were the index. On a machine whose raw code is 9 (mapped to 5, the AVX-512 kernels),
a high-accuracy call in that thread lands on row 9 + 6 = 15, the AVX2 *enhanced performance*
kernel (about 11 correct bits; a relative error of 1.5e-4 measured): once per process, on the first
parallel VML call, and only if the second thread arrives inside that window. That is the
fault of issue 23 (docs/benchmarks/determinism.md: the issue's 5.18e-5 is reproduced to the
digit by that kernel on batch element 1 of the fast scan's block weights). Where the raw
code equals the mapped one (the AMD machine the benchmarks ran on: raw 0, index 0) the race
is harmless, which is why the fault did not show there.

:func:`init_vector_math` makes one VML call on one element in the calling thread (ATen does
not split it), so the CPU type is detected before any parallel call can race for it (the
entry points checked, ``vmsExp``, ``vmsLn`` and ``vdExp``, all read that one cached
detection). ``aaren_bench.ops`` calls it on import, before any op of this package can run.
It does not change any result: the kernel it settles is the one every later call would pick
anyway. What it cannot cover: a parallel VML call that other code makes before this package
is imported (that call alone is at risk; every later one is safe).
"""
from __future__ import annotations

import torch


def init_vector_math() -> None:
    """Make the process's first call into the vector math library here, single-threaded."""
    if torch.backends.mkl.is_available():
        torch.exp(torch.zeros(1))
