"""The fast scan's non-finite guard against the bare chunked scan, on clean input.

    python -m aaren_bench.bench.guard                 # the table (CPU; CUDA too when there is one)
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

There is one guard path for every device: no device test, no host read. The aten operations
of forward+backward are counted on the CPU and on ``meta`` (a device that is not the CPU, so
whatever a device test would send elsewhere): equal counts say that the path timed on the CPU
is the one a GPU takes.
"""
from __future__ import annotations

import math
import statistics
import time

import torch

from aaren_bench.bench.measure import sync
from aaren_bench.bench.syncs import OpCounter

SIZES = ((16, 8, 2048, 16), (32, 8, 64, 16))  # (B, H, N, Dh): the size and a classify layer's
CHUNK = 32


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


def _time(fns: dict, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """seconds per call of each fn, one per round; the fns run in turn each round (after one
    warm-up call each), so that a round's calls share the machine's state."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    sync(device)
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            times[name].append(clock() - t0)
    return times


def time_size(B: int, H: int, N: int, D: int, device: torch.device, layout: str, rounds: int) -> dict[str, list[float]]:
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


def run_guard(device: torch.device, sizes=SIZES, layouts=("contiguous", "layer"), rounds: int = 15) -> list[dict]:
    """One row per size, layout and pass: the guard's time over the bare scan's, and the op counts."""
    rows = []
    for B, H, N, D in sizes:
        size = f"B{B} H{H} N{N} Dh{D}"
        ops = {"bare": count_ops(bare, B, H, N, D), "guard": count_ops(guarded, B, H, N, D),
               "guard meta": count_ops(guarded, B, H, N, D, "meta")}
        reps = rounds if N * B * H > 100_000 else rounds * 10
        for layout in layouts:
            t = time_size(B, H, N, D, device, layout, reps)
            for p in ("fwd", "fwd+bwd"):
                bare_t, guard_t = t[f"bare {p}"], t[f"guard {p}"]
                paired = statistics.median(g / b for g, b in zip(guard_t, bare_t))  # same round: same load
                rows.append(dict(size=size, layout=layout, device=device.type, pass_=p,
                                 bare_ms=round(1e3 * min(bare_t), 2), guard_ms=round(1e3 * min(guard_t), 2),
                                 ratio=round(min(guard_t) / min(bare_t), 3), paired=round(paired, 3),
                                 ops_bare=ops["bare"], ops_guard=ops["guard"], ops_guard_meta=ops["guard meta"]))
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ("size | layout | device | pass | bare ms | guard ms | guard/bare (min/min) | guard/bare (median of "
            "rounds) | ops bare | ops guard (cpu/meta)")
    lines = [head, "|".join("---" for _ in head.split("|"))]
    for r in rows:
        lines.append(f"{r['size']} | {r['layout']} | {r['device']} | {r['pass_']} | {r['bare_ms']} | {r['guard_ms']} | "
                     f"{r['ratio']:.3f}x | {r['paired']:.3f}x | {r['ops_bare']} | {r['ops_guard']}/{r['ops_guard_meta']}")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print("one thread; min over interleaved rounds; clean input, half the rows padded")
    for device in devices:
        print(format_rows(run_guard(device)))


if __name__ == "__main__":
    main()
