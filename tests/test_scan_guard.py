"""The fast scan's non-finite guard on the normal path: what it adds to the bare chunked scan
(operations, not time), one path on every device, and the layouts a layer hands it.
Its semantics on bad input are tested in test_ops_nonfinite.py."""
from __future__ import annotations

import collections

import pytest
import torch

from aaren_bench.bench import guard as guard_bench
from aaren_bench.bench.guard import bare, count_ops, format_rows, guarded, make_inputs, run_guard
from aaren_bench.bench.syncs import OpCounter
from aaren_bench.ops import scan

# measured: 31 more aten operations than the bare scan, forward+backward, at every length
# (eleven views and two allocations, which launch nothing: 18 kernels and a scalar); earlier
# designs added 57, then 35
MAX_EXTRA_OPS = 33


def _counts(fn, device, B=2, H=2, N=64, D=4) -> collections.Counter:
    s, v, w, mask = make_inputs(B, H, N, D, device)
    with OpCounter() as ops:
        torch.autograd.grad((fn(s, v, mask) * w).sum(), (s, v))
    return ops.counts


@pytest.mark.parametrize("N", [64, 2048])
def test_the_guard_adds_a_bounded_number_of_operations(N):
    extra = count_ops(guarded, 2, 2, N, 4) - count_ops(bare, 2, 2, N, 4)
    assert 0 < extra <= MAX_EXTRA_OPS, f"the guard adds {extra} aten ops to the bare scan's forward+backward"


def test_the_guards_operations_do_not_grow_with_length():
    extra = [count_ops(guarded, 2, 2, N, 4) - count_ops(bare, 2, 2, N, 4) for N in (64, 4096)]
    assert extra[0] == extra[1]


def test_one_path_on_every_device():
    """The same aten operations on the CPU and on meta (not the CPU: a device test would send
    it the way a GPU goes), so the path timed on the CPU is the one CUDA runs."""
    assert _counts(guarded, "cpu") == _counts(guarded, "meta")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_layers_transposed_views_give_the_same_bits(dtype):
    """v and the upstream gradient as (B, N, H, D) memory seen as (B, H, N, D), bad tokens
    included: outputs and gradients equal those of contiguous copies, bit for bit."""
    g = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 3, 40, 5
    s = torch.randn(B, H, N, generator=g, dtype=dtype)
    v = torch.randn(B, N, H, D, generator=g, dtype=dtype)
    w = torch.randn(B, N, H, D, generator=g, dtype=dtype)
    s[0, 1, 7], v[1, 20, 2, 3] = float("nan"), float("inf")
    mask = torch.rand(B, N, generator=g) > 0.2
    results = []
    for view in (True, False):
        s_ = s.clone().requires_grad_()
        v_ = (v.transpose(1, 2) if view else v.transpose(1, 2).contiguous()).detach().requires_grad_()
        w_ = w.transpose(1, 2) if view else w.transpose(1, 2).contiguous()
        o = scan(s_, v_, mask, chunk=4)
        results.append((o, *torch.autograd.grad((o * w_).nan_to_num(0.0).sum(), (s_, v_))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0.0, atol=0.0, equal_nan=True)


@pytest.mark.parametrize("size, charged", [(2.0**-149, True), (1.0, True), (0.0, False), (-0.0, False)])
def test_a_tiny_upstream_gradient_at_a_spoiled_output(size, charged):
    """The charge's row test is exact: any nonzero gradient entry at a spoiled output, down to
    the smallest float32 (2^-149, a subnormal), charges the bad token (NaN), entries that
    cancel in a plain sum included; a zero of either sign charges nothing."""
    B, H, N, D = 1, 1, 10, 4
    s = torch.zeros(B, H, N).requires_grad_()
    v_raw = torch.ones(B, H, N, D)
    v_raw[0, 0, 6, 1] = float("nan")
    v = v_raw.requires_grad_()
    up = torch.zeros(B, H, N, D)
    up[0, 0, 8] = torch.tensor([size, -size, 0.0, 0.0])  # cancels in a plain sum
    ds, dv = torch.autograd.grad(scan(s, v, chunk=4), (s, v), up)
    assert bool(torch.isnan(ds[0, 0, 6])) == charged and bool(torch.isnan(dv[0, 0, 6]).all()) == charged
    assert torch.isfinite(ds[0, 0, :6]).all() and torch.isfinite(dv[0, 0, :6]).all()


def test_the_benchmark_rows():
    rows = run_guard(torch.device("cpu"), sizes=((2, 2, 16, 4),), rounds=1)
    assert [(r["layout"], r["pass_"]) for r in rows] == [
        ("contiguous", "fwd"), ("contiguous", "fwd+bwd"), ("layer", "fwd"), ("layer", "fwd+bwd")]
    assert all(r["ratio"] > 0 and r["paired"] > 0 and r["ops_guard"] == r["ops_guard_meta"] > r["ops_bare"] for r in rows)
    assert all(r["faults_bare"] >= 0 and r["faults_guard"] >= 0 for r in rows)
    assert "guard/bare" in format_rows(rows) and "faults guard" in format_rows(rows)


def test_the_benchmark_command_names_its_heap(monkeypatch, capsys):
    monkeypatch.setattr(guard_bench, "SIZES", ((2, 2, 16, 4),))
    for k in guard_bench.KEPT_HEAP:
        monkeypatch.delenv(k, raising=False)
    guard_bench.main(["--heap", "default", "--rounds", "1"])
    out = capsys.readouterr().out
    assert out.startswith("heap: glibc default") and "B2 H2 N16 Dh4 | layer" in out
    for k, v in guard_bench.KEPT_HEAP.items():
        monkeypatch.setenv(k, v)
    assert guard_bench.heap_kept()
