"""Float64 equivalence errors of the family's recurrent members: parallel form vs recurrence.

For linear attention, SSD (Mamba-2), mLSTM and TTT-Linear: the largest difference between the
chunked (dual) form and the token-by-token recurrence, relative to the largest value of each
tensor (max |a - b| / max |b|), on the outputs, the final
state and the gradients of a random linear loss w.r.t. every input (initial state included),
with holes in the mask and a non-empty initial state; and, for TTT-Linear, the same with a
state in the middle of a mini-batch. The tests (tests/test_ops_*.py) assert these below 1e-10;
this prints the measured values for the note.

    python benchmarks/family_equivalence.py            # B 3, H 2, N 257, head width 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aaren_bench.ops import (  # noqa: E402
    LinearAttnState,
    MLSTMState,
    TTTState,
    linear_attn_chunked,
    linear_attn_reference,
    mlstm_chunked,
    mlstm_reference,
    ssd_chunked,
    ssd_reference,
    ttt_linear_chunked,
    ttt_linear_reference,
)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _errors(run, inputs, seed=1) -> dict:
    """max |a - b| / max |b| (b: the recurrence) per tensor, the worst over the outputs, the
final state's tensors and the input gradients of ``run(form, leaves)``."""
    res = {}
    for form in ("parallel", "recurrence"):
        leaves = _leaves(inputs)
        outs = run(form, leaves)
        g = torch.Generator().manual_seed(seed)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
        res[form] = (outs, grads)
    (po, pg), (ro, rg) = res["parallel"], res["recurrence"]
    err = lambda a, b: max(((x - y).abs().max() / y.abs().max().clamp(min=1e-300)).item() for x, y in zip(a, b))  # noqa: E731
    return {"output": err(po[:1], ro[:1]), "state": err(po[1:], ro[1:]), "gradients": err(pg, rg)}


def _mask(g, B, N):
    mask = torch.rand(B, N, generator=g) > 0.3
    mask[0, :3] = False
    return mask


def linear_attention(B, H, N, D, g):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs, mask = [r(B, H, N, D), r(B, H, N, D), r(B, H, N, D), r(B, H, D, D), torch.rand(B, H, D, generator=g, dtype=torch.float64) * 3], _mask(g, B, N)

    def run(form, x):
        fn = linear_attn_chunked if form == "parallel" else linear_attn_reference
        y, s = fn(*x[:3], mask, initial_state=LinearAttnState(x[3], x[4]), output_final_state=True)
        return [y, s.S, s.z]

    return _errors(run, inputs)


def ssd(B, H, N, D, g):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = [r(B, H, N, D), F.softplus(r(B, H, N)), -torch.rand(H, generator=g, dtype=torch.float64) - 0.1,
              r(B, 1, N, D), r(B, 1, N, D), r(B, H, D, D)]
    mask = _mask(g, B, N)

    def run(form, x):
        fn = ssd_chunked if form == "parallel" else ssd_reference
        y, h = fn(*x[:5], mask, initial_state=x[5], output_final_state=True)
        return [y, h]

    return _errors(run, inputs)


def mlstm(B, H, N, D, g):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = [r(B, H, N, D), r(B, H, N, D), r(B, H, N, D), 3 * r(B, H, N), 3 * r(B, H, N) + 2, r(B, H, D, D), r(B, H, D), r(B, H)]
    mask = _mask(g, B, N)

    def run(form, x):
        fn = mlstm_chunked if form == "parallel" else mlstm_reference
        y, s = fn(*x[:5], mask, initial_state=MLSTMState(*x[5:]), output_final_state=True)
        return [y, s.C, s.n, s.m]

    return _errors(run, inputs)


def ttt(B, H, N, D, g, mid_batch=False):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = [r(B, H, N, D), r(B, H, N, D), r(B, H, N, D), torch.rand(B, H, N, generator=g, dtype=torch.float64) / D,
              1.0 / torch.arange(1, 17, dtype=torch.float64), 1 + 0.2 * r(H, D), 0.2 * r(H, D),
              0.1 * r(B, H, D, D), 0.1 * r(B, H, D)]
    count = torch.randint(0, 16, (B,), generator=g) if mid_batch else torch.zeros(B, dtype=torch.long)
    sums = [0.01 * r(B, H, D, D), 0.01 * r(B, H, D)] if mid_batch else [torch.zeros(B, H, D, D, dtype=torch.float64),
                                                                        torch.zeros(B, H, D, dtype=torch.float64)]
    inputs += sums
    mask = _mask(g, B, N)

    def run(form, x):
        fn = ttt_linear_chunked if form == "parallel" else ttt_linear_reference
        state = TTTState(x[7], x[8], x[9], x[10], count)
        y, s = fn(*x[:5], state, mask, ln=(x[5], x[6]), output_final_state=True)
        return [y, s.W, s.b, s.GW, s.Gb]

    return _errors(run, inputs)


def main(argv=None) -> list[tuple]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=257)
    p.add_argument("--dim", type=int, default=16)
    args = p.parse_args(argv)
    shape = (args.batch, args.heads, args.tokens, args.dim)
    rows = []
    for name, fn in (("linear attention (chunk 64)", linear_attention), ("SSD (chunk 64)", ssd),
                     ("mLSTM (chunk 64)", mlstm), ("TTT-Linear (dual, b = 16)", ttt),
                     ("TTT-Linear, state mid-mini-batch", lambda *a: ttt(*a, mid_batch=True))):
        e = fn(*shape, torch.Generator().manual_seed(0))
        rows.append((name, e["output"], e["state"], e["gradients"]))
    print(f"float64, B {args.batch}, H {args.heads}, N {args.tokens}, width {args.dim}, holes in the mask, initial state; "
          "max |parallel - recurrence| / max |recurrence|, worst tensor:")
    print("| member | output | final state | input gradients |")
    print("| --- | --- | --- | --- |")
    for name, *errs in rows:
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    return rows


if __name__ == "__main__":
    main()
