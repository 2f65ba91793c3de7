"""The prefix scan under non-finite input, for every implementation.

A token that takes no part (masked, or scored -inf) is never read: NaN or inf there
changes no output and no gradient, and its own gradients are exactly 0. A bad token (a
valid one with a NaN or +inf score, or a non-finite value) turns the outputs from its
position on into NaN and changes nothing before it: outputs before it are the clean
input's, bit for bit, and so are the gradients of a loss that reads only those outputs.
A loss that reads a NaN output gets NaN on the bad token's score and value, and the clean
prefix's gradients everywhere else.
"""
from __future__ import annotations

from functools import partial

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

NAN, INF = float("nan"), float("inf")
EXACT = dict(rtol=0.0, atol=0.0, equal_nan=True)


def step_chain(s, v, mask=None):
    """The streaming form, one scan_step per token from the empty state."""
    B, H, N, D = v.shape
    state = init_state(B, H, D, dtype=v.dtype)
    outs = []
    for k in range(N):
        mask_t = None if mask is None else mask[..., k]
        o_k, state = scan_step(s[:, :, k], v[:, :, k], state, mask_t)
        outs.append(o_k)
    return torch.stack(outs, dim=2)


IMPLS = {
    "reference": scan_reference,
    "oracle": scan_oracle,
    "hillis-steele": scan_hillis_steele,
    "step": step_chain,
    **{f"fast-chunk{c}": partial(scan, chunk=c) for c in (1, 3, 8, 64)},
}
KINDS = ["s=nan", "s=+inf", "v=nan", "v=+inf", "v=-inf"]
DTYPES = {"f64": torch.float64, "f32": torch.float32}


def poison(s, v, where, kind, g):
    """Write the kind of bad number at the (B, H, N) positions ``where`` (values: one random feature)."""
    s, v = s.clone(), v.clone()
    target, _, text = kind.partition("=")
    x = {"nan": NAN, "+inf": INF, "-inf": -INF}[text]
    if target == "s":
        s[where] = x
    else:
        idx = where.nonzero(as_tuple=True)
        feat = torch.randint(v.shape[-1], (len(idx[0]),), generator=g)
        v[(*idx, feat)] = x
    return s, v


def make_case(kind, dtype, seed, B=3, H=2, N=50, D=4):
    """Clean inputs, the same with bad tokens and garbage in the padding, the mask, and
    first_bad (B, H): the first bad position of each row (N where there is none)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, H, N, generator=g, dtype=torch.float64) * 3).to(dtype)
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64).to(dtype)
    mask = torch.rand(B, N, generator=g) > 0.25
    mask[0, :3] = False  # a row that starts with padding
    # padding: every kind of garbage, in scores and values
    pad = ~mask[:, None, :].expand(B, H, N)
    garbage = torch.tensor([NAN, INF, -INF], dtype=dtype)[torch.randint(3, (B, H, N), generator=g)]
    s_dirty = torch.where(pad, garbage, s)
    v_dirty = torch.where(pad[..., None], garbage[..., None].expand(B, H, N, D), v)
    # bad tokens: one or two valid positions in every row but the last one
    bad = torch.zeros(B, H, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            if (b, h) == (B - 1, H - 1):
                continue
            valid = mask[b].nonzero().flatten()
            pick = valid[torch.randperm(len(valid), generator=g)[: 1 + (b + h) % 2]]
            bad[b, h, pick] = True
    s_dirty, v_dirty = poison(s_dirty, v_dirty, bad, kind, g)
    pos = torch.arange(N).expand(B, H, N)
    first_bad = torch.where(bad, pos, N).amin(-1)
    return (s, v), (s_dirty, v_dirty), mask, bad, first_bad


def run(fn, s, v, mask, w):
    """fn's output and the gradients of sum(o * w) w.r.t. s and v."""
    s = s.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_()
    o = fn(s, v, mask)
    ds, dv = torch.autograd.grad(o, (s, v), grad_outputs=w.to(o.dtype))
    return o.detach(), ds, dv


def upstream(shape, dtype, seed=7):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("seed", [0, 1], ids=lambda x: f"seed{x}")
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_a_bad_token_spoils_only_its_tail(impl, kind, dtype, seed):
    clean, dirty, mask, _, first_bad = make_case(kind, dtype, seed)
    N = clean[0].shape[-1]
    before = torch.arange(N) < first_bad[..., None]  # (B, H, N)
    w = upstream(clean[1].shape, dtype) * before[..., None]  # a loss that reads only outputs before p
    o_c, ds_c, dv_c = run(IMPLS[impl], *clean, mask, w)
    o_d, ds_d, dv_d = run(IMPLS[impl], *dirty, mask, w)
    torch.testing.assert_close(o_d[before], o_c[before], **EXACT)
    assert torch.isnan(o_d[~before]).all()
    # every gradient, before p, at p and after it, at valid and at padded tokens: the clean one
    torch.testing.assert_close(ds_d, ds_c, **EXACT)
    torch.testing.assert_close(dv_d, dv_c, **EXACT)
    pad = ~mask[:, None, :].expand_as(ds_d)
    assert torch.isfinite(ds_d).all() and torch.isfinite(dv_d).all()
    assert (ds_d[pad] == 0).all() and (dv_d[pad] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_a_used_spoiled_output_charges_the_bad_token(impl, kind):
    """A loss that reads NaN outputs: NaN gradients at the (first) bad token of each such row,
    the clean prefix's gradients at every token that is not bad, 0 at padding."""
    dtype = torch.float64
    clean, dirty, mask, bad, first_bad = make_case(kind, dtype, seed=3)
    N = clean[0].shape[-1]
    before = torch.arange(N) < first_bad[..., None]
    w = upstream(clean[1].shape, dtype)
    _, ds_c, dv_c = run(IMPLS[impl], *clean, mask, w * before[..., None])
    _, ds_d, dv_d = run(IMPLS[impl], *dirty, mask, w)
    rows = first_bad < N  # (B, H)
    first = torch.zeros_like(bad)
    first[rows.nonzero(as_tuple=True) + (first_bad[rows],)] = True
    assert torch.isnan(ds_d[first]).all() and torch.isnan(dv_d[first]).all()
    torch.testing.assert_close(ds_d[~bad], ds_c[~bad], **EXACT)
    torch.testing.assert_close(dv_d[~bad], dv_c[~bad], **EXACT)
    pad = ~mask[:, None, :].expand_as(ds_d)
    assert (ds_d[pad] == 0).all() and (dv_d[pad] == 0).all()


@pytest.mark.parametrize("garbage", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_padding_garbage_changes_nothing(impl, dtype, garbage):
    """NaN / inf in the scores and values of padded tokens: every output (padded positions
    included) and every gradient equal the clean run's; padded tokens' gradients are 0."""
    (s, v), _, mask, _, _ = make_case("s=nan", dtype, seed=5)
    pad = ~mask[:, None, :].expand_as(s)
    s_d = s.masked_fill(pad, garbage)
    v_d = v.masked_fill(pad[..., None], garbage)
    w = upstream(v.shape, dtype)
    o_c, ds_c, dv_c = run(IMPLS[impl], s, v, mask, w)
    o_d, ds_d, dv_d = run(IMPLS[impl], s_d, v_d, mask, w)
    for a, b in [(o_d, o_c), (ds_d, ds_c), (dv_d, dv_c)]:
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **EXACT)
    assert (ds_d[pad] == 0).all() and (dv_d[pad] == 0).all()


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_minus_inf_score_is_an_absent_token(impl, dtype):
    """A valid token scored -inf (its value NaN) is the same token masked out."""
    (s, v), _, _, _, _ = make_case("s=nan", dtype, seed=6)
    absent = torch.rand(s.shape, generator=torch.Generator().manual_seed(8)) < 0.2
    s_d = s.masked_fill(absent, -INF)
    v_d = v.masked_fill(absent[..., None], NAN)
    w = upstream(v.shape, dtype)
    o_c, ds_c, dv_c = run(IMPLS[impl], s, v, ~absent, w)  # a per-head (B, H, N) mask
    o_d, ds_d, dv_d = run(IMPLS[impl], s_d, v_d, None, w)
    for a, b in [(o_d, o_c), (ds_d, ds_c), (dv_d, dv_c)]:
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **EXACT)
    assert (ds_d[absent] == 0).all() and (dv_d[absent] == 0).all()


@pytest.mark.parametrize("kind", ["s=nan", "v=+inf"])
@pytest.mark.parametrize("chunk", [2, 4, 5], ids=lambda c: f"chunk{c}")
def test_fast_scan_bad_token_at_every_position(chunk, kind):
    """Every position of a short sequence, so that the bad token falls at every place in a
    block and at every block boundary, on two and three levels of block summaries."""
    B, H, N, D = 1, 2, 17, 3
    g = torch.Generator().manual_seed(9)
    s = torch.randn(B, H, N, generator=g, dtype=torch.float64) * 4
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    fn = partial(scan, chunk=chunk)
    for p in range(N):
        where = torch.zeros(B, H, N, dtype=torch.bool)
        where[:, 0, p] = True  # head 1 stays clean
        s_d, v_d = poison(s, v, where, kind, g)
        w = upstream(v.shape, torch.float64, seed=p)
        w[:, 0, p:] = 0
        o_c, ds_c, dv_c = run(fn, s, v, None, w)
        o_d, ds_d, dv_d = run(fn, s_d, v_d, None, w)
        torch.testing.assert_close(o_d[:, 0, :p], o_c[:, 0, :p], **EXACT)
        torch.testing.assert_close(o_d[:, 1], o_c[:, 1], **EXACT)
        assert torch.isnan(o_d[:, 0, p:]).all()
        torch.testing.assert_close(ds_d, ds_c, **EXACT)
        torch.testing.assert_close(dv_d, dv_c, **EXACT)


@pytest.mark.parametrize("kind", ["s=+inf", "v=nan"])
@pytest.mark.parametrize("impl", [k for k in IMPLS if k != "step"])
def test_the_guard_never_reads_the_device(impl, kind):
    """One path on every device: bad tokens are found and cleaned on the device, by selection,
    with no host read (each would stall a GPU and break a compiled graph), clean input or not.
    (scan_step reads its output's sum once per token, as a streaming loop reads each output.)"""
    from aaren_bench.bench.syncs import SyncCounter

    clean, dirty, mask, _, _ = make_case(kind, torch.float32, seed=11, N=30)
    w = upstream(clean[1].shape, torch.float32)
    for x in (clean, dirty):
        with SyncCounter() as syncs:
            run(IMPLS[impl], *x, mask, w)
        assert syncs.total == 0, syncs.report()


# --------------------------------------------------------------------------------------
# the state: spoiled after a bad token, and everything continued from it too
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_the_state_after_a_bad_token_is_nan_and_stays_nan(impl):
    fn = partial(scan, chunk=4) if impl == "fast" else scan_reference
    clean, dirty, mask, _, first_bad = make_case("v=nan", torch.float64, seed=4, N=20)
    spoiled = first_bad < 20  # (B, H): rows with a bad token
    _, st_c = fn(*clean, mask, return_state=True)
    _, st_d = fn(*dirty, mask, return_state=True)
    for a, b in zip(st_d, st_c):
        assert torch.isnan(a[spoiled]).all()
        torch.testing.assert_close(a[~spoiled], b[~spoiled], **EXACT)
    # continuing: by steps and by a scan from the state; clean rows carry on unchanged
    s2, v2 = torch.randn(3, 2, 6, dtype=torch.float64), torch.randn(3, 2, 6, 4, dtype=torch.float64)
    o_next, st_next = scan_step(s2[:, :, 0], v2[:, :, 0], st_d)
    assert torch.isnan(o_next[spoiled]).all() and torch.isfinite(o_next[~spoiled]).all()
    assert all(torch.isnan(t[spoiled]).all() for t in st_next)
    o_more = scan(s2, v2, initial_state=st_d, chunk=4)
    assert torch.isnan(o_more[spoiled]).all()
    torch.testing.assert_close(o_more[~spoiled], scan(s2, v2, initial_state=st_c, chunk=4)[~spoiled], **EXACT)


def test_gradient_through_a_spoiled_state():
    """A zero gradient through a NaN state passes nothing; a nonzero one reaches the bad token."""
    B, H, N, D = 2, 1, 12, 3
    g = torch.Generator().manual_seed(10)
    s = torch.randn(B, H, N, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    v[0, 0, 7, 1] = NAN
    v.requires_grad_()
    _, st = scan(s, v, chunk=4, return_state=True)
    s2 = torch.randn(B, H, 5, dtype=torch.float64)
    v2 = torch.randn(B, H, 5, D, dtype=torch.float64)
    o2 = scan(s2, v2, initial_state=st, chunk=4)
    w = torch.ones_like(o2)
    w[0] = 0  # nothing read from the spoiled row
    ds, dv = torch.autograd.grad(o2, (s, v), w)
    assert torch.isfinite(ds).all() and torch.isfinite(dv).all() and (ds[0] == 0).all() and (dv[0] == 0).all()
    _, st = scan(s, v, chunk=4, return_state=True)
    ds, dv = torch.autograd.grad(scan(s2, v2, initial_state=st, chunk=4).sum(), (s, v))
    assert torch.isnan(ds[0, 0, 7]) and torch.isnan(dv[0, 0, 7]).all()
    assert torch.isfinite(ds[0, 0, :7]).all() and torch.isfinite(ds[1]).all() and torch.isfinite(dv[1]).all()


def test_step_masked_token_keeps_the_state_bit_for_bit():
    st = ScanState(torch.randn(2, 3), torch.rand(2, 3) + 1, torch.randn(2, 3, 4))
    s_t = torch.tensor([[NAN, INF, -INF]] * 2)
    v_t = torch.full((2, 3, 4), NAN)
    _, new = scan_step(s_t, v_t, st, torch.tensor([False, False]))
    for a, b in zip(new, st):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("chunk", [3, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_the_cuda_path_spoils_and_charges_as_the_cpu_does(kind, chunk, dtype):
    """The fast scan's guard on CUDA (its cummax and maximum carrying a NaN score forward, the
    token test, the bit ANDs of the gradient): NaN at exactly the outputs and gradients where
    the CPU has NaN, for a loss that reads only the clean prefix and for one that reads the
    spoiled outputs too, and the finite ones equal to rounding."""
    _, dirty, mask, _, first_bad = make_case(kind, dtype, seed=3)
    N = dirty[0].shape[-1]
    before = torch.arange(N) < first_bad[..., None]
    w = upstream(dirty[1].shape, dtype)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    fn = partial(scan, chunk=chunk)
    for up in (w * before[..., None], w):
        on_cpu = run(fn, *dirty, mask, up)
        on_gpu = run(fn, *(t.cuda() for t in dirty), mask.cuda(), up.cuda())
        for g, c in zip(on_gpu, on_cpu):
            g = g.cpu()
            assert torch.equal(torch.isnan(g), torch.isnan(c))
            torch.testing.assert_close(g, c, equal_nan=True, **tol)
