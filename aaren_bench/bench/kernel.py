"""The scan kernel: forward and forward+backward time of the fast scan against

- ``torch.cumsum`` over a tensor of the values' shape (B, N, D): the floor any prefix scan
  over the same data pays (our speed-of-light proxy);
- the Hillis-Steele scan in plain torch ops (the paper's algorithm);
- the O(N^2) masked-softmax oracle, where its N x N weights fit (``oracle_max_n``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from aaren_bench.bench.measure import time_interleaved
from aaren_bench.ops import scan, scan_hillis_steele, scan_oracle


@dataclass
class KernelSizes:
    batch: int = 16
    heads: int = 1
    dim: int = 128
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    repeats: int = 7
    chunk: int = 32
    oracle_max_n: int = 2048
    hillis_steele_max_n: int = 16384
    hillis_steele_backward_max_n: int = 4096  # its autograd keeps ~log2(N) copies of v


def _fwd(fn, *args):
    def run():
        with torch.no_grad():
            fn(*args)

    return run


def _fwd_bwd(fn, grad, *args):
    leaves = [a.detach().clone().requires_grad_() for a in args]

    def run():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward(grad)

    return run


def run_kernel(sizes: KernelSizes, device: torch.device, log=print) -> list[dict]:
    """One row per (N, variant, pass): median/min seconds."""
    rows = []
    B, H, D = sizes.batch, sizes.heads, sizes.dim
    for N in sizes.lengths:
        g = torch.Generator(device="cpu").manual_seed(N)
        s = torch.randn(B, H, N, generator=g).to(device)
        v = torch.randn(B, H, N, D, generator=g).to(device)
        x = v.reshape(B * H, N, D)  # the values' data as (B, N, D)
        grad = torch.randn(B, H, N, D, generator=g).to(device)
        fast = lambda s, v: scan(s, v, chunk=sizes.chunk)  # noqa: E731
        cumsum = lambda x: torch.cumsum(x, dim=1)  # noqa: E731
        variants = {
            ("cumsum", "forward"): _fwd(cumsum, x),
            ("fast", "forward"): _fwd(fast, s, v),
            ("cumsum", "forward+backward"): _fwd_bwd(cumsum, grad.reshape(B * H, N, D), x),
            ("fast", "forward+backward"): _fwd_bwd(fast, grad, s, v),
        }
        if N <= sizes.hillis_steele_max_n:
            variants[("hillis-steele", "forward")] = _fwd(scan_hillis_steele, s, v)
        if N <= sizes.hillis_steele_backward_max_n:
            variants[("hillis-steele", "forward+backward")] = _fwd_bwd(scan_hillis_steele, grad, s, v)
        if N <= sizes.oracle_max_n:
            variants[("oracle", "forward")] = _fwd(scan_oracle, s, v)
            variants[("oracle", "forward+backward")] = _fwd_bwd(scan_oracle, grad, s, v)
        # the slow references get fewer rounds, in a second interleaved group
        quick = {k: f for k, f in variants.items() if k[0] in ("cumsum", "fast")}
        slow = {k: f for k, f in variants.items() if k not in quick}
        res = time_interleaved({f"{a}|{b}": f for (a, b), f in quick.items()}, sizes.repeats, device)
        if slow:
            res.update(
                time_interleaved({f"{a}|{b}": f for (a, b), f in slow.items()}, max(2, sizes.repeats // 3), device)
            )
        for key, r in res.items():
            variant, pass_ = key.split("|")
            rows.append(
                {"N": N, "batch": B, "heads": H, "dim": D, "variant": variant, "pass": pass_,
                 "median_s": r["median"], "min_s": r["min"], "runs": r["runs"]}
            )
        by = {k: r["median"] for k, r in res.items()}
        log(
            f"kernel N={N}: fast fwd {by['fast|forward'] * 1e3:.1f} ms ({by['fast|forward'] / by['cumsum|forward']:.2f}x cumsum), "
            f"fwd+bwd {by['fast|forward+backward'] * 1e3:.1f} ms ({by['fast|forward+backward'] / by['cumsum|forward+backward']:.2f}x cumsum)"
            + (f", Hillis-Steele fwd {by['hillis-steele|forward'] / by['fast|forward']:.1f}x slower" if "hillis-steele|forward" in by else "")
        )
        del s, v, x, grad, variants, quick, slow
    return rows
