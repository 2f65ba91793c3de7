"""The attention prefix scan: every implementation computes the same function.

The fast chunked scan (with its hand-written backward) is compared with the sequential
reference, the O(N^2) oracle and the Hillis-Steele scan, on outputs and on every input
gradient, over a grid of shapes, score scales, masks and chunk sizes.
"""
from __future__ import annotations

import math

import pytest
import torch

from aaren_bench.ops import (
    ScanState,
    init_state,
    scan,
    scan_hillis_steele,
    scan_oracle,
    scan_reference,
    scan_step,
)

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}
IMPLS = {
    "reference": scan_reference,
    "oracle": scan_oracle,
    "hillis-steele": scan_hillis_steele,
}


def make_inputs(B, H, N, D, scale, dtype, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, H, N, generator=g, dtype=torch.float64) * scale).to(dtype)
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(B, N, generator=g) > 0.3
        mask[0, : min(N, 3)] = False  # a row that starts with padding
        if B > 1:
            mask[-1] = False  # a row with no valid token at all
    return s, v, mask


def outputs_and_grads(fn, s, v, mask, seed=1, **kw):
    """fn's output and the gradients of a random linear loss w.r.t. s and v."""
    s = s.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_()
    o = fn(s, v, mask, **kw)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(o.dtype)
    ds, dv = torch.autograd.grad((o * w).sum(), (s, v), allow_unused=True, materialize_grads=True)
    return o.detach(), ds, dv


# --------------------------------------------------------------------------------------
# fast vs reference vs oracle vs Hillis-Steele: outputs and every input gradient
# --------------------------------------------------------------------------------------

GRID = [
    # (B, H, N, D)
    (1, 1, 1, 1),
    (2, 1, 2, 3),
    (2, 3, 7, 4),
    (1, 2, 33, 5),
    (3, 2, 64, 8),
    (2, 2, 129, 6),
    (1, 1, 300, 3),
]


def grid_id(shape):
    B, H, N, D = shape
    return f"B{B}-H{H}-N{N}-D{D}"


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 100.0], ids=lambda x: f"scale{x:g}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", GRID, ids=grid_id)
@pytest.mark.parametrize("other", ["reference", "oracle", "hillis-steele"])
def test_fast_scan_matches(other, shape, dtype, scale, masked):
    B, H, N, D = shape
    s, v, mask = make_inputs(B, H, N, D, scale, dtype, masked)
    o1, ds1, dv1 = outputs_and_grads(scan, s, v, mask, chunk=16)
    o2, ds2, dv2 = outputs_and_grads(IMPLS[other], s, v, mask)
    torch.testing.assert_close(o1, o2, **TOL[dtype])
    torch.testing.assert_close(dv1, dv2, **TOL[dtype])
    # d/ds scales with the score scale (one ulp of a score is larger when |s| is)
    tol = dict(TOL[dtype])
    tol["atol"] *= max(1.0, scale)
    torch.testing.assert_close(ds1, ds2, **tol)


@pytest.mark.parametrize("chunk", [1, 2, 3, 16, 64, 500, 4096], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("N", [1, 5, 64, 65, 300], ids=lambda n: f"N{n}")
def test_chunk_size_does_not_change_the_result(N, chunk):
    """Any block length, including N not a multiple of it and blocks longer than N."""
    s, v, mask = make_inputs(2, 2, N, 3, 5.0, torch.float64, masked=True)
    o1, ds1, dv1 = outputs_and_grads(scan, s, v, mask, chunk=chunk)
    o2, ds2, dv2 = outputs_and_grads(scan_reference, s, v, mask)
    for a, b in [(o1, o2), (ds1, ds2), (dv1, dv2)]:
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_mask_per_head():
    """A (B, H, N) mask masks each head separately."""
    s, v, _ = make_inputs(2, 3, 40, 4, 2.0, torch.float64, masked=False)
    mask = torch.rand(2, 3, 40, generator=torch.Generator().manual_seed(3)) > 0.5
    for fn in IMPLS.values():
        torch.testing.assert_close(scan(s, v, mask, chunk=8), fn(s, v, mask), **TOL[torch.float64])


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("N", [1, 6, 19], ids=lambda n: f"N{n}")
def test_gradcheck_float64(N, masked):
    """Finite differences: three levels of blocks at N = 19 with chunk 2."""
    s, v, mask = make_inputs(2, 1, N, 2, 2.0, torch.float64, masked)
    s.requires_grad_()
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda s, v: scan(s, v, mask, chunk=2), (s, v), fast_mode=True)


def test_gradcheck_float64_with_state():
    """The state (m, c, a) returned with the output is differentiable too."""
    s, v, mask = make_inputs(2, 1, 11, 2, 2.0, torch.float64, masked=True)
    mask[-1, -1] = True  # the last row has one valid token
    s.requires_grad_()
    v.requires_grad_()

    def f(s, v):
        o, st = scan(s, v, mask, chunk=4, return_state=True)
        return o, st.c, st.a

    assert torch.autograd.gradcheck(f, (s, v), fast_mode=True)


# --------------------------------------------------------------------------------------
# numerical stability
# --------------------------------------------------------------------------------------

ALL = {"fast": scan, **IMPLS}


@pytest.mark.parametrize("case", ["huge-scale", "all-very-negative", "all-very-positive", "one-spike"])
@pytest.mark.parametrize("impl", list(ALL))
def test_no_nan_or_inf_in_float32(impl, case):
    B, H, N, D = 2, 2, 150, 4
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, H, N, generator=g)
    if case == "huge-scale":
        s = s * 1e4
    elif case == "all-very-negative":
        s = s - 1e4
    elif case == "all-very-positive":
        s = s + 1e4
    else:
        s = torch.full((B, H, N), -1e4)
        s[:, :, N // 2] = 1e4
    v = torch.randn(B, H, N, D, generator=g)
    s.requires_grad_()
    v.requires_grad_()
    o = ALL[impl](s, v)
    assert torch.isfinite(o).all()
    ds, dv = torch.autograd.grad(o.square().sum(), (s, v))
    assert torch.isfinite(ds).all() and torch.isfinite(dv).all()
    # every output is a convex combination of the values seen so far
    running_max = torch.cummax(v.detach(), dim=2).values
    assert (o.detach() <= running_max + 1e-5).all()
    # and the float64 reference agrees
    ref = scan_reference(s.detach().double(), v.detach().double()).float()
    torch.testing.assert_close(o.detach(), ref, atol=1e-5, rtol=1e-5)


def test_huge_scores_gradients_match_float64():
    s, v, _ = make_inputs(2, 2, 300, 4, 1e4, torch.float32, masked=False)
    o32, ds32, dv32 = outputs_and_grads(scan, s, v, None, chunk=16)
    o64, ds64, dv64 = outputs_and_grads(scan_reference, s.double(), v.double(), None)
    torch.testing.assert_close(o32, o64.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dv32, dv64.float(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ds32).all()


def test_no_valid_token_gives_zero_output_and_zero_gradients():
    s, v, _ = make_inputs(2, 1, 9, 3, 1.0, torch.float32, masked=False)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 4:] = True
    o, ds, dv = outputs_and_grads(scan, s, v, mask, chunk=2)
    assert (o[0] == 0).all() and (o[1, :, :4] == 0).all()
    assert (ds[0] == 0).all() and (dv[0] == 0).all() and (dv[1, :, :4] == 0).all()
    _, st = scan(s, v, mask, return_state=True)
    assert torch.isneginf(st.m[0]).all() and (st.c[0] == 0).all() and (st.a[0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("impl", list(ALL))
def test_half_precision_accumulates_in_float32(impl, dtype):
    """Half inputs give half outputs, as accurate as float32 math on the same inputs."""
    B, H, N, D = 2, 2, 300, 8
    s, v, mask = make_inputs(B, H, N, D, 30.0, dtype, masked=True)
    o = ALL[impl](s, v, mask)
    assert o.dtype == dtype
    exact = scan_reference(s.double(), v.double(), mask)
    # only the final rounding to half precision: half an ulp of a value of magnitude <= 4
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(o.double(), exact, atol=4 * ulp, rtol=ulp)


def test_half_precision_gradients():
    s, v, mask = make_inputs(2, 2, 100, 8, 10.0, torch.bfloat16, masked=True)
    o, ds, dv = outputs_and_grads(scan, s, v, mask)
    assert ds.dtype == torch.bfloat16 and dv.dtype == torch.bfloat16
    _, ds64, dv64 = outputs_and_grads(scan_reference, s.double(), v.double(), mask)
    torch.testing.assert_close(dv.double(), dv64, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ds.double(), ds64, atol=2e-1, rtol=2e-2)


# --------------------------------------------------------------------------------------
# state and streaming
# --------------------------------------------------------------------------------------


def assert_same_state(a: ScanState, b: ScanState, **tol):
    assert torch.equal(torch.isneginf(a.m), torch.isneginf(b.m))
    seen = ~torch.isneginf(a.m)
    torch.testing.assert_close(a.m[seen], b.m[seen], **tol)
    torch.testing.assert_close(a.c, b.c, **tol)
    torch.testing.assert_close(a.a, b.a, **tol)


@pytest.mark.parametrize("chunk", [2, 7, 64], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("N", [1, 13, 100], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_return_state_matches_reference(masked, N, chunk):
    s, v, mask = make_inputs(3, 2, N, 4, 20.0, torch.float64, masked)
    o1, st1 = scan(s, v, mask, chunk=chunk, return_state=True)
    o2, st2 = scan_reference(s, v, mask, return_state=True)
    torch.testing.assert_close(o1, o2, **TOL[torch.float64])
    assert_same_state(st1, st2, **TOL[torch.float64])
    # the state is in the true running max: c >= 1 wherever a token was seen
    assert (st1.c[~torch.isneginf(st1.m)] >= 1 - 1e-12).all()


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_step_chaining_equals_scan(masked):
    """Stream the first part, continue from the state: same outputs as one scan."""
    B, H, N, D = 3, 2, 40, 4
    s, v, mask = make_inputs(B, H, N, D, 5.0, torch.float64, masked)
    full = scan(s, v, mask, chunk=8)
    split = 25
    head = None if mask is None else mask[:, :split]
    _, state = scan(s[:, :, :split], v[:, :, :split], head, chunk=8, return_state=True)
    outs = []
    for k in range(split, N):
        o_k, state = scan_step(s[:, :, k], v[:, :, k], state, None if mask is None else mask[:, k])
        outs.append(o_k)
    torch.testing.assert_close(torch.stack(outs, dim=2), full[:, :, split:], **TOL[torch.float64])
    _, st_full = scan(s, v, mask, return_state=True)
    assert_same_state(state, st_full, **TOL[torch.float64])


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4], ids=lambda x: f"scale{x:g}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("split", [0, 1, 17, 39], ids=lambda k: f"split{k}")
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
def test_initial_state_continues_the_scan(masked, split, dtype, scale):
    """scan(head, return_state) then scan(tail, initial_state): the outputs, final state and
    every input gradient of one scan over all tokens, at any score scale."""
    B, H, N, D = 3, 2, 40, 4
    s, v, mask = make_inputs(B, H, N, D, scale, dtype, masked)
    cut = lambda m, a, b: None if m is None else m[:, a:b]  # noqa: E731
    w = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)

    def full(s, v):
        return scan(s, v, mask, chunk=8, return_state=True)

    def parts(s, v):
        o1, st = scan(s[:, :, :split], v[:, :, :split], cut(mask, 0, split), chunk=8, return_state=True)
        tail = cut(mask, split, N)
        o2, st = scan(s[:, :, split:], v[:, :, split:], tail, chunk=8, return_state=True, initial_state=st)
        return torch.cat([o1, o2], 2), st

    results = []
    for fn in (full, parts):
        s_, v_ = s.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
        o, st = fn(s_, v_)
        loss = (o * w).sum() + st.a.sum() + st.c.sum()
        results.append((o, st, *torch.autograd.grad(loss, (s_, v_))))
    (o1, st1, ds1, dv1), (o2, st2, ds2, dv2) = results
    tol = TOL[dtype]
    torch.testing.assert_close(o2, o1, **tol)
    assert_same_state(st2, st1, **tol)
    torch.testing.assert_close(dv2, dv1, **tol)
    torch.testing.assert_close(ds2, ds1, **{**tol, "atol": tol["atol"] * max(1.0, scale)})


def test_reference_from_an_initial_state_and_gradcheck():
    """scan_reference from a state agrees; finite differences reach the state itself."""
    s, v, mask = make_inputs(2, 1, 9, 2, 2.0, torch.float64, masked=True)
    f64 = dict(dtype=torch.float64)
    st = ScanState(torch.tensor([[0.5], [-1.0]], **f64), torch.tensor([[1.5], [2.0]], **f64), torch.randn(2, 1, 2, **f64))
    o, st_out = scan(s, v, mask, chunk=2, return_state=True, initial_state=st)
    o_ref, st_ref = scan_reference(s, v, mask, return_state=True, initial_state=st)
    torch.testing.assert_close(o, o_ref, **TOL[torch.float64])
    assert_same_state(st_out, st_ref, **TOL[torch.float64])
    s.requires_grad_()
    v.requires_grad_()

    def f(s, v, m0, c0, a0):
        return scan(s, v, mask, chunk=2, initial_state=ScanState(m0, c0, a0))

    args = (s, v, *(t.clone().requires_grad_() for t in st))
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_state_reports_its_size():
    st = init_state(2, 3, 4)
    assert st.nbytes() == (2 * 3 + 2 * 3 + 2 * 3 * 4) * 4


def test_init_state_is_the_empty_prefix():
    st = init_state(2, 3, 4, dtype=torch.bfloat16)
    assert st.m.dtype == torch.float32 and torch.isneginf(st.m).all()
    assert (st.c == 0).all() and (st.a == 0).all() and st.a.shape == (2, 3, 4)


# --------------------------------------------------------------------------------------
# bad input and devices
# --------------------------------------------------------------------------------------


def test_bad_shapes_have_clear_errors():
    s, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5, 4)
    with pytest.raises(ValueError, match="scores"):
        scan(s[..., :4], v)
    with pytest.raises(ValueError, match="mask"):
        scan(s, v, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk"):
        scan(s, v, chunk=0)


@pytest.mark.parametrize("impl", list(ALL))
def test_empty_sequence(impl):
    """N = 0: an empty output that backward accepts (gradients of the right, empty shape)."""
    s = torch.randn(2, 1, 0, requires_grad=True)
    v = torch.randn(2, 1, 0, 3, requires_grad=True)
    o = ALL[impl](s, v, torch.ones(2, 0, dtype=torch.bool))
    assert o.shape == (2, 1, 0, 3) and o.dtype == v.dtype
    o.sum().backward()
    assert s.grad.shape == s.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_empty_sequence_keeps_the_state(impl):
    fn = scan if impl == "fast" else scan_reference
    o, st = fn(torch.randn(2, 1, 0), torch.randn(2, 1, 0, 3), return_state=True)
    assert o.shape == (2, 1, 0, 3) and torch.isneginf(st.m).all()
    given = ScanState(torch.randn(2, 1), torch.rand(2, 1) + 1, torch.randn(2, 1, 3))
    _, st = fn(torch.randn(2, 1, 0), torch.randn(2, 1, 0, 3), return_state=True, initial_state=given)
    assert all(torch.equal(a, b) for a, b in zip(st, given))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    s, v, mask = make_inputs(2, 4, 1000, 16, 10.0, torch.float32, masked=True)
    o_cpu, ds_cpu, dv_cpu = outputs_and_grads(scan, s, v, mask)
    o, ds, dv = outputs_and_grads(scan, s.cuda(), v.cuda(), mask.cuda())
    torch.testing.assert_close(o.cpu(), o_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dv.cpu(), dv_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds.cpu(), ds_cpu, atol=1e-4, rtol=1e-4)


def test_scan_work_is_linear_in_length():
    """Doubling N roughly doubles the fast scan's floating-point work (not quadruples it)."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(N):
        s, v = torch.randn(1, 1, N), torch.randn(1, 1, N, 8)
        with FlopCounterMode(display=False) as fc:
            scan(s, v, chunk=32)
        return fc.get_total_flops()

    ratio = flops(2048) / flops(1024)
    assert 1.8 < ratio < 2.3, ratio
    assert math.isfinite(ratio)
