"""The kernels: forward and forward+backward time of each family member's parallel form against

- ``torch.cumsum`` over a tensor of the values' shape (B, N, D): the floor any prefix scan
  over the same data pays (our speed-of-light proxy);
- Aaren's fast scan (``fast``), and the paper's Hillis-Steele scan in plain torch ops;
- the O(N^2) masked-softmax oracle, where its N x N weights fit (``oracle_max_n``);
- linear attention's chunked form (``linear_attn``: phi(q), phi(k), v of (B, H, N, D));
- Mamba-2's chunked SSD (``ssd``: x of (B, nheads, N, headdim) with nheads * headdim = H D, one
  group of B and C, d_state as Mamba-2 at that width: :func:`aaren_bench.nn.family.mamba2_dims`).

Every variant carries the same H D value channels per token, so the time per value is
comparable; what each computes per token differs (Aaren: one score per head; linear attention:
a D x D state per head; SSD: a headdim x d_state state per head).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aaren_bench.bench.measure import time_interleaved
from aaren_bench.nn.family import mamba2_dims
from aaren_bench.ops import linear_attn_chunked, scan, scan_hillis_steele, scan_oracle, ssd_chunked

# the kernel variants of each mixer (cumsum, the floor, is always measured)
VARIANTS = {
    "aaren": ("fast", "hillis-steele", "oracle"),
    "linear_attn": ("linear_attn",),
    "mamba2": ("ssd",),
}
QUICK = ("cumsum", "fast", "linear_attn", "ssd")  # timed every round; the slow references get fewer


@dataclass
class KernelSizes:
    batch: int = 16
    heads: int = 1
    dim: int = 128
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    repeats: int = 7
    chunk: int = 32  # Aaren's scan block
    family_chunk: int = 64  # linear attention's and SSD's block (their mixers' default)
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


def _family_inputs(sizes: KernelSizes, N: int, g: torch.Generator, device: torch.device) -> dict:
    """Linear attention's q, k, v and SSD's x, dt, A, B, C with the same B and H D channels."""
    B, H, D = sizes.batch, sizes.heads, sizes.dim
    dims = mamba2_dims(H * D, expand=1.0)  # d_inner = H D: Mamba-2's heads, headdim and d_state at that width
    Hs, P, S = dims.nheads, dims.headdim, dims.d_state
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    return {
        "la": [rand(B, H, N, D) for _ in range(3)],
        "la_grad": rand(B, H, N, D),
        "ssd": [rand(B, Hs, N, P), F.softplus(rand(B, Hs, N) - 2.0), rand(B, 1, N, S), rand(B, 1, N, S)],
        "A": -torch.linspace(1.0, 16.0, Hs).to(device),  # Mamba-2's A = -U[1, 16]
        "ssd_grad": rand(B, Hs, N, P),
        "dims": dims,
    }


def run_kernel(sizes: KernelSizes, device: torch.device, log=print, mixers=tuple(VARIANTS)) -> list[dict]:
    """One row per (N, variant, pass): median/min seconds (variants of the mixers named)."""
    rows = []
    B, H, D = sizes.batch, sizes.heads, sizes.dim
    wanted = {v for m in mixers for v in VARIANTS.get(m, ())}
    for N in sizes.lengths:
        g = torch.Generator(device="cpu").manual_seed(N)
        s = torch.randn(B, H, N, generator=g).to(device)
        v = torch.randn(B, H, N, D, generator=g).to(device)
        x = v.reshape(B * H, N, D)  # the values' data as (B, N, D)
        grad = torch.randn(B, H, N, D, generator=g).to(device)
        fam = _family_inputs(sizes, N, g, device)
        fast = lambda s, v: scan(s, v, chunk=sizes.chunk)  # noqa: E731
        cumsum = lambda x: torch.cumsum(x, dim=1)  # noqa: E731
        lin = lambda q, k, v: linear_attn_chunked(q, k, v, chunk=sizes.family_chunk)[0]  # noqa: E731
        ssd = lambda x, dt, b, c, a=fam["A"]: ssd_chunked(x, dt, a, b, c, chunk=sizes.family_chunk)[0]  # noqa: E731
        variants = {
            ("cumsum", "forward"): _fwd(cumsum, x),
            ("cumsum", "forward+backward"): _fwd_bwd(cumsum, grad.reshape(B * H, N, D), x),
        }
        if "fast" in wanted:
            variants[("fast", "forward")] = _fwd(fast, s, v)
            variants[("fast", "forward+backward")] = _fwd_bwd(fast, grad, s, v)
        if "linear_attn" in wanted:
            variants[("linear_attn", "forward")] = _fwd(lin, *fam["la"])
            variants[("linear_attn", "forward+backward")] = _fwd_bwd(lin, fam["la_grad"], *fam["la"])
        if "ssd" in wanted:
            variants[("ssd", "forward")] = _fwd(ssd, *fam["ssd"])
            variants[("ssd", "forward+backward")] = _fwd_bwd(ssd, fam["ssd_grad"], *fam["ssd"])
        if "hillis-steele" in wanted and N <= sizes.hillis_steele_max_n:
            variants[("hillis-steele", "forward")] = _fwd(scan_hillis_steele, s, v)
        if "hillis-steele" in wanted and N <= sizes.hillis_steele_backward_max_n:
            variants[("hillis-steele", "forward+backward")] = _fwd_bwd(scan_hillis_steele, grad, s, v)
        if "oracle" in wanted and N <= sizes.oracle_max_n:
            variants[("oracle", "forward")] = _fwd(scan_oracle, s, v)
            variants[("oracle", "forward+backward")] = _fwd_bwd(scan_oracle, grad, s, v)
        # the slow references get fewer rounds, in a second interleaved group
        quick = {k: f for k, f in variants.items() if k[0] in QUICK}
        slow = {k: f for k, f in variants.items() if k not in quick}
        res = time_interleaved({f"{a}|{b}": f for (a, b), f in quick.items()}, sizes.repeats, device)
        if slow:
            res.update(
                time_interleaved({f"{a}|{b}": f for (a, b), f in slow.items()}, max(2, sizes.repeats // 3), device)
            )
        dims = fam["dims"]
        for key, r in res.items():
            variant, pass_ = key.split("|")
            shape = {"heads": dims.nheads, "dim": dims.headdim, "d_state": dims.d_state} if variant == "ssd" else \
                {"heads": H, "dim": D, "d_state": D if variant == "linear_attn" else ""}
            rows.append(
                {"N": N, "batch": B, **shape, "variant": variant, "pass": pass_,
                 "median_s": r["median"], "min_s": r["min"], "runs": r["runs"]}
            )
        by = {k: r["median"] for k, r in res.items()}
        parts = [f"{name} fwd {by[f'{name}|forward'] * 1e3:.1f} ms ({by[f'{name}|forward'] / by['cumsum|forward']:.2f}x cumsum), "
                 f"f+b {by[f'{name}|forward+backward'] * 1e3:.1f} ms "
                 f"({by[f'{name}|forward+backward'] / by['cumsum|forward+backward']:.2f}x)"
                 for name in ("fast", "linear_attn", "ssd") if f"{name}|forward" in by]
        if "hillis-steele|forward" in by and "fast|forward" in by:
            parts.append(f"Hillis-Steele fwd {by['hillis-steele|forward'] / by['fast|forward']:.1f}x slower than fast")
        log(f"kernel N={N}: " + "; ".join(parts))
        del s, v, x, grad, fam, variants, quick, slow
    return rows
