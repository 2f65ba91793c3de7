"""Run-to-run determinism of every op and mixer, in fresh processes (issue 23's table).

Each child process sets its intra-op thread count, then computes every case at once and
prints one JSON line: per case, a hash of the output and of every gradient (input and
parameters), the largest error of the output against the same computation in float64,
and whether ``--repeats`` calls with fresh allocations inside the process gave the same
bits. The parent starts ``--procs`` children per thread count and prints, per case and
thread count, the number of distinct hashes, the largest float64 error over all children,
and how many children saw a difference within themselves.

Cases: the fast scan (``ops.scan``) on the issue's tensors, with a mask, and with a NaN
score; every registered mixer (aaren, transformer, linear_attn, mamba2; d_model 64, 4 heads,
N 200, batch 2), without and with a padded row. Forward and backward (a fixed weighted sum of
the finite outputs as the loss).

    python benchmarks/determinism.py --procs 40              # the table in docs/benchmarks/determinism.md
    python benchmarks/determinism.py --child --threads 2     # one child's JSON line
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _hash(t) -> str:
    return hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:12]


def _scan_cases(torch):
    """(name, fn(dtype) -> (output, tensors to differentiate)) for the scan op."""
    from aaren_bench.ops import scan

    def make(kind):
        def run(dtype):
            g = torch.Generator().manual_seed(0)
            s = torch.randn(2, 1, 100, generator=g, dtype=torch.float32).to(dtype)
            v = torch.randn(2, 1, 100, 8, generator=g, dtype=torch.float32).to(dtype)
            mask = None
            if kind == "padded":
                mask = torch.ones(2, 100, dtype=torch.bool)
                mask[1, 70:] = False
            if kind == "nonfinite":
                s[1, 0, 60] = float("nan")
            s.requires_grad_(True)
            v.requires_grad_(True)
            return scan(s, v, mask), [s, v]
        return run

    return [(f"scan/{k}", make(k)) for k in ("plain", "padded", "nonfinite")]


def _mixer_cases(torch):
    from aaren_bench.nn import MIXERS

    def make(name, padded):
        def run(dtype):
            torch.manual_seed(0)
            mixer = MIXERS[name](64, 4).to(dtype)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(2, 200, 64, generator=g).to(dtype).requires_grad_(True)
            mask = None
            if padded:
                mask = torch.ones(2, 200, dtype=torch.bool)
                mask[1, 150:] = False
            y, _ = mixer(x, mask=mask)
            return y, [x, *mixer.parameters()]
        return run

    return [(f"{n}/{p}", make(n, p == "padded")) for n in sorted(MIXERS) for p in ("plain", "padded")]


def _once(torch, fn):
    """Hashes of the output and of every gradient, and the output itself."""
    y, leaves = fn(torch.float32)
    finite = torch.isfinite(y)
    w = torch.linspace(-1.0, 1.0, y.shape[-1], dtype=y.dtype)
    loss = (torch.where(finite, y, 0.0) * w).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    hashes = [_hash(y)] + [_hash(g) if g is not None else "-" for g in grads]
    return hashes, y.detach(), finite


def child(threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, fn in _scan_cases(torch) + _mixer_cases(torch):
        runs = [_once(torch, fn) for _ in range(repeats)]
        hashes, y, finite = runs[0]
        ref = fn(torch.float64)[0].detach()
        err = (y.double() - ref).abs()[finite].max().item()
        out[name] = {"out": hashes[0], "grads": hashlib.sha1("".join(hashes[1:]).encode()).hexdigest()[:12],
                     "err": err, "stable": all(r[0] == hashes for r in runs)}
    return out


def run_children(procs: int, threads: int, repeats: int) -> list[dict]:
    """``procs`` fresh processes, one after another (a 2-core machine: no overlap)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for _ in range(procs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(threads),
               "--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"child failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def summarise(results: list[dict]) -> dict:
    """Per case: distinct output / gradient hashes, largest error, children unstable within."""
    table = {}
    for name in results[0]:
        rows = [r[name] for r in results]
        table[name] = {"outputs": len({r["out"] for r in rows}), "grads": len({r["grads"] for r in rows}),
                       "max_err": max(r["err"] for r in rows), "unstable": sum(not r["stable"] for r in rows)}
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help="run the cases once and print one JSON line")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="calls per case inside each process")
    p.add_argument("--procs", type=int, default=40)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.threads, args.repeats)))
        return
    tables = {t: summarise(run_children(args.procs, t, args.repeats)) for t in (2, 1)}
    print(f"| case | threads | distinct outputs | distinct gradients | largest error vs float64 | "
          f"processes unstable within |  ({args.procs} processes each)")
    print("|---|---|---|---|---|---|")
    for name in tables[2]:
        for t in (2, 1):
            r = tables[t][name]
            print(f"| {name} | {t} | {r['outputs']} | {r['grads']} | {r['max_err']:.2e} | {r['unstable']} |")


if __name__ == "__main__":
    main()
