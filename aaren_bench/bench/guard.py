"""The fast scan's non-finite guard against the bare chunked scan, on clean input.

    python -m aaren_bench.bench.guard                 # both tables (CPU; CUDA too when there is one)
    python -m aaren_bench.bench.guard --heap default  # only glibc's default heap (this process)
    aaren-bench gpu-check --parts guard               # the same rows inside the device check

``bare``: :class:`aaren_bench.ops.chunked.ChunkedScan` on the masked scores (what the scan
costs with no guard at all); ``guard``: :func:`aaren_bench.ops.scan`, which finds non-finite
input on the device and selects. Both forward, and forward+backward of sum(o * w), timed in
one process, interleaved, min over rounds (process CPU time on the CPU, where these machines
are shared; wall clock with syncs on CUDA), and the median over rounds of the two times of
one round (adjacent in time, so they share the machine's load). Two layouts of the inputs: ``contiguous`` (s, v as
made) and ``layer`` (v a transposed view and the upstream gradient one too, as the Aaren layer
gives them: the bare scan then copies both to contiguous memory, the guard writes its cleaned
copies contiguous instead).

Two heaps on the CPU. glibc's default returns large freed blocks to the system and maps them
again when asked, so a new full-size tensor pays a page fault per 4 KiB page when it is first
written; how many depends on the order of frees and on glibc's moving thresholds, and varies
from call to call (the ``faults`` columns: minor page faults per call, median over rounds). A
GPU's caching allocator hands freed blocks back without that cost, and so does glibc with its
heap kept (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...``, :data:`KEPT_HEAP`,
set for a child process): that table is the CPU's stand-in for the GPU's allocator, the other
is what a CPU run with the default heap sees.

There is one guard path for every device: no device test, no host read. The aten operations
of forward+backward are counted on the CPU and on ``meta`` (a device that is not the CPU, so
whatever a device test would send elsewhere): equal counts say that the path timed on the CPU
is the one a GPU takes.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from aaren_bench.bench.measure import sync
from aaren_bench.bench.syncs import OpCounter

SIZES = ((16, 8, 2048, 16), (32, 8, 64, 16))  # (B, H, N, Dh): the size and a classify layer's
CHUNK = 32
# glibc keeps what it frees: no mmap for large blocks, no trimming of the heap's top
KEPT_HEAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36), "MALLOC_TOP_PAD_": str(2**30)}


def make_inputs(B: int, H: int, N: int, D: int, device, layout: str = "contiguous", seed: int = 0):
    """Clean s (B, H, N), v (B, H, N, D) needing gradients, upstream w, and a mask padding half the rows."""
    if layout not in ("contiguous", "layer"):
        raise ValueError(f"layout must be 'contiguous' or 'layer'; got {layout!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    s = torch.randn(B, H, N, generator=g).to(device).requires_grad_()
    v = torch.randn(B, H, N, D, generator=g).to(device)
    w = torch.randn(B, H, N, D, generator=g).to(device)
    if layout == "layer":  # (B, N, H, D) memory seen as (B, H, N, D), as the layer's heads() gives it
        v, w = v.transpose(1, 2).contiguous().transpose(1, 2), w.transpose(1, 2).contiguous().transpose(1, 2)
    v.requires_grad_()
    mask = torch.ones(B, N, dtype=torch.bool, device=device)
    mask[::2, N // 2:] = False
    return s, v, w, mask


def bare(s, v, mask, chunk: int = CHUNK):
    """The chunked scan with no guard: masked scores, contiguous values."""
    from aaren_bench.ops.chunked import ChunkedScan

    return ChunkedScan.apply(s.masked_fill(~mask[:, None], -math.inf), v.contiguous(), chunk)[0]


def guarded(s, v, mask, chunk: int = CHUNK):
    from aaren_bench.ops import scan

    return scan(s, v, mask, chunk=chunk)


def _fwd_bwd(fn, s, v, w, mask):
    return torch.autograd.grad((fn(s, v, mask) * w).sum(), (s, v))


def count_ops(fn, B: int, H: int, N: int, D: int, device="cpu") -> int:
    """aten operations of ``fn``'s forward and backward on clean input."""
    s, v, w, mask = make_inputs(B, H, N, D, device)
    with OpCounter() as ops:
        _fwd_bwd(fn, s, v, w, mask)
    return ops.total


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time(fns: dict, rounds: int, device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """seconds per call of each fn, one per round, and the minor page faults of each call (0
    on CUDA, where they do not measure the device); the fns run in turn each round (after one
    warm-up call each), so that a round's calls share the machine's state."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in fns}
    faults: dict[str, list[int]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    sync(device)
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            f0, t0 = _faults(), clock()
            fn()
            sync(device)
            times[name].append(clock() - t0)
            faults[name].append(0 if device.type == "cuda" else _faults() - f0)
    return times, faults


def time_size(B: int, H: int, N: int, D: int, device: torch.device, layout: str, rounds: int):
    s, v, w, mask = make_inputs(B, H, N, D, device, layout)

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn(s, v, mask)
        return run

    fns = {"bare fwd": fwd(bare), "guard fwd": fwd(guarded),
           "bare fwd+bwd": lambda: _fwd_bwd(bare, s, v, w, mask),
           "guard fwd+bwd": lambda: _fwd_bwd(guarded, s, v, w, mask)}
    return _time(fns, rounds, device)


def run_guard(device: torch.device, sizes=SIZES, layouts=("contiguous", "layer"), rounds: int = 30) -> list[dict]:
    """One row per size, layout and pass: the guard's time over the bare scan's, page faults
    and op counts. ``rounds`` at the large size; ten times as many below 100k scores."""
    rows = []
    for B, H, N, D in sizes:
        size = f"B{B} H{H} N{N} Dh{D}"
        ops = {"bare": count_ops(bare, B, H, N, D), "guard": count_ops(guarded, B, H, N, D),
               "guard meta": count_ops(guarded, B, H, N, D, "meta")}
        reps = rounds if N * B * H > 100_000 else rounds * 10
        for layout in layouts:
            t, f = time_size(B, H, N, D, device, layout, reps)
            for p in ("fwd", "fwd+bwd"):
                bare_t, guard_t = t[f"bare {p}"], t[f"guard {p}"]
                paired = statistics.median(g / b for g, b in zip(guard_t, bare_t))  # same round: same load
                rows.append(dict(size=size, layout=layout, device=device.type, pass_=p,
                                 bare_ms=round(1e3 * min(bare_t), 2), guard_ms=round(1e3 * min(guard_t), 2),
                                 ratio=round(min(guard_t) / min(bare_t), 3), paired=round(paired, 3),
                                 faults_bare=int(statistics.median(f[f"bare {p}"])),
                                 faults_guard=int(statistics.median(f[f"guard {p}"])),
                                 ops_bare=ops["bare"], ops_guard=ops["guard"], ops_guard_meta=ops["guard meta"]))
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ("size | layout | device | pass | bare ms | guard ms | guard/bare (min/min) | guard/bare (median of "
            "rounds) | faults bare | faults guard | ops bare | ops guard (cpu/meta)")
    lines = [head, "|".join("---" for _ in head.split("|"))]
    for r in rows:
        lines.append(f"{r['size']} | {r['layout']} | {r['device']} | {r['pass_']} | {r['bare_ms']} | {r['guard_ms']} | "
                     f"{r['ratio']:.3f}x | {r['paired']:.3f}x | {r['faults_bare']} | {r['faults_guard']} | "
                     f"{r['ops_bare']} | {r['ops_guard']}/{r['ops_guard_meta']}")
    return "\n".join(lines)


def heap_kept() -> bool:
    """Whether this process runs with glibc's heap kept (:data:`KEPT_HEAP` in its environment)."""
    return all(os.environ.get(k) == v for k, v in KEPT_HEAP.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aaren_bench.bench.guard", description=__doc__.split("\n")[0])
    ap.add_argument("--heap", choices=("both", "default", "kept"), default="both",
                    help="the CPU heap(s) to time under: glibc's default (this process), kept (a child "
                         "process with KEPT_HEAP in its environment), or both (default)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds at the large size (ten times as many at the small)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.heap in ("both", "default") or heap_kept():
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        heap = "kept" if heap_kept() else "glibc default"
        print(f"heap: {heap}; one thread; clean input, half the rows padded; {args.rounds} rounds "
              f"({10 * args.rounds} at the small size)", flush=True)
        for device in devices:
            print(format_rows(run_guard(device, sizes=SIZES, rounds=args.rounds)), flush=True)
    if args.heap in ("both", "kept") and not heap_kept():
        cmd = [sys.executable, "-m", "aaren_bench.bench.guard", "--heap", "kept", "--rounds", str(args.rounds)]
        subprocess.run(cmd, env={**os.environ, **KEPT_HEAP}, check=True)


if __name__ == "__main__":
    main()
